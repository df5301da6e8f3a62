"""The ``openssh`` backend against a real sshd: an ``ssh -M`` master carries the bytes and
our mouths hand it each connection over the mux control socket (PROTOCOL.mux §3).

Concurrency (200 connections), an sshd restart with a connection opened during the
outage, failing closed while down, and "targets see only sshd" run for both backends in
test_tunnel_forwarding.py (the ``any_options`` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import select
import shutil
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.peers import Sshd, descendants, fingerprint, free_port, keygen, wait_until
from tunnel import Forward, LinkStatus, Tunnel, TunnelOptions
from tunnel.backends.openssh import fdpass
from tunnel.backends.openssh.command import SshFiles, master_argv
from tunnel.backends.openssh.fdpass import send_request_and_fd
from tunnel.backends.openssh.link import MuxLink
from tunnel.backends.openssh.master import SHELL, WATCHED, ExitWatch, Master, start_master
from tunnel.backends.openssh.mux import (
    MUX_C_NEW_STDIO_FWD,
    MuxError,
    check_hello,
    parse_reply,
    stdio_fwd_packet,
)
from tunnel.backends.openssh.pool import connect_now
from tunnel.backends.openssh.stderr import classify_exit
from tunnel.errors import AuthFailed, HostKeyChanged, HostKeyUnknown, TunnelConfigError
from tunnel.forwards import Gateway
from tunnel.link import Flow

from .test_tunnel_cut import CHUNK, connect, how_it_ends, read_some
from .tunnel_testlib import (
    Target,
    exchange,
    link_up,
    read_until_closed,
    settled_fd_count,
    talking_target,
)

SSH = shutil.which("ssh")


@pytest.fixture
def mux_options(options: TunnelOptions) -> TunnelOptions:
    if SSH is None:
        pytest.skip("ssh client not installed (Debian: openssh-client)")
    return dataclasses.replace(options, backend="openssh")


def forward_to(target: Target) -> Forward:
    return Forward("127.0.0.1", free_port(), "127.0.0.1", target.port)


def mux_link(tunnel: Tunnel) -> MuxLink | None:
    link = tunnel.link
    assert link is None or isinstance(link, MuxLink)
    return link


async def up_mux_link(tunnel: Tunnel) -> MuxLink:
    """The master's link that is up now (see ``link_up``)."""
    link = await link_up(tunnel)
    assert isinstance(link, MuxLink)
    return link


def master_pids(tunnel: Tunnel) -> list[int]:
    link = mux_link(tunnel)
    return [] if link is None else [link.pid]


def ssh_children() -> list[int]:
    """Our child processes (the ssh masters we started)."""
    return [pid for pid in descendants(os.getpid()) if pid != os.getpid()]


# --- pure parts -------------------------------------------------------------------------


def test_backend_option_is_validated(options: TunnelOptions) -> None:
    with pytest.raises(TunnelConfigError, match="backend"):
        dataclasses.replace(options, backend="putty")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["password", "passphrase"])
def test_secrets_the_openssh_backend_cannot_use_are_refused(
    options: TunnelOptions, name: str
) -> None:
    """ssh runs in batch mode: a password given for it must not be silently dropped."""
    with pytest.raises(TunnelConfigError, match=f"{name}: the openssh backend cannot use it"):
        dataclasses.replace(options, backend="openssh", **{name: "secret"})
    assert dataclasses.replace(options, **{name: "secret"}).backend == "asyncssh"


def test_stdio_fwd_packet_is_what_mux_c_sends() -> None:
    packet = stdio_fwd_packet(7, "dnd", 902)
    body = packet[4:]
    assert int.from_bytes(packet[:4], "big") == len(body)
    kind, rid, rest = parse_reply(body)
    assert (kind, rid) == (MUX_C_NEW_STDIO_FWD, 7)
    assert rest == b"\0\0\0\0" + b"\0\0\0\3dnd" + (902).to_bytes(4, "big")
    # The part after the request id is built once per target: other ids, other targets.
    assert stdio_fwd_packet(8, "dnd", 902) == packet[:8] + (8).to_bytes(4, "big") + packet[12:]
    other = stdio_fwd_packet(7, "dasher.dartmouth.edu", 2151)
    assert parse_reply(other[4:])[2] == b"\0" * 4 + b"\0\0\0\x14dasher.dartmouth.edu" + (
        2151
    ).to_bytes(4, "big")
    assert int.from_bytes(other[:4], "big") == len(other) - 4


