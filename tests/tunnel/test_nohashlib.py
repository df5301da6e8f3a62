"""`blitzdns run` without OpenSSL's hashes (blitzdns.nohashlib), asyncssh's HMAC MACs by
cryptography (tunnel.backends.cryptohmac).

In a fresh interpreter with ``nohashlib.start()`` in force, ``hashlib`` and ``hmac`` give
the digests OpenSSL gives (this process's), libcrypto is not mapped; started too late it
changes nothing. The carried HMAC signs as asyncssh's own did for every HMAC MAC it
registers, and carries a tunnel through the real sshd with a non-AEAD cipher and an
HMAC MAC.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import subprocess
import sys

import asyncssh.mac
import pytest
from asyncssh.packet import UInt32

from tests.peers import free_port
from tunnel import Forward, Tunnel, TunnelOptions
from tunnel.backends import cryptohmac
from tunnel.backends.asyncssh_link import SSHLink

from .tunnel_testlib import Target, exchange, link_up

NAMES = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_256", "blake2b")

CHILD = f"""
NAMES = {NAMES!r}
import json, sys
from blitzdns import nohashlib
if sys.argv[1] == "late":
    import hashlib
if sys.argv[1] == "no-sha1":  # a CPython built with only some of its own hashes
    sys.modules["_sha1"] = None
in_force = nohashlib.start()
import hashlib, hmac
try:
    import _hashlib
    openssl = True
except ImportError:
    openssl = False
inputs = [bytes.fromhex(h) for h in json.loads(sys.stdin.read())]
digests = {{
    name: [hashlib.new(name, data).hexdigest() for data in inputs]
    for name in NAMES
}}
macs = [hmac.new(data[:16], data, hashlib.sha256).hexdigest() for data in inputs]
pbkdf2 = None
if hasattr(hashlib, "pbkdf2_hmac"):  # Python's own on 3.11, gone from 3.12
    pbkdf2 = hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", 100).hex()
with open("/proc/self/maps") as maps:
    libcrypto = "libcrypto" in maps.read()
print(json.dumps([in_force, openssl, libcrypto, digests, macs, pbkdf2]))
"""


def child(when: str, inputs: list[bytes]) -> list[object]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, when],
        input=json.dumps([data.hex() for data in inputs]),
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    result: list[object] = json.loads(done.stdout)
    return result


def test_run_hashes_without_openssl_the_same() -> None:
    rng = random.Random(18)
    inputs = [rng.randbytes(n) for n in (0, 1, 55, 56, 63, 64, 65, 1000, 32768, 100_003)]
    in_force, openssl, libcrypto, digests, macs, pbkdf2 = child("early", inputs)
    assert (in_force, openssl, libcrypto) == (True, False, False)
    assert digests == {n: [hashlib.new(n, d).hexdigest() for d in inputs] for n in NAMES}
    assert macs == [hmac.new(d[:16], d, hashlib.sha256).hexdigest() for d in inputs]
    if sys.version_info < (3, 12):
        assert pbkdf2 == hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", 100).hex()


def test_too_late_it_changes_nothing() -> None:
    in_force, openssl, libcrypto, *_ = child("late", [b"x"])
    assert (in_force, openssl, libcrypto) == (False, True, True)


def test_without_every_built_in_hash_openssl_stays() -> None:
    inputs = [b"", b"abc" * 1000]
    in_force, openssl, libcrypto, digests, *_ = child("no-sha1", inputs)
    assert (in_force, openssl, libcrypto) == (False, True, True)
    assert digests == {n: [hashlib.new(n, d).hexdigest() for d in inputs] for n in NAMES}


def test_the_carried_hmac_signs_as_asyncssh_did() -> None:
    assert cryptohmac.install() and cryptohmac.install()  # once, then already
    handlers = [
        alg
        for alg, (handler, _, _) in asyncssh.mac._mac_handler.items()
        if handler is asyncssh.mac._HMAC
    ]
    assert len(handlers) >= 8  # sha2-256/512, sha1, md5, -96 forms, and -etm of each
    rng = random.Random(7)
    for alg in handlers:
        key_size, hash_size, _ = asyncssh.mac.get_mac_params(alg)
        key = rng.randbytes(key_size)
        mac = asyncssh.mac.get_mac(alg, key)
        assert mac.blitzdns_hmac is not None  # type: ignore[attr-defined]
        (hash_alg,) = asyncssh.mac._mac_handler[alg][2]
        for size in (0, 1, 16, 1500, 32768 + 13):
            seq = rng.randrange(2**32)
            packet = rng.randbytes(size)
            wanted = hmac.new(key, UInt32(seq) + packet, hash_alg).digest()[:hash_size]
            assert mac.sign(seq, packet) == wanted, (alg, size)
            assert mac.sign(seq, memoryview(packet)) == wanted
            assert mac.verify(seq, packet, wanted)
            assert not mac.verify(seq + 1, packet, wanted)


class OtherSignature(asyncssh.mac.MAC):
    """An _HMAC of a changed asyncssh: its arguments in another order."""

    def __init__(self, hash_alg: object, key: bytes, hash_size: int) -> None:
        super().__init__(key, hash_size)
        self._hash_alg = hash_alg

    def sign(self, seq: int, packet: bytes) -> bytes:
        data = UInt32(seq) + packet
        return hmac.new(self._key, data, self._hash_alg).digest()[: self._hash_size]  # type: ignore[arg-type]

    def verify(self, seq: int, packet: bytes, sig: bytes) -> bool:
        return hmac.compare_digest(self.sign(seq, packet), sig)


class OtherSign(OtherSignature):
    """The same arguments as asyncssh's, but signing another way (no hmac.new)."""

    def __init__(self, key: bytes, hash_size: int, hash_alg: object) -> None:
        super().__init__(hash_alg, key, hash_size)

    def sign(self, seq: int, packet: bytes) -> bytes:
        return hmac.digest(self._key, UInt32(seq) + packet, "sha256")[: self._hash_size]


@pytest.mark.parametrize("changed", [OtherSignature, OtherSign])
def test_a_changed_hmac_class_keeps_its_own_way(
    monkeypatch: pytest.MonkeyPatch, changed: type[asyncssh.mac.MAC]
) -> None:
    own_init, own_sign = changed.__init__, changed.sign
    monkeypatch.setattr(asyncssh.mac, "_HMAC", changed)
    assert not cryptohmac.install()
    assert (changed.__init__, changed.sign) == (own_init, own_sign)
    assert cryptohmac.as_carried(asyncssh.mac._HMAC, asyncssh.mac.MAC) is False


@pytest.mark.parametrize("mac", ["hmac-sha2-256-etm@openssh.com", "hmac-sha1"])
async def test_a_tunnel_with_an_hmac_mac_carries_through_sshd(
    options: TunnelOptions, echo: Target, mac: str
) -> None:
    assert options.ssh_config is not None
    options.ssh_config.write_text(f"Host *\n  Ciphers aes128-ctr\n  MACs {mac}\n")
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    payloads = [os.urandom(1024 * 1024 + n) for n in range(2)]
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        link = await link_up(tunnel)
        assert isinstance(link, SSHLink)
        assert link.conn.get_extra_info("recv_mac") == mac
        assert link.conn.get_extra_info("send_mac") == mac
        assert asyncssh.mac._HMAC.sign.from_cryptography  # type: ignore[attr-defined]
        got = await asyncio.gather(*(exchange(*forward.mouth, p) for p in payloads))
        assert got == payloads
