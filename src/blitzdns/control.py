"""The control socket: the daemon's state for ``blitzdns status``, and a reload trigger.

A unix stream socket, owner-only (0600) inside an owner-only (0700) directory:
``$XDG_RUNTIME_DIR/blitzdns/control.sock`` for a daemon running as an ordinary user,
``/run/blitzdns/control.sock`` for one started as root or by systemd
(``RuntimeDirectory=blitzdns``). The client tries the same places in the same order.

The protocol is one request per connection, each side one line of JSON::

    → {"cmd": "status"}
    ← {"ok": true, "result": <Snapshot>}
    → {"cmd": "reload"}
    ← {"ok": true, "result": {...}}   or   {"ok": false, "error": "why"}

The snapshot's shape is :class:`~blitzdns.snapshot.Snapshot`; ``status --json`` prints it as is, so
scripts may rely on those keys. Times are Unix epoch seconds (wall clock), because the
reader is another process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import os
import socket as socketlib
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from blitzdns.argv import OneLineErrors
from blitzdns.errors import AddressInUse, BlitzdnsError, NotRunning, PermissionProblem, UsageError

if TYPE_CHECKING:
    # The status contract loads at the daemon's first status request (Daemon.snapshot),
    # not with the control socket's code at every start; the client reads SCHEMA.
    from blitzdns.snapshot import Snapshot

    SnapshotSource = Callable[[], Snapshot]

log = logging.getLogger("blitzdns.control")

SOCKET_NAME = "control.sock"
SYSTEM_RUNTIME_DIR = Path("/run/blitzdns")
#: A request line longer than this is refused (the real ones are a few bytes).
MAX_REQUEST = 4096
#: A reply longer than this is refused by the client (a snapshot is a few KiB).
MAX_REPLY = 16 * 1024 * 1024


class ControlError(BlitzdnsError):
    """The daemon answered, but with an error (or with something that is not a reply)."""


class StatusUnknown(BlitzdnsError):
    """``status`` could not read the daemon's state (permission, not a blitzdns reply)."""

    exit_code = 4


#: What ``blitzdns status`` exits with, in the manner of ``systemctl is-active`` and LSB
#: init scripts (0 running, 3 not running, 4 unknown); its --help and the README say these.
STATUS_EXIT_CODES = (
    (0, "the daemon runs and is up: its link is up, or it runs without a tunnel"),
    (1, "the daemon runs, but its link is not up (connecting, down or failed)"),
    (2, "a usage mistake (an unknown flag)"),
    (3, "no daemon answers on the control socket"),
    (4, "the status could not be read (permission denied, not a blitzdns reply)"),
)


def status_exit_code(snapshot: Mapping[str, Any]) -> int:
    """0 when everything is up, 1 when the daemon runs but its link is not up."""
    tunnel = snapshot.get("tunnel")
    return 0 if not tunnel or tunnel.get("status") == "up" else 1


# --------------------------------------------------------------------------- where