def test_master_argv_checks_host_keys_and_never_prompts(tmp_path: Path) -> None:
    options = TunnelOptions(
        gateways=("jsmith@gw:2222",),  # type: ignore[arg-type]
        known_hosts=tmp_path / "kh",
        client_keys=(tmp_path / "id",),
        keepalive_s=15,
        backend="openssh",
    )
    argv = master_argv("ssh", options.gateways[0], options, tmp_path / "ctl", SshFiles.of(options))
    joined = " ".join(argv)
    for part in (
        "-N -M -S",
        "StrictHostKeyChecking=yes",
        f"UserKnownHostsFile={tmp_path / 'kh'}",
        "ServerAliveInterval=15",
        "ServerAliveCountMax=3",
        "BatchMode=yes",
        "ControlPersist=no",
        f"-i {tmp_path / 'id'}",
        "-p 2222 -l jsmith -- gw",
    ):
        assert part in joined
    trusting = dataclasses.replace(options, trust_new_host_key=True)
    assert "StrictHostKeyChecking=accept-new" in master_argv(
        "ssh", options.gateways[0], trusting, tmp_path / "ctl", SshFiles.of(trusting)
    )


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        (
            "No ED25519 host key is known for [gw]:22\r\nHost key verification failed.",
            HostKeyUnknown,
        ),
        (
            "@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
            "Host key verification failed.",
            HostKeyChanged,
        ),
        ("jsmith@gw: Permission denied (publickey).", AuthFailed),
    ],
)
def test_exit_classification_final(stderr: str, kind: type[Exception]) -> None:
    options = TunnelOptions(gateways=("gw",), backend="openssh")  # type: ignore[arg-type]
    assert isinstance(classify_exit(Gateway("gw"), options, 255, stderr), kind)


def test_exit_classification_retryable() -> None:
    options = TunnelOptions(gateways=("gw",), backend="openssh")  # type: ignore[arg-type]
    error = classify_exit(
        Gateway("gw"), options, 255, "ssh: connect to host gw port 22: Connection refused"
    )
    assert not isinstance(error, HostKeyUnknown | HostKeyChanged | AuthFailed)
    assert "Connection refused" in str(error)


# --- against sshd -----------------------------------------------------------------------


async def test_unknown_host_key_is_final_with_a_clear_message(
    mux_options: TunnelOptions, sshd: Sshd, echo: Target
) -> None:
    assert mux_options.known_hosts is not None
    mux_options.known_hosts.write_text("")
    forward = forward_to(echo)
    async with Tunnel(mux_options, [forward]) as tunnel:
        with pytest.raises(HostKeyUnknown) as info:
            await tunnel.wait_up(10)
        assert tunnel.state.status is LinkStatus.FAILED
        assert tunnel.state.attempts == 1
        assert await exchange(*forward.mouth, b"no") == b""
    message = str(info.value)
    # ssh itself does not name the key: the message is the asyncssh backend's, fingerprint
    # included, and the key was fetched without offering any credential.
    assert fingerprint(sshd.host_key.with_suffix(".pub")) in message
    assert f"ssh-keyscan -p {sshd.port} -t ed25519 127.0.0.1" in message
    assert "Accepted" not in sshd.log.read_text()
    assert echo.peers == []


async def test_changed_host_key_is_final(
    mux_options: TunnelOptions, sshd: Sshd, echo: Target, tmp_path: Path
) -> None:
    other = keygen(tmp_path / "other_host_key")
    kind, blob = other.with_suffix(".pub").read_text().split()[:2]
    assert mux_options.known_hosts is not None
    mux_options.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    async with Tunnel(mux_options, [forward_to(echo)]) as tunnel:
        with pytest.raises(HostKeyChanged):
            await tunnel.wait_up(10)


