"""The stub's listening sockets, bound apart from its engine.

A link-first start (:meth:`blitzdns.daemon.Daemon.start`) binds them before the link makes
any connection, so that no connection of the link (the early one, a gateway given by name,
a second gateway, a reconnect) can get one of their ports as its own, and before the
resolver's modules load (:class:`~blitzdns.dns.server.Resolver` then serves on them). Only
the standard library, the config and :mod:`blitzdns.errors` here: it loads with the daemon.
"""

from __future__ import annotations

import errno
import socket

from blitzdns.config import Config, Endpoint
from blitzdns.errors import AddressInUse, BlitzdnsError, ConfigError, PermissionProblem

TCP_BACKLOG = 64

#: One listener: the endpoint as bound (its port picked when 0), its config key, UDP, TCP.
Listener = tuple[Endpoint, str, socket.socket, socket.socket]


def bind_listeners(config: Config) -> list[Listener]:
    """UDP and TCP bound on every ``dns.listen`` endpoint, then on every DNS-serving shared
    address (on the first listener's port); all closed again if one cannot be bound."""
    bound: list[Listener] = []
    try:
        for i, endpoint in enumerate(config.dns.listen):
            key = f"dns.listen[{i}]"
            at, udp, tcp = bind_pair(endpoint, key)
            bound.append((at, key, udp, tcp))
        port = bound[0][0].port
        for i, shared in enumerate(config.shared):
            if shared.dns:
                key = f"shared[{i}].address"
                at, udp, tcp = bind_pair(Endpoint(str(shared.address), port), key)
                bound.append((at, key, udp, tcp))
    except BaseException:
        close_listeners(bound)
        raise
    return bound


def close_listeners(listeners: list[Listener]) -> None:
    for _, _, udp, tcp in listeners:
        udp.close()
        tcp.close()


def bind_pair(endpoint: Endpoint, key: str) -> tuple[Endpoint, socket.socket, socket.socket]:
    """UDP and TCP sockets on the same address and port (port 0: one the kernel picks)."""
    attempts = 20 if endpoint.port == 0 else 1
    for attempt in range(attempts):
        udp = bound_socket(endpoint, socket.SOCK_DGRAM, key)
        port = udp.getsockname()[1]
        try:
            tcp = bound_socket(Endpoint(endpoint.host, port), socket.SOCK_STREAM, key)
        except AddressInUse:
            udp.close()
            if attempt + 1 < attempts:
                continue
            raise
        return Endpoint(endpoint.host, port), udp, tcp
    raise AssertionError("unreachable")


def bound_socket(endpoint: Endpoint, kind: socket.SocketKind, key: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    sock = socket.socket(family, kind)
    proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((endpoint.host, endpoint.port))
        if kind == socket.SOCK_STREAM:
            sock.listen(TCP_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise bind_error(exc, endpoint, proto, key) from None
    return sock


def bind_error(exc: OSError, endpoint: Endpoint, proto: str, key: str) -> BlitzdnsError:
    if exc.errno == errno.EADDRINUSE:
        return AddressInUse(
            f"{endpoint} ({proto}) is already in use by another program: stop it "
            f"(`ss -lunpt 'sport = :{endpoint.port}'` shows which; systemd-resolved and "
            "dnsmasq are the usual ones) or listen elsewhere with --listen ADDR:PORT"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionProblem(
            f"not allowed to listen on {endpoint} ({proto}): ports below 1024 need root or "
            "CAP_NET_BIND_SERVICE; run as root (blitzdns drops privileges after binding) "
            "or use a port above 1023, e.g. --listen 127.0.0.1:5300"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(
            f"{endpoint.host} is not an address of this machine (cannot listen on {endpoint})",
            key=key,
        )
    return ConfigError(f"cannot listen on {endpoint} ({proto}): {exc.strerror or exc}", key=key)
