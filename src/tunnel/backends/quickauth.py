"""Carried patch (asyncssh 2.14 to 2.x, the range pyproject.toml allows): public-key
authentication in one round trip to the gateway instead of three.

asyncssh, as OpenSSH's ssh, authenticates in three exchanges: a ``none`` request to learn
the server's methods (which OpenSSH's sshd answers only after its minimum delay for a
failed attempt, ~5-7 ms, on purpose), a public-key *query* without a signature (the
server answers ``PK_OK`` if it would take the key), and then the signed request. RFC 4252
(sections 5.2 and 7) lets a client send the signed request first; the server answers it
as it answers the second one. Measured in the daemon bench's lab (tcpdump): the ``none``
failure came 6.7 ms after the request, ``PK_OK`` 3.9 ms after the query: ~10 ms of
``blitzdns run``'s exec -> ready spent waiting for sshd (bench/notes/startup.md, session 9).

So, while installed (:func:`install`):

- a client connection whose preferred order has ``publickey`` first among the methods
  it can try (:func:`publickey_first`) tries it before ``none`` (the methods asyncssh
  starts from are ``[none]``; they become ``[publickey, none]``): with no key to offer,
  asyncssh goes on to ``none`` as before; a refused key gets the server's list, and
  asyncssh goes on from it as always;
- a key that signs here, without anyone's help (a private key loaded in this process, not
  a security key: ``sk-`` algorithms need a touch), is sent signed at once. Keys held by
  an agent or a PKCS#11 token are queried first as before, so that nothing is signed
  (nor a confirmation asked) for a key the server would refuse.

The server sees the same requests it would see from ``ssh -o PubkeyAuthentication=yes``
after a ``PK_OK``: the same method, key and signature. Without the asyncssh internals the
patch uses, it leaves asyncssh alone (:func:`install` returns ``False``).
"""

from __future__ import annotations

from typing import Any

PATCHED = "quickauth"
"""The mark on what the patch installed (tests check it is in place)."""


def signs_here(keypair: Any) -> bool:
    """Whether ``keypair`` is a private key loaded in this process that signs without a
    touch (not an agent's or a token's key, not a FIDO ``sk-`` key)."""
    from asyncssh.public_key import SSHLocalKeyPair  # noqa: PLC0415 (loaded with asyncssh)

    algorithm = getattr(keypair, "algorithm", b"")
    return (
        type(keypair) is SSHLocalKeyPair
        and isinstance(algorithm, bytes)
        and not algorithm.startswith(b"sk-")
    )


def takes_next_method(try_next_auth: Any) -> bool:
    """Whether ``SSHClientConnection.try_next_auth`` takes the keyword ``next_method`` (the
    patch passes it on: asyncssh 2.18 and later; before, it takes ``self`` alone)."""
    code = getattr(try_next_auth, "__code__", None)
    if code is None:
        return False
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    return "next_method" in names[code.co_argcount :]


USABLE_IF: dict[bytes, tuple[str, ...]] = {
    b"gssapi-keyex": ("_gss_kex_auth",),
    b"gssapi-with-mic": ("_gss_mic_auth",),
    b"hostbased": ("_host_based_auth", "_client_host_keys"),
    b"keyboard-interactive": ("_kbdint_auth",),
    b"password": ("_password_auth",),
}
"""For each method that may come before ``publickey`` in the client's preferred order: the
connection's attributes that must all be set for the client to try it (asyncssh's own
switches and, for host-based, its host keys). A method not named here counts as one the
client may try."""


def publickey_first(conn: Any) -> bool:
    """Whether ``publickey`` is the first method of the client's preferred order that it
    can try: only then does it go before the ``none`` probe (a preferred order that puts
    keyboard-interactive, GSS-API at a Kerberos site, or host-based first is kept)."""
    for method in getattr(conn, "_preferred_auth", None) or ():
        if method == b"publickey":
            return True
        needs = USABLE_IF.get(method)
        if needs is None or all(getattr(conn, name, True) for name in needs):
            return False
    return False


def install() -> bool:
    """Install both parts (once); whether they are in place."""
    from asyncssh import auth  # noqa: PLC0415 (only the patch needs it)
    from asyncssh.connection import SSHClientConnection  # noqa: PLC0415

    public_key_auth: Any = getattr(auth, "_ClientPublicKeyAuth", None)
    if public_key_auth is None or not all(
        hasattr(public_key_auth, name) for name in ("_start", "_send_signed_request")
    ):
        return False
    if not all(
        hasattr(SSHClientConnection, name)
        for name in ("try_next_auth", "public_key_auth_requested")
    ):
        return False
    if not takes_next_method(SSHClientConnection.try_next_auth):
        return False  # asyncssh before 2.18: try_next_auth(self), no next_method
    start: Any = public_key_auth._start
    if getattr(start, PATCHED, False):
        return True

    async def signed_first(self: Any) -> None:
        keypair = await self._conn.public_key_auth_requested()
        if keypair is None or not signs_here(keypair):
            # As asyncssh does (it asks again: the connection hands out the next key).
            self._conn._quickauth_held = keypair
            await start(self)
            return
        self._keypair = keypair
        self.logger.debug1("Trying public key auth with %s key, signed", keypair.algorithm)
        await self._send_signed_request()

    signed_first.quickauth = True  # type: ignore[attr-defined]

    requested: Any = SSHClientConnection.public_key_auth_requested

    async def public_key_auth_requested(self: Any) -> Any:
        # The key signed_first looked at and handed back to asyncssh's own query path.
        held = self.__dict__.pop("_quickauth_held", _NONE)
        if held is not _NONE:
            return held
        return await requested(self)

    public_key_auth_requested.quickauth = True  # type: ignore[attr-defined]

    try_next: Any = SSHClientConnection.try_next_auth

    def try_next_auth(self: Any, *, next_method: bool = False) -> None:
        if (
            not self.__dict__.get("_quickauth_started")
            and getattr(self, "_auth_methods", None) == [b"none"]
            and publickey_first(self)
            and getattr(self, "_wait", None) != "auth_methods"
        ):
            self._auth_methods = [b"publickey", b"none"]
        self._quickauth_started = True
        try_next(self, next_method=next_method)

    try_next_auth.quickauth = True  # type: ignore[attr-defined]

    public_key_auth._start = signed_first
    SSHClientConnection.public_key_auth_requested = public_key_auth_requested  # type: ignore[method-assign]
    SSHClientConnection.try_next_auth = try_next_auth  # type: ignore[method-assign]
    return True


_NONE = object()


def installed() -> bool:
    """Whether the patch is in place on the loaded asyncssh."""
    from asyncssh import auth  # noqa: PLC0415
    from asyncssh.connection import SSHClientConnection  # noqa: PLC0415

    return all(
        getattr(f, PATCHED, False)
        for f in (
            getattr(getattr(auth, "_ClientPublicKeyAuth", None), "_start", None),
            SSHClientConnection.try_next_auth,
            SSHClientConnection.public_key_auth_requested,
        )
    )