async def test_close_leaves_no_process_and_no_socket(
    mux_options: TunnelOptions, sshd: Sshd, echo: Target
) -> None:
    forward = forward_to(echo)
    tunnel = Tunnel(mux_options, [forward])
    await tunnel.start()
    assert await tunnel.wait_up(10)
    link = await up_mux_link(tunnel)
    control_dir = link.control_dir
    assert oct(control_dir.stat().st_mode & 0o777) == oct(0o700)
    streams = [await asyncio.open_connection(*forward.mouth) for _ in range(5)]
    for reader, writer in streams:
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
    assert link.pid in ssh_children()
    async with asyncio.timeout(5):
        await tunnel.close()
    for reader, writer in streams:
        assert await read_until_closed(reader) == b""
        writer.close()
    assert link.pid not in ssh_children()
    assert not control_dir.exists()
    await wait_until(lambda: not echo.active and not sshd.session_pids())
    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: asyncio.all_tasks() == {asyncio.current_task()})
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert tunnel.state.status is LinkStatus.STOPPED
    with pytest.raises(OSError):
        await asyncio.open_connection(*forward.mouth)


CRASHING_TUNNEL = """
import asyncio, sys
from pathlib import Path
from tunnel import Tunnel, TunnelOptions

async def main() -> None:
    gateway, known_hosts, config, key = sys.argv[1:]
    options = TunnelOptions(
        gateways=(gateway,), known_hosts=Path(known_hosts), ssh_config=Path(config),
        client_keys=(Path(key),), backend="openssh",
        roaming=False,  # a stalled loop read as a pause would replace the printed master
    )
    async with Tunnel(options, []) as tunnel:
        assert await tunnel.wait_up(50)
        while tunnel.link is None:  # in doubt or replaced at once on a loaded machine
            await asyncio.sleep(0.05)
        link = tunnel.link
        print(link.pid, link.control_dir, flush=True)
        await asyncio.sleep(30)

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def crashing_tunnel(options: TunnelOptions, config: Path) -> AsyncIterator[tuple[int, str]]:
    """A tunnel (openssh backend, ssh config ``config``) in a process of its own, up:
    yields its ssh master's pid and private directory, and SIGKILLs it at the end."""
    assert options.known_hosts and options.client_keys
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_TUNNEL,
        str(options.gateways[0]),
        str(options.known_hosts),
        str(config),
        str(options.client_keys[0]),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(60):  # a Python start and a login: slow on a busy machine
            pid, control_dir = (await process.stdout.readline()).decode().split()
        yield int(pid), control_dir
    finally:
        process.kill()
        await process.wait()


def running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an orphan's zombie may wait for a busy init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def proc_status(pid: int) -> str:
    """What ``/proc`` says of ``pid`` (state, parent, signals pending/blocked/ignored/caught,
    where it sleeps): the clue a failed wait for its exit leaves."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError as exc:
        return f"gone ({exc})"
    keys = ("Name", "State", "PPid", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
    lines = [line for line in status if line.partition(":")[0] in keys]
    return "; ".join([*(" ".join(line.split()) for line in lines), f"wchan: {wchan}"])


async def test_a_killed_tunnel_takes_its_ssh_master_with_it(mux_options: TunnelOptions) -> None:
    """SIGKILL gives the tunnel no chance to clean up: the kernel's parent-death signal
    must end the master (else it would hold the link open forever) — even a master that
    cannot act on a signal it catches. OpenSSH's client loop checks the flag its SIGTERM
    handler sets only before ``poll()``: a SIGTERM landing just before the call (the
    master busy with the mux connections the dying tunnel closes) is seen at the next
    wake-up, a keepalive (15 s by default) away. A stopped master stands for that one
    here: it acts on nothing but SIGKILL."""
    assert mux_options.ssh_config is not None
    async with crashing_tunnel(mux_options, mux_options.ssh_config) as (master, control_dir):
        assert running(master)
        os.kill(master, signal.SIGSTOP)
    try:
        await wait_until(lambda: not running(master))
    except TimeoutError:
        status = proc_status(master)
        with contextlib.suppress(ProcessLookupError):
            os.kill(master, signal.SIGKILL)
        pytest.fail(f"ssh master {master} outlived its killed tunnel: {status}")
    # Nobody was left to remove the (by now empty) private directory: this test does.
    shutil.rmtree(control_dir, ignore_errors=True)


PROXY_RELAY = """
import os, select, signal, socket, sys
host, port, pid_file = sys.argv[1:]
gateway = socket.create_connection((host, int(port)))
with open(pid_file + ".new", "w") as f:
    f.write(str(os.getpid()))