def socket_candidates(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where a client looks, in order: the user's runtime directory, then the system one."""
    runtime = (os.environ if env is None else env).get("XDG_RUNTIME_DIR", "")
    found = [Path(runtime) / "blitzdns" / SOCKET_NAME] if runtime.startswith("/") else []
    return [*found, SYSTEM_RUNTIME_DIR / SOCKET_NAME]


def default_socket_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the daemon listens: /run/blitzdns as root, else ``$XDG_RUNTIME_DIR/blitzdns``.

    A root daemon ignores ``XDG_RUNTIME_DIR`` (root's own, or one kept by ``sudo -E``):
    the user it drops to looks in /run/blitzdns.
    """
    candidates = socket_candidates(env)
    return candidates[-1] if os.geteuid() == 0 else candidates[0]


# --------------------------------------------------------------------------- server

ReloadHook = Callable[[], Awaitable[Any] | Any]


class ControlServer:
    """Serves ``status`` (and ``reload`` when given a hook) on a unix socket.

    ``owner_uid``: the user the daemon is about to become; the socket and its directory
    are handed to that user so that its ``blitzdns status`` can connect and the daemon,
    once switched, can remove the socket at exit.
    """

    def __init__(
        self,
        path: Path,
        snapshot: SnapshotSource,
        *,
        reload: ReloadHook | None = None,
        owner_uid: int | None = None,
        request_timeout: float = 5.0,
    ):
        self.path = Path(path)
        self.snapshot = snapshot
        self.reload = reload
        self.owner_uid = owner_uid
        self.request_timeout = request_timeout
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        #: Requests being served: close() cancels them, so a reload in flight cannot go on
        #: once the daemon tears down what it would change.
        self._requests: set[asyncio.Task[Any]] = set()
        #: Set as close() begins: a connection accepted earlier whose handler has not run
        #: yet (asyncio starts it some loop turns later) is closed unserved.
        self._closing = False

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Create the directory and the socket; replace a dead daemon's, refuse a live one's."""
        self._closing = False
        self._prepare_directory()
        self._clear_stale_socket()
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
            os.chmod(self.path, 0o600)
            if self.owner_uid is not None:
                os.chown(self.path, self.owner_uid, -1)
            self._inode = os.stat(self.path).st_ino
        except PermissionError:
            await self.close()
            raise PermissionProblem(
                f"cannot create the control socket {self.path} (permission denied): "
                "run as root or pass --control-socket PATH in a directory you own"
            ) from None
        except OSError as exc:
            await self.close()
            raise AddressInUse(f"cannot create the control socket {self.path}: {exc}") from None
        log.debug("control socket on %s", self.path)

    def _prepare_directory(self) -> None:
        directory = self.path.parent
        ours = {p.parent for p in socket_candidates()}
        if directory not in ours and not directory.parent.is_dir():
            # A --control-socket path: its own directory may be made (mode 0700), but a
            # chain of missing ones is a typo, not something to invent (mkdir -p as root).
            raise UsageError(f"--control-socket {self.path}: no such directory {directory.parent}")
        created = False
        try:
            directory.mkdir(mode=0o700, parents=True)
            created = True
        except FileExistsError:
            pass
        except PermissionError:
            raise PermissionProblem(
                f"cannot create {directory} (permission denied): run as root, "
                "set XDG_RUNTIME_DIR, or pass --control-socket PATH"
            ) from None
        if not (created or directory in ours):
            return
        with contextlib.suppress(PermissionError):
            os.chmod(directory, 0o700)
            if self.owner_uid is not None:
                os.chown(directory, self.owner_uid, -1)

    def _clear_stale_socket(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        except NotADirectoryError:
            raise UsageError(
                f"--control-socket {self.path}: {self.path.parent} is not a directory"
            ) from None
        if not stat.S_ISSOCK(mode):
            raise AddressInUse(
                f"{self.path} exists and is not a socket: remove it or choose another "
                "--control-socket"
            )
        with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.path))
            except (ConnectionRefusedError, FileNotFoundError):
                pass
            except PermissionError:
                raise PermissionProblem(
                    f"cannot check the control socket {self.path} (permission denied)"
                ) from None
            except OSError as exc:
                log.debug("probe of %s failed (%s); treating it as stale", self.path, exc)
            else:
                raise AddressInUse(
                    f"another blitzdns daemon already answers on {self.path}; "
                    "stop it first (blitzdns status shows its pid)"
                )
        log.info("replacing the stale control socket %s", self.path)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def close(self) -> None:
        """Stop listening, end open requests (cancelled, and waited for), and remove the
        socket if it is still ours."""
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        requests = [task for task in self._requests if task is not asyncio.current_task()]
        for task in requests:
            task.cancel()
        await asyncio.gather(*requests, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        if self._inode is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:
                    self.path.unlink()
            self._inode = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._requests.add(task)
        # asyncio.timeout, not wait_for: on 3.11, wait_for drops a cancel that arrives as
        # the line does, and close() would then wait for the whole reload.
        try:
            try:
                async with asyncio.timeout(self.request_timeout):
                    line = await reader.readline()
            except (TimeoutError, ValueError, ConnectionError):
                return
            reply = await self.answer(line)
            import json  # noqa: PLC0415  (see answer)

            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            async with asyncio.timeout(self.request_timeout):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._requests.discard(task)
            writer.close()

    async def answer(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line; never raises."""
        # json loads at the first request (~1.3 ms of the start otherwise, and most daemons
        # are never asked); before a privilege drop by blitzdns.daemon.preload_modules.
        import json  # noqa: PLC0415

        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return _error("expected one line of JSON")
        command = request.get("cmd") if isinstance(request, dict) else None
        try:
            if command == "status":
                return {"ok": True, "result": dict(self.snapshot())}
            if command == "reload":
                if self.reload is None:
                    return _error("this daemon does not take reload requests")
                outcome = self.reload()
                if inspect.isawaitable(outcome):
                    outcome = await outcome
                if outcome is False:
                    return _error("reload failed; the running configuration is kept (see its log)")
                result = outcome if isinstance(outcome, dict) else {"reloaded": True}
                return {"ok": True, "result": result}
        except BlitzdnsError as exc:
            return _error(str(exc))
        except Exception as exc:
            log.exception("control request %r failed", command)
            return _error(f"internal error: {type(exc).__name__}: {exc}")
        return _error(f"unknown command {command!r} (known: status, reload)")


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


# --------------------------------------------------------------------------- client


def request(command: str, path: Path | None = None, *, timeout: float = 2.0) -> dict[str, Any]:
    """Send ``{"cmd": command}`` to the daemon and return its ``result``.

    With ``path`` None the :func:`socket_candidates` are tried in order. Raises
    :class:`~blitzdns.errors.NotRunning` when nothing answers,
    :class:`~blitzdns.errors.PermissionProblem` when the socket belongs to another user,
    :class:`ControlError` when the daemon answers with an error.
    """
    paths = [path] if path is not None else socket_candidates()
    for candidate in paths:
        try:
            reply = _exchange(candidate, command, timeout)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            continue
        except PermissionError:
            raise PermissionProblem(
                f"cannot open the control socket {candidate} (permission denied): the "
                "daemon runs as another user; try `sudo blitzdns status`"
            ) from None
        except TimeoutError:
            raise NotRunning(
                f"the daemon on {candidate} did not answer within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise NotRunning(f"cannot reach the daemon on {candidate}: {exc}") from None
        if not isinstance(reply, dict) or "ok" not in reply:
            raise ControlError(f"{candidate} answered something that is not a blitzdns reply")
        if not reply["ok"]:
            raise ControlError(str(reply.get("error", "the daemon refused the request")))
        result = reply.get("result")
        return result if isinstance(result, dict) else {}
    where = " or ".join(str(p) for p in paths)
    raise NotRunning(
        f"no daemon is running (nothing answers on {where}); start it with `blitzdns run`"
    )


def _exchange(path: Path, command: str, timeout: float) -> Any:
    import json  # noqa: PLC0415  (the daemon's own modules load without it: see answer)

    deadline = time.monotonic() + timeout
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps({"cmd": command}).encode() + b"\n")
        received = bytearray()
        while not received.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            if len(received) > MAX_REPLY:
                raise ControlError(f"{path} sent a reply larger than {MAX_REPLY} bytes")
    try:
        return json.loads(received)
    except ValueError:
        raise ControlError(f"{path} answered something that is not JSON") from None


def query_status(path: Path | None = None, timeout: float = 2.0) -> dict[str, Any]:
    """The running daemon's :class:`Snapshot`; NotRunning (exit 3) when none answers."""
    return request("status", path, timeout=timeout)


def request_reload(path: Path | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """Ask the running daemon to re-read its configuration (like SIGHUP, with an answer)."""
    return request("reload", path, timeout=timeout)


# --------------------------------------------------------------------------- rendering


def render_status(snapshot: Mapping[str, Any], now: float | None = None) -> str:
    """The snapshot as the table ``blitzdns status`` prints; tolerant of missing keys."""
    now = time.time() if now is None else now
    started = snapshot.get("started")
    head = [f"blitzdns {snapshot.get('version', '?')}", f"pid {snapshot.get('pid', '?')}"]
    if isinstance(started, int | float):
        head.append(f"up {format_duration(now - started)}")
    if snapshot.get("location"):
        head.append(f"location {snapshot['location']}")
    lines = [" · ".join(head), ""]
    lines += _render_tunnel(snapshot.get("tunnel"), now)
    lines += _render_dns(snapshot.get("dns") or {})
    lines += render_guard(snapshot.get("guard"), now)
    return "\n".join(lines)


def render_guard(guard: Mapping[str, Any] | None, now: float) -> list[str]:
    """The guard and resolver-watch lines of ``status`` (nothing when neither runs)."""
    if not guard:
        return []
    lines = [""]
    if guard.get("enabled"):
        state = "installed" if guard.get("installed") else "NOT installed"
        line = f"guard      {state} ({guard.get('target')}), {guard.get('addresses', 0)} addresses"
        refreshed = guard.get("refreshed")
        if isinstance(refreshed, int | float):
            line += (
                f", refreshed {format_clock(refreshed)} ({format_duration(now - refreshed)} ago)"
            )
        lines.append(line)
        if guard.get("unresolved"):
            lines.append(f"           no address yet for: {', '.join(guard['unresolved'])}")
        if guard.get("last_error"):
            lines.append(f"           last error: {guard['last_error']}")
    else:
        lines.append("guard      off ([guard] enabled = false)")
    watch = guard.get("watch") or {}
    if watch.get("files"):
        line = f"watch      {', '.join(watch['files'])} every {watch.get('interval_s', '?')} s"
        reverted = watch.get("reverted", 0)
        last = watch.get("last")
        if reverted and isinstance(last, int | float):
            line += (
                f"; reverted {reverted} times, last {time.strftime('%H:%M', time.localtime(last))}"
                f" by {watch.get('last_change')}"
            )
        else:
            line += "; never reverted"
        lines.append(line)
        if watch.get("last_error"):
            lines.append(f"           not put back: {watch['last_error']}")
    return lines


def _render_tunnel(tunnel: Mapping[str, Any] | None, now: float) -> list[str]:
    if not tunnel:
        return ["link       none (resolver only)", ""]
    lines = link_lines(tunnel, now)
    if tunnel.get("last_relink"):
        lines.append(f"           last relink: {tunnel['last_relink']}")
    forwards = tunnel.get("forwards") or []
    lines.append(f"forwards   {len(forwards)}")
    rows = [
        [
            str(f.get("name", "")),
            format_endpoint(f.get("mouth_host", "?"), f.get("mouth_port", "?")),
            format_endpoint(f.get("target_host", "?"), f.get("target_port", "?")),
            str(f.get("open", 0)),
            str(f.get("total", 0)),
            str(f.get("rejected", 0)),
            str(f.get("cut", 0)),
            format_bytes(f.get("bytes_out", 0)),
            format_bytes(f.get("bytes_in", 0)),
        ]
        for f in forwards
    ]
    if rows:
        # The names of status --json's keys (bytes_out: client → target; cut: ended by the
        # tunnel, not by the client or the target).
        headers = [
            *("NAME", "MOUTH", "TARGET", "OPEN", "TOTAL", "REJECTED", "CUT"),
            *("BYTES_OUT", "BYTES_IN"),
        ]
        lines += format_table(headers, rows, numeric=range(3, 9))
    lines += _render_udp(tunnel.get("udp_forwards") or [])
    return [*lines, ""]


def link_lines(tunnel: Mapping[str, Any], now: float) -> list[str]:
    """The link's state; while it is not up: down since the first failure (a retry does
    not restart it), the attempts since it was up, when the next one is due, and the last
    error once."""
    status = str(tunnel.get("status", "unknown"))
    gateway = tunnel.get("gateway")
    down_since = tunnel.get("down_since")
    since = tunnel.get("since")
    if status == "up":
        link = f"link       up via {gateway}"
    elif status == "failed":
        link, since = "link       FAILED", down_since or since
    elif status in ("down", "connecting") and down_since:
        link, since = "link       down", down_since
    else:
        link = f"link       {status}"
    if isinstance(since, int | float):
        link += f" since {format_clock(since)} ({format_duration(now - since)} ago)"
    if status == "connecting":
        link += f"; connecting to {gateway}" if gateway else "; connecting"
    lines = [link]
    attempts = tunnel.get("attempts_since_up")
    if status != "up" and isinstance(attempts, int) and attempts:
        retry = f"           attempts {attempts}"
        next_retry = tunnel.get("next_retry")
        if status == "connecting":
            retry += " (one under way)"
        elif isinstance(next_retry, int | float):
            retry += f", next in {format_duration(next_retry - now)} ({format_clock(next_retry)})"
        lines.append(retry)
    if tunnel.get("final_error"):
        lines.append(f"           final error: {tunnel['final_error']}")
    elif tunnel.get("last_error") and status != "up":
        lines.append(f"           last error: {tunnel['last_error']}")
    return lines


def _render_udp(forwards: list[Mapping[str, Any]]) -> list[str]:
    """UDP forwards: relay state, associations, datagrams/bytes each way, drops."""
    if not forwards:
        return []
    lines = [f"udp        {len(forwards)}"]
    rows = []
    for f in forwards:
        dropped = f.get("dropped") or {}
        rows.append(
            [
                str(f.get("name", "")),
                str(f.get("mouth", "?")),
                format_endpoint(f.get("target_host", "?"), f.get("target_port", "?")),
                str(f.get("relay", "?")),
                str(f.get("associations", 0)),
                f"{f.get('datagrams_out', 0)} / {format_bytes(f.get('bytes_out', 0))}",
                f"{f.get('datagrams_in', 0)} / {format_bytes(f.get('bytes_in', 0))}",
                str(sum(dropped.values())),
            ]
        )
    headers = ["NAME", "MOUTH", "TARGET", "RELAY", "ASSOC", "SENT", "RECEIVED", "DROPPED"]
    lines += format_table(headers, rows, numeric=range(4, 8))
    for f in forwards:
        dropped = f.get("dropped") or {}
        why = ", ".join(f"{count} {reason}" for reason, count in sorted(dropped.items()))
        if f.get("reason"):
            lines.append(f"           {f.get('name', '')}: relay {f.get('relay')}: {f['reason']}")
        if why:
            lines.append(f"           {f.get('name', '')}: dropped {why}")
    return lines


_DNS_COUNTERS = (
    ("answered_local", "answered locally"),
    ("forwarded", "forwarded"),
    ("cache_hits", "cache hits"),
    ("servfail", "SERVFAIL"),
    ("refused", "refused"),
    ("formerr", "FORMERR"),
    ("dropped", "dropped"),
)


def _render_dns(dns: Mapping[str, Any]) -> list[str]:
    listen = ", ".join(str(e) for e in dns.get("listen") or []) or "nothing"
    lines = [f"dns        listening on {listen}"]
    lines.append(
        "           " + "   ".join(f"{label} {dns.get(key, 0)}" for key, label in _DNS_COUNTERS)
    )
    upstreams = dns.get("upstreams") or []
    lines.append(f"upstreams  {len(upstreams)}")
    rows = [
        [
            str(u.get("address", "?")),
            _health(u.get("ok")),
            str(u.get("answered", 0)),
            str(u.get("timeouts", 0)),
            str(u.get("last_error") or "-"),
        ]
        for u in upstreams
    ]
    if rows:
        headers = ["ADDRESS", "HEALTH", "ANSWERED", "TIMEOUTS", "LAST ERROR"]
        lines += format_table(headers, rows, numeric=range(2, 4))
    return lines


def _health(ok: object) -> str:
    if ok is None:
        return "unknown"
    return "ok" if ok else "failing"


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()
) -> list[str]:
    """Columns padded to their widest cell, numbers right-aligned, indented by two."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return ("  " + "  ".join(padded)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def format_endpoint(host: object, port: object) -> str:
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def format_bytes(count: object) -> str:
    """1023 B, 1.5 KiB, 12.0 MiB… (binary units, one decimal)."""
    value = float(count) if isinstance(count, int | float) else 0.0
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """42s, 5m07s, 3h02m, 4d05h: two units at most."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


# --------------------------------------------------------------------------- the command

_CLEAR = "\x1b[H\x1b[2J"
WATCH_INTERVAL_S = 1.0


def status_parser() -> argparse.ArgumentParser:
    """``blitzdns status``'s flags: the one definition (the typer app only points here)."""
    parser = OneLineErrors(
        prog="blitzdns status",
        description="Show the running daemon's link, forwards and DNS counters.",
        add_help=False,
        sections=[
            (
                "Exit status (as `systemctl is-active` gives it)",
                [(str(code), meaning) for code, meaning in STATUS_EXIT_CODES],
            )
        ],
    )
    add = parser.add_argument
    add("--json", dest="as_json", action="store_true", help="Machine-readable output.")
    add("--watch", action="store_true", help="Refresh every second.")
    add("--control-socket", type=Path, metavar="PATH", help="Path of the daemon's status socket.")
    add("-h", "--help", action="help", help="Show this message and exit.")
    return parser


def status_main(argv: Sequence[str]) -> int:
    """``blitzdns status ARGS``, reached from the entry point without typer; the exit status."""
    args = status_parser().parse_args(argv)
    return status_command(args.as_json, args.watch, args.control_socket)


def status_command(
    json_out: bool,
    watch: bool,
    socket: Path | None,
    *,
    out: TextIO | None = None,
    rounds: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """``blitzdns status [--json] [--watch]``.

    Once: the table (or the snapshot as JSON). ``--watch``: refresh every second until
    Ctrl-C, in place on a terminal; with ``--json`` one compact JSON line per refresh.
    NotRunning (exit 3) when no daemon answers at first; during a watch a vanished daemon
    is shown and waited for. ``rounds`` bounds the watch (tests). Returns the exit status
    (:data:`STATUS_EXIT_CODES`) of the last snapshot shown.
    """
    import json  # noqa: PLC0415  (see _exchange)

    stream = sys.stdout if out is None else out
    try:
        snapshot: Mapping[str, Any] | None = query_status(socket)
    except (PermissionProblem, ControlError) as exc:
        raise StatusUnknown(str(exc)) from None
    assert snapshot is not None
    if not watch:
        stream.write(
            json.dumps(snapshot, indent=2) + "\n" if json_out else _readable(snapshot) + "\n"
        )
        return status_exit_code(snapshot)
    # Redrawn in place only on a terminal that can take it (not TERM=dumb, not NO_COLOR).
    in_place = stream.isatty() and not json_out and plain_terminal_ok()
    done = 0
    try:
        while True:
            if json_out:
                stream.write(json.dumps(snapshot, separators=(",", ":")) + "\n")
            else:
                text = _readable(snapshot) if snapshot is not None else _waiting(socket)
                stream.write(
                    (_CLEAR if in_place else "") + text + "\n" + ("" if in_place else "\n")
                )
            stream.flush()
            done += 1
            if rounds is not None and done >= rounds:
                return (
                    3 if snapshot is None or "pid" not in snapshot else status_exit_code(snapshot)
                )
            sleep(WATCH_INTERVAL_S)
            try:
                snapshot = query_status(socket)
            except NotRunning:
                snapshot = None
                if json_out:
                    snapshot = {"error": "not running"}
    except KeyboardInterrupt:
        stream.write("\n")
        return 130  # ended by Ctrl-C, as a shell reports SIGINT


def _readable(snapshot: Mapping[str, Any]) -> str:
    """The status table, or :class:`StatusUnknown` (one line, exit 4) when the reply is not
    of the shape this blitzdns reads: another ``schema`` (a daemon of another version still
    running after an upgrade) or a reply the renderer cannot walk."""
    from blitzdns.snapshot import SCHEMA  # noqa: PLC0415  (the client side only)

    schema = snapshot.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise StatusUnknown(
            f"the daemon answers with status schema {schema!r}, this blitzdns reads schema "
            f"{SCHEMA}: restart the daemon so both are the same version (`status --json` "
            "shows the raw reply)"
        )
    try:
        return render_status(snapshot)
    except (AttributeError, TypeError, KeyError, ValueError) as exc:
        raise StatusUnknown(
            f"the daemon's status reply is not of the shape this blitzdns reads ({exc}); "
            "restart the daemon so both are the same version (`status --json` shows it)"
        ) from None


def plain_terminal_ok() -> bool:
    """Whether escape sequences may be written to the terminal: not with ``TERM=dumb``
    (or no TERM), nor when ``NO_COLOR`` is set (https://no-color.org)."""
    term = os.environ.get("TERM", "")
    return bool(term) and term != "dumb" and not os.environ.get("NO_COLOR")


def _waiting(socket: Path | None) -> str:
    where = str(socket) if socket else " or ".join(str(p) for p in socket_candidates())
    return f"no daemon is running (nothing answers on {where}); waiting for it…"
