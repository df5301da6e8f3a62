"""The shared peers themselves: a stale process listing, a frozen sshd, ports, waits."""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import (
    Sshd,
    _port_range,
    free_port,
    port_guard,
    process_state,
    session_members,
    signal_existing,
    stopped,
    tcp_established,
    wait_for,
)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def gone_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_pid_gone_between_listing_and_signalling_is_skipped(
    sleeper: subprocess.Popen[bytes],
) -> None:
    dead = gone_pid()
    assert signal_existing([dead, sleeper.pid], signal.SIGCONT) == [sleeper.pid]


def test_stopped_skips_the_gone_and_continues_the_rest_even_on_failure(
    sleeper: subprocess.Popen[bytes],
) -> None:
    with pytest.raises(RuntimeError, match="inside"), stopped([gone_pid(), sleeper.pid]) as held:
        assert held == [sleeper.pid]
        wait_for(lambda: process_state(sleeper.pid) == "T", "the sleeper to stop")
        raise RuntimeError("inside")
    wait_for(lambda: process_state(sleeper.pid) != "T", "the sleeper to continue")


def test_killing_a_frozen_sshd_leaves_no_session_behind(sshd: Sshd) -> None:
    with socket.create_connection(("127.0.0.1", sshd.port)) as client:
        assert client.recv(64).startswith(b"SSH-")
        sessions = wait_for(sshd.session_pids, "sshd to fork a session for the client")
        with stopped([sshd.process.pid if sshd.process else 0, *sessions]):
            sshd.kill()
        for pid in sessions:
            wait_for(lambda pid=pid: process_state(pid) in (None, "Z"), f"session {pid} to end")


def test_free_ports_are_outside_the_ephemeral_range_and_free() -> None:
    low, high = _port_range()
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = free_port()
        assert low <= port <= high < ephemeral_low
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as sock:
                sock.bind(("127.0.0.1", port))


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A socket like dig 9.18's query socket (or the stub's steered pair): SO_REUSEPORT,
    and for IPv6 IPV6_V6ONLY."""
    six = ":" in host
    sock = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if six:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    return sock


@pytest.mark.parametrize(("server", "wildcard"), [("127.0.0.1", "0.0.0.0"), ("::1", "::")])
def test_port_guard_keeps_a_reuseport_client_off_the_servers_port(
    server: str, wildcard: str
) -> None:
    # A server like the stub's steered pair (SO_REUSEPORT, a kernel-picked port), and a
    # client socket like dig 9.18's (SO_REUSEPORT, the wildcard address; for IPv6 also
    # IPV6_V6ONLY, the gap a guard of IPv4 only left): the kernel lets the client share the
    # port (so a bind to port 0 may land on it), unless guarded. The explicit bind is put
    # through the conflict check the kernel's choice for port 0 is.
    with reuseport_socket(server, 0) as listening:
        port = listening.getsockname()[1]
        with reuseport_socket(wildcard, port):
            pass  # the premise: shared
        with port_guard(server, port) as guard, port_guard(server, port) as second:
            assert guard is not None and second is not None  # two digs at once: both guard
            with pytest.raises(OSError) as refused:
                reuseport_socket(wildcard, port)
            assert refused.value.errno == errno.EADDRINUSE
        with reuseport_socket(wildcard, port):
            pass  # the guard is gone with the block


def test_wait_for_returns_the_value_and_names_what_never_came() -> None:
    values = iter([None, 0, "here"])
    assert wait_for(lambda: next(values), "a value") == "here"
    with pytest.raises(AssertionError, match="the impossible"):
        wait_for(lambda: False, "the impossible", timeout=0.05)


def test_a_close_shows_at_once_though_its_fin_waits_behind_unread_data() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with client:
            client.connect(listener.getsockname())
            server_side, _ = listener.accept()
            assert tcp_established(client)
            server_side.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:  # fill both buffers: the FIN will queue behind this
                    server_side.send(b"x" * 65536)
            server_side.close()
            wait_for(lambda: not tcp_established(client), "the close to show")
            client.setblocking(False)
            assert client.recv(1) == b"x", "the FIN is still behind the data"


def test_a_process_left_behind_is_found_by_its_session() -> None:
    shell = subprocess.Popen(
        ["sh", "-c", "sleep 60 >/dev/null & echo $!"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    out, _ = shell.communicate(timeout=30)
    left = int(out)
    try:
        assert session_members(shell.pid) == [left]
    finally:
        signal_existing([left], signal.SIGKILL)
    wait_for(lambda: session_members(shell.pid) == [], "the leftover to die")