os.rename(pid_file + ".new", pid_file)
try:
    while True:
        for end in select.select([0, gateway], [], [])[0]:
            if end == 0:
                data = os.read(0, 65536)
                if not data:
                    raise EOFError
                gateway.sendall(data)
            else:
                data = gateway.recv(65536)
                if not data:
                    sys.exit(0)
                os.write(1, data)
except (EOFError, BrokenPipeError):
    # The ssh side is gone: like nc without -N (it does not pass the end of its stdin
    # on), the relay stays while the gateway sends nothing more, holding the connection.
    while True:
        signal.pause()
"""


def session_members(sid: int) -> list[int]:
    """The live processes of session ``sid`` (zombies left out)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
                if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
                    members.append(int(entry))
    return members


async def test_a_killed_tunnel_takes_the_masters_proxy_command_with_it(
    mux_options: TunnelOptions, sshd: Sshd, tmp_path: Path
) -> None:
    """A SIGKILLed master cannot hang up its ProxyCommand, and a proxy that does not end
    at the end of its stdin (``nc host 22`` without ``-N``; here a relay that does the
    same) would keep the gateway connection open for good: the master's watchdog kills
    the master's whole process group when the tunnel dies."""
    relay, pid_file = tmp_path / "relay.py", tmp_path / "relay.pid"
    relay.write_text(PROXY_RELAY)
    config = tmp_path / "proxy_config"
    config.write_text(f"ProxyCommand {sys.executable} {relay} 127.0.0.1 {sshd.port} {pid_file}\n")
    async with crashing_tunnel(mux_options, config) as (master, control_dir):
        proxy = int(pid_file.read_text())
        assert running(proxy)
    try:
        await wait_until(lambda: not running(master) and not session_members(master))
    except TimeoutError:
        left = {pid: proc_status(pid) for pid in session_members(master)}
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the killed tunnel left its ssh master's session behind: {left}")
    assert not running(proxy)
    shutil.rmtree(control_dir, ignore_errors=True)


async def test_the_watchdog_acts_when_the_wait_for_the_master_was_cancelled(
    tmp_path: Path,
) -> None:
    """The pipe the watchdog waits on is closed when the master exits, whoever waited for
    it: a waiter cancelled mid-wait (a supervisor's task cancelled) must not leave the
    master's group (its ProxyCommand; here a ``sleep`` standing in for it, holding the
    master's stderr as a proxy does, which must not hold up seeing the master's exit)
    behind."""
    watchdog_end, guard = os.pipe()
    stderr, stderr_end = os.pipe()  # inherited by the "proxy" too, as ssh's by its proxy
    try:
        process = await asyncio.create_subprocess_exec(
            SHELL, "-c", WATCHED, "sh", SHELL, "-c", "sleep 600 & exec sleep 600",
            stdin=watchdog_end, stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr_end, start_new_session=True,
        )  # fmt: skip
    finally:
        os.close(watchdog_end)
        os.close(stderr_end)
    control_dir = tmp_path / "control"
    control_dir.mkdir()
    master = Master(process, control_dir, "test", "ssh", guard, stderr=stderr)
    try:
        await wait_until(lambda: len(session_members(process.pid)) == 3)  # + proxy, watchdog
        waiting = asyncio.create_task(master.wait_exit())
        await asyncio.sleep(0)  # the task starts waiting
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        process.kill()  # the master only: its "proxy" stays in the group
        await wait_until(lambda: not session_members(process.pid))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def test_an_ssh_that_cannot_be_run_is_a_config_error(
    mux_options: TunnelOptions, tmp_path: Path
) -> None:
    """The master is started through ``sh`` (its watchdog): an ``ssh`` that ``exec`` cannot
    run is still a final configuration error naming it, not a gateway to retry."""
    ssh = tmp_path / "ssh"
    ssh.write_text("#!/nonexistent/interpreter\n")
    ssh.chmod(0o755)
    options = dataclasses.replace(mux_options, ssh_binary=str(ssh))
    with pytest.raises(TunnelConfigError, match=f"backend openssh: cannot run {ssh}: "):
        await start_master(options.gateways[0], options)


