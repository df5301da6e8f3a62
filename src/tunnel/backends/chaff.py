"""No empty ignore packets where they protect nothing.

asyncssh (2.24) sends an empty ``SSH_MSG_IGNORE`` before *every* packet it encrypts
after the key exchange (``SSHConnection.send_packet``: its comment still reads "if we're
encrypting and we have no data outstanding", but only the "encrypting" half of that
condition is left). Such chaff is the countermeasure RFC 4251 §9.3.1 gives against the
chosen-plaintext attack on CBC mode, where the IV of the next packet is the last
ciphertext block the attacker has already seen. AES-GCM (RFC 5647 §7.1: a per-packet
invocation counter), ChaCha20-Poly1305 (OpenSSH PROTOCOL.chacha20poly1305: the sequence
number as nonce) and CTR mode (RFC 4344 §4: a counter) chain no IV, so the empty packet
adds no protection there; it only doubles the encryptions, the Python work and (on
asyncio's own event loop) the ``send()`` calls per packet, and wakes the gateway twice.
OpenSSH sends no such chaff.

asyncssh has no option to turn it off and builds its connection object itself, so
:func:`drop_needless_chaff` wraps that object's ``send_packet``: it drops exactly the
empty ignores while the negotiated send cipher is one of :data:`CHAFF_FREE_CIPHERS`, and
lets them through with CBC or any other cipher.
"""

from __future__ import annotations

from typing import Any

from tunnel.sshlib import asyncssh

MSG_IGNORE = 2
"""RFC 4253 §11.2."""
EMPTY_STRING = b"\0\0\0\0"
"""An SSH ``string`` of length 0 (RFC 4251 §5): the payload of asyncssh's chaff."""
CHAFF_FREE_CIPHERS = frozenset(
    {
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
        "aes128-ctr",
        "aes192-ctr",
        "aes256-ctr",
    }
)
"""Ciphers that chain no IV from earlier ciphertext."""


def needs_chaff(send_cipher: object) -> bool:
    """Whether an empty ignore before each packet protects ``send_cipher`` (unknown: yes)."""
    return send_cipher not in CHAFF_FREE_CIPHERS


def drop_needless_chaff(conn: asyncssh.SSHClientConnection) -> bool:
    """Make ``conn`` skip its empty ignore packets while its send cipher needs none.

    Returns whether the filter is in place (not when asyncssh's connection has no
    ``send_packet`` to wrap). The cipher is read per packet from the connection's
    ``send_cipher``, so a rekey onto a CBC cipher brings the chaff back.
    """
    send_packet = getattr(conn, "send_packet", None)
    if not callable(send_packet):
        return False
    get_extra_info = conn.get_extra_info

    def send_without_chaff(pkttype: int, *args: bytes, handler: Any = None) -> None:
        if (
            pkttype == MSG_IGNORE
            and args == (EMPTY_STRING,)
            and not needs_chaff(get_extra_info("send_cipher"))
        ):
            return
        send_packet(pkttype, *args, handler=handler)

    # asyncssh_patches seals data packets itself only where this filter is in place
    send_without_chaff.drops_chaff = True  # type: ignore[attr-defined]
    setattr(conn, "send_packet", send_without_chaff)  # noqa: B010  (a method to mypy)
    return True
