"""The tunnel's exception tree, translated at each backend's edge (tunnel.backends).

::

    TunnelError                 base of everything this package raises
    ├── RetryableError          the supervisor tries again (with backoff)
    │   ├── GatewayUnreachable  refused, timed out, name lookup failed, network down
    │   └── LinkLost            an established link dropped (keepalive, reset, EOF)
    └── FinalError              retrying cannot help; a person must act
        ├── AuthFailed          the gateway refused every authentication method offered
        ├── HostKeyError        the gateway's host key was not accepted (revoked, bad CA, …)
        │   ├── HostKeyUnknown  the gateway's key is not in known_hosts
        │   └── HostKeyChanged  known_hosts holds another key for the gateway
        ├── TunnelConfigError   bad options or forwards (also a ValueError)
        └── MouthBindError      a mouth could not be bound (in use, permission, no such address)

Every message is one human line, fit to print as the program's last words.
"""

from __future__ import annotations


class TunnelError(Exception):
    """Base of every error raised by :mod:`tunnel`."""


class RetryableError(TunnelError):
    """A failure that may go away by itself: the supervisor retries after a backoff delay."""


class GatewayUnreachable(RetryableError):
    """The gateway could not be reached: refused, timeout, name lookup failure, no route.

    ``refused``: nothing answered the TCP connect at all (refused, no route); retried on
    a short fixed pause (:attr:`tunnel.backoff.Backoff.refused_s`), never backed off.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused

    @classmethod
    def timed_out(cls, gateway: str, seconds: float) -> GatewayUnreachable:
        return cls(f"gateway {gateway}: timed out after {seconds:g} s")

    @classmethod
    def because(cls, gateway: str, detail: str, *, refused: bool = False) -> GatewayUnreachable:
        return cls(f"gateway {gateway}: {detail}", refused=refused)


class LinkLost(RetryableError):
    """An established SSH link dropped (missed keepalives, reset, the server went away)."""


class FinalError(TunnelError):
    """A failure that retrying cannot fix; the supervisor stops with status FAILED."""


class AuthFailed(FinalError):
    """The gateway refused authentication (no key, agent identity or password was accepted)."""

    @classmethod
    def refused(cls, gateway: str, detail: str) -> AuthFailed:
        """The one wording for either backend: what the gateway said, and what to check."""
        return cls(
            f"gateway {gateway} refused authentication ({detail}); check the user name, "
            "that your key is loaded (ssh-add -l) and authorized on the gateway"
        )


class HostKeyError(FinalError):
    """The gateway's host key was refused (checked against known_hosts, always).

    ``host``, ``port``, ``key_type`` and ``fingerprint`` (``SHA256:…``) describe the key the
    gateway presented, when it got that far.
    """

    def __init__(
        self,
        message: str,
        *,
        host: str = "",
        port: int = 0,
        key_type: str = "",
        fingerprint: str = "",
    ) -> None:
        super().__init__(message)
        self.host = host
        self.port = port
        self.key_type = key_type
        self.fingerprint = fingerprint


class HostKeyUnknown(HostKeyError):
    """The gateway presented a key that known_hosts does not list; the message carries its
    fingerprint and the commands that would record it."""


class HostKeyChanged(HostKeyError):
    """known_hosts holds a different key for the gateway: possibly an attack; never accepted."""


class TunnelConfigError(FinalError, ValueError):
    """Invalid options, gateway or forward specification; the message names the field."""


class MouthBindError(FinalError):
    """A mouth could not be bound; names ``address:port`` and the reason."""

    def __init__(self, message: str, *, address: str, port: int, reason: str) -> None:
        super().__init__(message)
        self.address = address
        self.port = port
        self.reason = reason
