"""The control socket with a real asyncio unix server and the blocking client in one loop."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import os
import pwd
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from blitzdns.control import (
    ControlError,
    ControlServer,
    StatusUnknown,
    default_socket_path,
    format_bytes,
    format_duration,
    query_status,
    render_status,
    request,
    request_reload,
    socket_candidates,
    status_command,
)
from blitzdns.errors import AddressInUse, NotRunning, PermissionProblem

from .conftest import ChildRunner

NOW = 1_700_000_000.0


def sample_snapshot() -> dict[str, Any]:
    return {
        "version": "0.1.0",
        "pid": 4242,
        "started": NOW - 7380,
        "location": "campus",
        "tunnel": {
            "status": "up",
            "since": NOW - 300,
            "gateway": "jsmith@nimbus.dartmouth.edu",
            "last_error": "connection lost",
            "final_error": None,
            "forwards": [
                {
                    "name": "dasher/mail",
                    "mouth_host": "127.77.0.3",
                    "mouth_port": 2151,
                    "target_host": "dasher.dartmouth.edu",
                    "target_port": 2151,
                    "open": 1,
                    "total": 12,
                    "rejected": 0,
                    "cut": 4,
                    "bytes_in": 1_048_576,
                    "bytes_out": 1536,
                },
                {
                    "name": "dnd/dnd",
                    "mouth_host": "::1",
                    "mouth_port": 902,
                    "target_host": "dnd.dartmouth.edu",
                    "target_port": 902,
                    "open": 0,
                    "total": 3,
                    "rejected": 2,
                    "cut": 0,
                    "bytes_in": 10,
                    "bytes_out": 20,
                },
            ],
        },
        "dns": {
            "listen": ["127.0.0.1:53", "[::1]:53"],
            "answered_local": 10,
            "forwarded": 20,
            "cache_hits": 5,
            "servfail": 1,
            "refused": 2,
            "formerr": 3,
            "dropped": 4,
            "upstreams": [
                {
                    "address": "192.0.2.1:53",
                    "ok": True,
                    "answered": 100,
                    "timeouts": 0,
                    "last_error": None,
                },
                {
                    "address": "192.0.2.2:53",
                    "ok": False,
                    "answered": 0,
                    "timeouts": 7,
                    "last_error": "timed out",
                },
            ],
        },
    }


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    return tmp_path / "run" / "blitzdns" / "control.sock"


# --------------------------------------------------------------------------- server + client


async def test_status_round_trip_with_owner_only_permissions(sock_path: Path) -> None:
    counter = {"n": 0}

    def snapshot() -> dict[str, Any]:
        counter["n"] += 1
        return {**sample_snapshot(), "pid": counter["n"]}

    async with ControlServer(sock_path, snapshot):
        socket_stat = os.stat(sock_path)
        assert stat.S_ISSOCK(socket_stat.st_mode)
        assert stat.S_IMODE(socket_stat.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == 0o700
        first = await asyncio.to_thread(query_status, sock_path)
        second = await asyncio.to_thread(query_status, sock_path)
    assert first == {**sample_snapshot(), "pid": 1}
    assert second["pid"] == 2
    assert sock_path.name not in os.listdir(sock_path.parent)


async def test_not_running_when_nothing_answers(sock_path: Path) -> None:
    with pytest.raises(NotRunning, match=f"nothing answers on {sock_path}") as caught:
        await asyncio.to_thread(query_status, sock_path)
    assert caught.value.exit_code == 3


async def test_stale_socket_of_a_dead_daemon_is_replaced(sock_path: Path) -> None:
    sock_path.parent.mkdir(parents=True, mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    with pytest.raises(NotRunning):
        await asyncio.to_thread(query_status, sock_path)
    async with ControlServer(sock_path, sample_snapshot):
        assert (await asyncio.to_thread(query_status, sock_path))["pid"] == 4242


async def test_a_live_daemon_is_not_displaced(sock_path: Path) -> None:
    async with ControlServer(sock_path, lambda: {"pid": 1}):
        with pytest.raises(AddressInUse, match="already answers"):
            await ControlServer(sock_path, lambda: {"pid": 2}).start()
        assert (await asyncio.to_thread(query_status, sock_path))["pid"] == 1


async def test_a_file_that_is_not_a_socket_is_left_alone(sock_path: Path) -> None:
    sock_path.parent.mkdir(parents=True)
    with open(sock_path, "w") as file:  # noqa: ASYNC230
        file.write("keep me")
    with pytest.raises(AddressInUse, match="is not a socket"):
        await ControlServer(sock_path, sample_snapshot).start()
    with open(sock_path) as file:  # noqa: ASYNC230
        assert file.read() == "keep me"


async def test_close_leaves_a_successor_socket_alone(sock_path: Path) -> None:
    server = ControlServer(sock_path, lambda: {"pid": 1})
    await server.start()
    os.unlink(sock_path)
    async with ControlServer(sock_path, lambda: {"pid": 2}):
        await server.close()
        assert (await asyncio.to_thread(query_status, sock_path))["pid"] == 2


async def test_reload_calls_the_hook_and_reports_failure(sock_path: Path) -> None:
    outcomes = [True, False]
    calls = []

    async def reload() -> bool:
        calls.append(1)
        return outcomes[len(calls) - 1]

    async with ControlServer(sock_path, sample_snapshot, reload=reload):
        assert await asyncio.to_thread(request_reload, sock_path) == {"reloaded": True}
        with pytest.raises(ControlError, match="reload failed"):
            await asyncio.to_thread(request_reload, sock_path)
        with pytest.raises(ControlError, match="unknown command 'bogus'"):
            await asyncio.to_thread(request, "bogus", sock_path)
    assert len(calls) == 2
    async with ControlServer(sock_path, sample_snapshot):
        with pytest.raises(ControlError, match="does not take reload"):
            await asyncio.to_thread(request_reload, sock_path)


async def test_close_cancels_a_reload_in_flight_and_waits_for_it(sock_path: Path) -> None:
    """The daemon closes its control socket first on stop: a reload still running must end
    there, not resume after the tunnel and the resolver are gone."""
    started, ended = asyncio.Event(), asyncio.Event()
    outcome: list[str] = []

    async def reload() -> bool:
        started.set()
        try:
            await asyncio.sleep(30)
            outcome.append("finished")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        finally:
            ended.set()
        return True

    server = ControlServer(sock_path, sample_snapshot, reload=reload)
    await server.start()
    reader, writer = await asyncio.open_unix_connection(str(sock_path))
    writer.write(b'{"cmd": "reload"}\n')
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(server.close(), 5)
    assert ended.is_set() and outcome == ["cancelled"]
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


@pytest.mark.parametrize("turns", range(8))
async def test_a_request_accepted_just_before_close_is_not_served_after_it(
    sock_path: Path, turns: int
) -> None:
    """asyncio starts a connection's handler some loop turns after accepting it: whatever
    the turn close() comes in, no reload may begin once close() has returned."""
    closed = False
    began_after_close: list[bool] = []

    async def reload() -> bool:
        began_after_close.append(closed)
        await asyncio.sleep(30)
        return True

    server = ControlServer(sock_path, sample_snapshot, reload=reload)
    await server.start()
    _, writer = await asyncio.open_unix_connection(str(sock_path))
    writer.write(b'{"cmd": "reload"}\n')
    for _ in range(turns):
        await asyncio.sleep(0)
    await asyncio.wait_for(server.close(), 5)
    closed = True
    for _ in range(20):
        await asyncio.sleep(0)
    assert True not in began_after_close
    writer.close()


async def test_bad_requests_and_silent_clients_do_not_stop_the_server(sock_path: Path) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    async with ControlServer(sock_path, sample_snapshot, request_timeout=0.2):
        reader, writer = await asyncio.open_unix_connection(str(sock_path))
        writer.write(b"not json\n")
        assert json.loads(await reader.readline()) == {
            "ok": False,
            "error": "expected one line of JSON",
        }
        writer.close()
        _, silent = await asyncio.open_unix_connection(str(sock_path))
        reader, writer = await asyncio.open_unix_connection(str(sock_path))
        writer.write(b"x" * 10_000)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert (await asyncio.to_thread(query_status, sock_path))["pid"] == 4242
        silent.close()
    async with ControlServer(sock_path, broken):
        with pytest.raises(ControlError, match="internal error: RuntimeError: boom"):
            await asyncio.to_thread(query_status, sock_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="handing the socket to another user needs root")
async def test_owner_uid_hands_socket_and_directory_to_the_user(
    sock_path: Path, in_child: ChildRunner
) -> None:
    nobody = pwd.getpwnam("nobody")
    async with ControlServer(sock_path, sample_snapshot, owner_uid=nobody.pw_uid):
        assert os.stat(sock_path).st_uid == nobody.pw_uid
        assert os.stat(sock_path.parent).st_uid == nobody.pw_uid
    async with ControlServer(sock_path, sample_snapshot):
        assert os.stat(sock_path).st_uid == 0

        def as_nobody() -> None:
            os.setuid(nobody.pw_uid)
            with pytest.raises(PermissionProblem, match="permission denied"):
                query_status(sock_path)

        in_child(as_nobody)


def test_socket_locations(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert socket_candidates(env) == [
        Path("/run/user/1000/blitzdns/control.sock"),
        Path("/run/blitzdns/control.sock"),
    ]
    assert socket_candidates({}) == [Path("/run/blitzdns/control.sock")]
    expected = "/run/blitzdns" if os.geteuid() == 0 else "/run/user/1000/blitzdns"
    assert default_socket_path(env) == Path(expected) / "control.sock"


# --------------------------------------------------------------------------- rendering


def test_render_status_table() -> None:
    text = render_status(sample_snapshot(), now=NOW)
    lines = text.splitlines()
    assert lines[0] == "blitzdns 0.1.0 · pid 4242 · up 2h03m · location campus"
    assert lines[2].startswith("link       up via jsmith@nimbus.dartmouth.edu since ")
    assert lines[2].endswith("(5m00s ago)")
    # An error from before the link came up is old news: not shown while up.
    assert lines[3] == "forwards   2"
    header, mail, dnd = lines[4:7]
    assert header.split() == [
        "NAME",
        "MOUTH",
        "TARGET",
        "OPEN",
        "TOTAL",
        "REJECTED",
        "CUT",
        "BYTES_OUT",
        "BYTES_IN",
    ]
    assert mail.split() == [
        "dasher/mail",
        "127.77.0.3:2151",
        "dasher.dartmouth.edu:2151",
        "1",
        "12",
        "0",
        "4",
        "1.5",
        "KiB",
        "1.0",
        "MiB",
    ]
    assert dnd.split()[1] == "[::1]:902"
    assert mail.index(" 12 ") + 3 == header.index("TOTAL") + len("TOTAL")
    # The tunnel's cut connections, as status --json has them (right-aligned like the rest).
    assert mail.index(" 4 ") + 2 == header.index("CUT") + len("CUT")
    assert "dns        listening on 127.0.0.1:53, [::1]:53" in lines
    assert (
        "answered locally 10   forwarded 20   cache hits 5   SERVFAIL 1   refused 2"
        "   FORMERR 3   dropped 4"
    ) in text
    assert "upstreams  2" in lines
    healthy, failing = lines[-2:]
    assert healthy.split() == ["192.0.2.1:53", "ok", "100", "0", "-"]
    assert failing.split() == ["192.0.2.2:53", "failing", "0", "7", "timed", "out"]


def test_render_status_link_states() -> None:
    snap = sample_snapshot()
    snap["tunnel"]["status"] = "failed"
    snap["tunnel"]["final_error"] = "host key mismatch for nimbus"
    text = render_status(snap, now=NOW)
    assert "link       FAILED since " in text
    assert "final error: host key mismatch for nimbus" in text
    assert "last error" not in text
    snap["tunnel"] = None
    assert "link       none (resolver only)" in render_status(snap, now=NOW)
    bare = render_status({}, now=NOW)
    assert bare.startswith("blitzdns ? · pid ?")
    assert "listening on nothing" in bare


def test_formatters() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1024, 5 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.0 GiB",
    ]
    assert [format_duration(s) for s in (0, 59, 61, 3600, 90061, -5)] == [
        "0s",
        "59s",
        "1m01s",
        "1h00m",
        "1d01h",
        "0s",
    ]


# --------------------------------------------------------------------------- the command


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_status_command_once_and_json(sock_path: Path) -> None:
    with pytest.raises(NotRunning):
        await asyncio.to_thread(status_command, False, False, sock_path, out=io.StringIO())
    async with ControlServer(sock_path, sample_snapshot):
        table, as_json = io.StringIO(), io.StringIO()
        await asyncio.to_thread(status_command, False, False, sock_path, out=table)
        await asyncio.to_thread(status_command, True, False, sock_path, out=as_json)
    assert "dasher/mail" in table.getvalue()
    assert table.getvalue().splitlines()[0].startswith("blitzdns 0.1.0 · pid 4242 · up ")
    assert json.loads(as_json.getvalue()) == sample_snapshot()


async def test_status_watch_refreshes_and_survives_a_restart(
    sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("NO_COLOR", raising=False)
    snap = sample_snapshot()
    server = ControlServer(sock_path, lambda: copy.deepcopy(snap))
    await server.start()
    out = io.StringIO()
    loop = asyncio.get_running_loop()

    def tick(_: float) -> None:
        """Between refreshes: traffic moves, then the daemon goes away."""
        snap["dns"]["forwarded"] += 1
        if snap["dns"]["forwarded"] == 22:
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)

    await asyncio.to_thread(status_command, True, True, sock_path, out=out, rounds=4, sleep=tick)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line.get("dns", {}).get("forwarded") for line in lines] == [20, 21, None, None]
    assert lines[-1] == {"error": "not running"}

    async with ControlServer(sock_path, sample_snapshot):
        screen = Terminal()
        await asyncio.to_thread(
            status_command, False, True, sock_path, out=screen, rounds=2, sleep=lambda _: None
        )
    frames = screen.getvalue().split("\x1b[H\x1b[2J")
    assert frames[0] == "" and len(frames) == 3
    assert all("dasher/mail" in frame for frame in frames[1:])

    # A terminal that cannot take escapes, or a user who asked for none: frames follow.
    for name, value in (("TERM", "dumb"), ("NO_COLOR", "1")):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            async with ControlServer(sock_path, sample_snapshot):
                screen = Terminal()
                await asyncio.to_thread(
                    status_command,
                    False,
                    True,
                    sock_path,
                    out=screen,
                    rounds=2,
                    sleep=lambda _: None,
                )
        assert "\x1b" not in screen.getvalue() and screen.getvalue().count("dasher/mail") == 2


async def test_a_control_socket_in_a_missing_directory_is_refused_not_created(
    tmp_path: Path,
) -> None:
    from blitzdns.control import ControlServer
    from blitzdns.errors import UsageError

    missing = tmp_path / "no" / "such" / "dir" / "c.sock"
    server = ControlServer(missing, dict)
    with pytest.raises(UsageError, match="no such directory"):
        await server.start()
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        ({"schema": 1, "pid": 7, "tunnel": 5}, "not of the shape"),
        ({"schema": 2, "pid": 7}, "status schema 2"),
    ],
)
async def test_a_status_reply_of_another_shape_is_one_line(
    sock_path: Path, reply: dict[str, object], says: str
) -> None:
    """A daemon of another version (or a broken reply): one line and exit 4, no traceback."""
    async with ControlServer(sock_path, lambda: reply):
        with pytest.raises(StatusUnknown, match=says) as caught:
            await asyncio.to_thread(status_command, False, False, sock_path, out=io.StringIO())
    assert caught.value.exit_code == 4


def test_render_status_shows_each_udp_forward() -> None:
    snapshot = sample_snapshot()
    udp = {
        "name": "notifier/notify",
        "proto": "udp",
        "mouth": "127.77.0.12:2154",
        "target_host": "notifier.dartmouth.edu",
        "target_port": 2154,
        "relay": "python3",
        "reason": "",
        "associations": 1,
        "associations_total": 2,
        "datagrams_out": 3,
        "bytes_out": 120,
        "datagrams_in": 2,
        "bytes_in": 90,
        "dropped": {"oversize": 1, "no link": 2},
        "rejected": 0,
    }
    unavailable = {**udp, "name": "other/notify", "relay": "unavailable", "dropped": {}}
    unavailable["reason"] = "python3: python3: command not found; socat: not found"
    snapshot["tunnel"]["udp_forwards"] = [udp, unavailable]
    lines = render_status(snapshot, now=NOW).splitlines()
    start = lines.index("udp        2")
    assert lines[start + 1].split() == [
        "NAME",
        "MOUTH",
        "TARGET",
        "RELAY",
        "ASSOC",
        "SENT",
        "RECEIVED",
        "DROPPED",
    ]
    row = lines[start + 2].split()
    assert row[:5] == [
        "notifier/notify",
        "127.77.0.12:2154",
        "notifier.dartmouth.edu:2154",
        "python3",
        "1",
    ]
    assert row[-1] == "3"
    assert "           notifier/notify: dropped 2 no link, 1 oversize" in lines
    assert any("other/notify: relay unavailable: python3:" in line for line in lines)