@pytest.mark.parametrize("batched", [True, False], ids=["sendmmsg", "three-sends"])
def test_request_and_descriptor_arrive_as_the_master_reads_them(
    batched: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master reads the request from the stream, then takes exactly one descriptor per
    one-byte message (mm_receive_fd: a truncated control message is an error)."""
    if not batched:
        monkeypatch.setattr(fdpass, "_batch", lambda: None)
    request = stdio_fwd_packet(7, "dasher.dartmouth.edu", 2151)
    ours, master = socket.socketpair()
    client, other = socket.socketpair()
    with ours, master, client, other:
        ours.setblocking(False)
        send_request_and_fd(ours, request, client.fileno())
        assert master.recv(len(request)) == request
        for _ in range(2):
            data, fds, flags, _ = socket.recv_fds(master, 1, 1)
            assert (data, len(fds), flags & socket.MSG_CTRUNC) == (b"\0", 1, 0)
            with socket.socket(fileno=fds[0]) as passed:
                passed.sendall(b"ping")
                assert other.recv(4) == b"ping"
        master.setblocking(False)
        with pytest.raises(BlockingIOError):
            master.recv(1)


async def test_a_lost_master_leaves_no_descriptor_behind(
    mux_options: TunnelOptions, echo: Target
) -> None:
    """A master that dies takes its link with it: the link's spare mux connections and its
    watch set are closed, so a tunnel that reconnects all day does not run out of
    descriptors."""
    forward = forward_to(echo)
    async with Tunnel(mux_options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        assert await exchange(*forward.mouth, b"one") == b"one"
        before = await settled_fd_count()  # spares topped up, the session's sockets closed
        for _ in range(3):
            # A loaded machine can drop a fresh link once more (the mouth holds and then
            # carries the exchange on the next one): take the master that is up now.
            await wait_until(lambda: master_pids(tunnel) != [], 15)
            (pid,) = master_pids(tunnel)
            os.kill(pid, signal.SIGKILL)
            await wait_until(lambda old=pid: master_pids(tunnel) not in ([], [old]), 15)
            assert await exchange(*forward.mouth, b"again") == b"again"
        assert await settled_fd_count() == before


async def test_a_channel_opened_as_the_link_closes_is_refused_not_leaked(
    mux_options: TunnelOptions, echo: Target
) -> None:
    """The slow path (open, then adopt) can finish just after the link closed: the mux
    connection is closed with a MuxError instead of being watched by a closed link."""
    forward = forward_to(echo)
    async with Tunnel(mux_options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        link = await up_mux_link(tunnel)
        ours, theirs = socket.socketpair()
        with ours, theirs:
            channel = await link.open_stdio_fwd(theirs.fileno(), "127.0.0.1", echo.port)
            link.close()
            with pytest.raises(MuxError, match="link closed"):
                mouth = tunnel._mouths[forward.mouth]
                flow = Flow(mouth, forward, theirs, "127.0.0.1", 0, mouth.counters)
                link.adopt(channel, flow)
            assert channel.sock.fileno() == -1


async def test_bytes_sent_to_a_client_that_reset_count_only_what_it_took(
    mux_options: TunnelOptions,
) -> None:
    """After a reset, data still queued toward the client will never arrive: it must not
    be counted as delivered (the kernel keeps reporting it in the send queue)."""

    async with (
        talking_target(b"z" * 65536, repeat=160) as forward,
        Tunnel(mux_options, [forward]) as tunnel,
    ):
        assert await tunnel.wait_up(10)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(client, forward.mouth)
        taken = 0
        while taken < 64 * 1024:
            taken += len(await loop.sock_recv(client, 65536))
        await wait_until(lambda: tunnel.state.forwards[0].bytes_in > 512 * 1024)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        await wait_until(lambda: tunnel.state.forwards[0].open == 0)
        # What the client's kernel acknowledged: what it read plus its small buffer.
        assert tunnel.state.forwards[0].bytes_in <= taken + 512 * 1024


async def test_forwards_in_the_users_ssh_config_are_not_set_up_by_the_master(
    mux_options: TunnelOptions, echo: Target
) -> None:
    """A LocalForward for the gateway in ~/.ssh/config, its port busy (say the user's own
    ssh -L still runs): the master must not try it, or it would exit and retry forever."""
    assert mux_options.ssh_config is not None
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        mux_options.ssh_config.write_text(
            f"Host 127.0.0.1\n  LocalForward 127.0.0.1:{port} 127.0.0.1:9\n"
        )
        forward = forward_to(echo)
        async with Tunnel(mux_options, [forward]) as tunnel:
            assert await tunnel.wait_up(10)
            assert await exchange(*forward.mouth, b"through") == b"through"


# --- a master that goes, told without asking it ----------------------------------------


def stop_the_master(how: str, link: MuxLink, sshd: Sshd) -> None:
    if how == "gateway-gone":
        sshd.kill()  # the master reads the end and frees its channels in order (clean exit)
    else:
        os.kill(link.pid, signal.SIGKILL if how == "SIGKILL" else signal.SIGTERM)


def hang_up_seen(sock: socket.socket) -> bool:
    """Whether the master hung up the connection: its end read, or a reset (a master that
    goes before it has read our hello, sent ahead, leaves it unread: the kernel resets).
    Not seen within 30 s: False (the assertion fails rather than the run hanging)."""
    sock.settimeout(30)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "gateway-gone"])
async def test_a_going_master_is_told_when_it_hangs_up(
    mux_options: TunnelOptions, sshd: Sshd, how: str
) -> None:
    """The moment the master hangs up a mux connection because it is going (killed: the
    kernel closes its descriptors; SIGTERM or the gateway gone: it frees its channels), the
    link knows from /proc, without a connect the master would have to accept; while it
    runs, it is not going."""
    async with Tunnel(mux_options, []) as tunnel:
        assert await tunnel.wait_up(10)
        link = await up_mux_link(tunnel)
        master = link.master
        assert isinstance(master.exit_watch, ExitWatch)
        assert master.exit_watch.link.startswith("socket:[")
        channel = connect_now(link.control_path)
        assert channel is not None
        with channel.sock:
            channel.sock.setblocking(True)
            channel.buffer += await asyncio.to_thread(channel.sock.recv, 64)
            check_hello(channel.take_packet())
            assert not master.going()
            stop_the_master(how, link, sshd)
            assert await asyncio.to_thread(hang_up_seen, channel.sock)
            assert master.going()


async def test_a_flow_that_comes_as_the_master_is_gone_is_held_for_the_next_link(
    mux_options: TunnelOptions, echo: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spares of a master that has just died (its exit not yet seen by the loop) are
    hung up: a connection accepted then cannot be handed over, and the master never got
    its socket, so it is held (as while the link is down) and carried by the next master's
    link, not cut, and not offered to the dead link again; nothing leaks."""
    forward = forward_to(echo)
    async with Tunnel(mux_options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        assert await exchange(*forward.mouth, b"one") == b"one"
        link = await up_mux_link(tunnel)
        before = await settled_fd_count()
        spares = list(link.spares._spares)
        assert spares
        os.kill(link.pid, signal.SIGKILL)
        watch = select.poll()
        for spare in spares:
            watch.register(spare.sock, select.POLLRDHUP)
        # The loop is held (no await) until every spare is hung up: the link cannot have
        # seen the master's exit yet.
        deadline = time.monotonic() + 15
        while len(watch.poll(100)) < len(spares):
            assert time.monotonic() < deadline, "the killed master's spares stay open"
        assert tunnel.link is link
        offered: list[Flow] = []
        carry = link.carry
        monkeypatch.setattr(link, "carry", lambda flow: (offered.append(flow), carry(flow)))
        mouth = tunnel._mouths[forward.mouth]
        with socket.create_connection(forward.mouth, timeout=10) as client:
            client.sendall(b"held")
            mouth._accept()  # still in the same step of the loop: handed to the dead link
            assert len(mouth.flows) == 1 and mouth.counters.cut == 0
            assert await asyncio.to_thread(client.recv, 16) == b"held"
        assert mouth.counters.cut == 0
        new_link = tunnel.link
        assert new_link is not None and new_link is not link
        await wait_until(lambda: not mouth.flows)
        assert mouth.counters.cut == 0 and len(offered) == 1
        assert await exchange(*forward.mouth, b"again") == b"again"
        assert await settled_fd_count() == before
        assert all(spare.sock.fileno() == -1 for spare in spares)


def test_no_watch_where_proc_does_not_show_the_listener(tmp_path: Path) -> None:
    assert ExitWatch.of(os.getpid(), tmp_path) is None
    assert ExitWatch.of(os.getpid(), tmp_path, proc=tmp_path / "no-proc") is None


@pytest.mark.parametrize(
    ("how", "watch"),
    [("SIGKILL", True), ("SIGTERM", True), ("SIGTERM", False)],
    ids=["SIGKILL", "SIGTERM", "SIGTERM-no-proc"],
)
async def test_a_master_that_dies_mid_transfer_resets_the_client(
    mux_options: TunnelOptions, sshd: Sshd, how: str, watch: bool
) -> None:
    """In flight when the master goes: a reset, never an end of stream. Killed, a master's
    sockets are released in no set order (Linux runs the exit's deferred releases newest
    first), so a connect to its control socket could still be accepted after a mux
    connection was hung up: judged by that connect, SIGKILL gave an EOF in 4 runs of 12.
    Where /proc does not tell, the connect is still asked (a clean exit frees the listener
    first)."""
    async with (
        talking_target(CHUNK, repeat=16384) as forward,
        Tunnel(mux_options, [forward]) as tunnel,
    ):
        assert await tunnel.wait_up(10)
        link = await up_mux_link(tunnel)
        if not watch:
            link.master.exit_watch = None
        client = await connect(forward)
        await read_some(client, 1 << 20)
        stop_the_master(how, link, sshd)
        assert await how_it_ends(client) == "reset"
        await wait_until(lambda: tunnel.state.forwards[0].cut == 1)


async def test_a_stop_past_its_grace_ends_a_proxy_command_that_left_the_group(
    mux_options: TunnelOptions, sshd: Sshd, tmp_path: Path
) -> None:
    """A master that does not act on the stop's SIGTERM (stopped here; OpenSSH's signal
    race does the same for a keepalive) is SIGKILLed after the grace and cannot hang up
    its ProxyCommand; the watchdog ends the master's process group, which a proxy run
    under ``setsid`` has left: it is found by its parent before the master goes, and
    ended after it."""
    setsid = shutil.which("setsid")
    if setsid is None:
        pytest.skip("setsid not installed (Debian: util-linux)")
    relay, pid_file = tmp_path / "relay.py", tmp_path / "relay.pid"
    relay.write_text(PROXY_RELAY)
    assert mux_options.ssh_config is not None
    mux_options.ssh_config.write_text(
        f"ProxyCommand {setsid} {sys.executable} {relay} 127.0.0.1 {sshd.port} {pid_file}\n"
    )
    tunnel = Tunnel(mux_options, [])
    proxy: int | None = None
    try:
        await tunnel.start()
        master = (await up_mux_link(tunnel)).pid
        proxy = int(pid_file.read_text())
        assert session_members(proxy) == [proxy]  # out of the master's session and group
        os.kill(master, signal.SIGSTOP)
        await tunnel.close()
        assert not running(master)
        await wait_until(lambda: not running(proxy))
    finally:
        await tunnel.close()
        if proxy is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proxy, signal.SIGKILL)


async def test_the_master_is_signalled_without_being_polled(
    mux_options: TunnelOptions, sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncio's child watcher is the master's only reaper: the link's close (SIGTERM),
    the stop (SIGTERM again) and the SIGKILL past the grace never poll the master's
    ``Popen``. ``Popen.send_signal`` and ``kill`` poll first (``waitpid(WNOHANG)``): a
    master that had just exited (the stop's SIGTERM after the close's; 3 of 30 stops of
    the bench's tunnel-mux forwarder) could be reaped there, before the watcher, which
    then logged "Unknown child process pid …" and reported 255, not the master's status."""
    tunnel = Tunnel(mux_options, [])
    try:
        await tunnel.start()
        link = await up_mux_link(tunnel)
        popen = link.master.process._transport._proc  # type: ignore[attr-defined]
        polls: list[int] = []
        poll = popen.poll
        monkeypatch.setattr(popen, "poll", lambda: polls.append(1) or poll())
        os.kill(link.pid, signal.SIGSTOP)  # deaf to SIGTERM: SIGKILLed after the grace
        await tunnel.close()
        assert polls == []
        assert link.master.process.returncode == -signal.SIGKILL
        assert link.master.handle is None  # the pidfd closed with the reap
    finally:
        await tunnel.close()


@contextlib.contextmanager
def threaded_echo() -> Iterator[int]:
    """An echo target served by a thread, one connection at a time, each closed after the
    client's end: flows end while the test holds the event loop. Yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(20)
                while data := conn.recv(65536):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


async def test_a_connection_waiting_with_an_end_is_handed_over_before_the_end(
    mux_options: TunnelOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flow's end (the master hung up its mux connection) and the next client's
    connection found in one wake-up of the loop: the connection, which a client waits
    for, is handed to the master first, the end read after it; both are counted, nothing
    is cut."""
    with threaded_echo() as port:
        forward = Forward("127.0.0.1", free_port(), "127.0.0.1", port)
        async with Tunnel(mux_options, [forward]) as tunnel:
            assert await tunnel.wait_up(10)
            link = await up_mux_link(tunnel)
            order: list[str] = []
            hand_off, end = link.hand_off, link.end
            monkeypatch.setattr(link, "hand_off", lambda f: order.append("hand-off") or hand_off(f))
            monkeypatch.setattr(link, "end", lambda s, c: order.append("end") or end(s, c))
            first = socket.create_connection(forward.mouth, timeout=10)
            with first:
                first.sendall(b"one")
                assert await asyncio.to_thread(first.recv, 16) == b"one"
                (session,) = link._sessions.values()
            # From here the loop is held (no await) until both wait for it.
            watch = select.poll()
            watch.register(session.channel.sock, select.POLLRDHUP)
            deadline = time.monotonic() + 15
            while not watch.poll(100):
                assert time.monotonic() < deadline, "the master did not hang up"
            with socket.create_connection(forward.mouth, timeout=10) as second:
                second.sendall(b"two")
                assert await asyncio.to_thread(second.recv, 16) == b"two"
                assert order == ["hand-off", "hand-off", "end"]
            mouth = tunnel._mouths[forward.mouth]
            await wait_until(lambda: not mouth.flows)
            assert order == ["hand-off", "hand-off", "end", "end"]
            assert mouth.counters.total == 2 and mouth.counters.cut == 0
