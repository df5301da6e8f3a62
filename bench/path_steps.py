#!/usr/bin/env python3
"""Where each forwarder's time goes on the emulated path: every hop of a round trip,
read from a packet capture on loopback.

The lab of ``tunnel_bench.py`` (sshd, an echo server, the delay relay in front of sshd),
the forwarders running at once and taking turns in interleaved batches (each connect
``PATH_GAP_RTTS`` path round trips after the last close, as the bench row), ``tcpdump``
on ``lo`` meanwhile. Each round trip is then cut into its hops, the median of each hop
printed per forwarder, ``ssh -L`` first:

* ``syn→line``: the client's SYN to its line reaching the mouth (the client's own);
* ``syn→OPEN``: the SYN to the forwarder's CHANNEL_OPEN leaving for the relay (ours);
* ``OPEN→sshd``, ``conf→fwd``, ``data→sshd``, ``echo→fwd``: the relay's hold (5 ms);
* ``sshd open``: the OPEN reaching sshd to its confirmation (sshd's connect to the target);
* ``conf→data``: the confirmation reaching the forwarder to its data leaving (ours);
* ``sshd echo``: the data reaching sshd to the echo leaving it (sshd and the echo server);
* ``echo→client``: the echo reaching the forwarder to its write to the client (ours);
* ``total``: the SYN to the echo written to the client.

``--base TREE``: also run the tunnel kinds from another checkout's ``bench/tunnel_bench.py``
(its ``src``), as ``tunnel@base``, for an A/B in the same run.

Usage (root, under the bench lock): ``python bench/path_steps.py [--round-trips 100]``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from tests.peers import free_port  # noqa: E402

import tunnel_bench as tb  # noqa: E402

LINE = re.compile(
    r"^(\d+\.\d+) IP 127\.0\.0\.1\.(\d+) > 127\.0\.0\.1\.(\d+): Flags \[([^\]]*)\].*length (\d+)"
)
HOPS = (
    "syn→line",
    "syn→OPEN",
    "OPEN→sshd",
    "sshd open",
    "conf→fwd",
    "conf→data",
    "data→sshd",
    "sshd echo",
    "echo→fwd",
    "echo→client",
    "total",
)
OURS = ("syn→OPEN", "conf→data", "echo→client")


@contextlib.contextmanager
def forwarder(kind: str, lab_: tb.Lab, cipher: str, base: Path | None) -> Iterator[tuple[int, int]]:
    """One forwarder up (``kind@base``: from the ``base`` tree); yields its echo mouth and
    its process id."""
    mouths = (free_port(), free_port())
    name, _, tree = kind.partition("@")
    script = tb.__file__
    if tree:
        assert base is not None
        tb.__file__ = str(base / "bench" / "tunnel_bench.py")
    try:
        proc = tb.start_forwarder(name, lab_, cipher, mouths)
    finally:
        tb.__file__ = script
    try:
        tb.round_trips(mouths[1], 20, 10)
        yield mouths[1], proc.pid
    finally:
        tb.stop(proc)


TRACING = Path("/sys/kernel/tracing/instances/path_steps")
EVENTS = (
    "sched/sched_waking",
    "sched/sched_switch",
    "syscalls/sys_exit_epoll_wait",
    "syscalls/sys_exit_epoll_pwait",
    "syscalls/sys_exit_poll",
    "syscalls/sys_exit_ppoll",
    "syscalls/sys_enter_writev",
    "syscalls/sys_enter_write",
    "syscalls/sys_enter_sendto",
    "syscalls/sys_enter_sendmsg",
    "syscalls/sys_enter_accept4",
    "syscalls/sys_enter_accept",
)
EVENT = re.compile(r"^\s*(\S+)-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): (\w+):? ?(.*)$")
WRITES = ("sys_writev", "sys_write", "sys_sendto", "sys_sendmsg")
STEP_NAMES = ("accept→OPEN", "conf→data", "echo→client")


def wakes(trace: str, pid: int) -> dict[str, list[tuple[float, float, float]]]:
    """From an ftrace of ``pid``: for each of its three steps of a round trip (the wake
    with an accept and its first write, the OPEN; the next wake whose first write goes to
    that socket, the data; the next whose first write goes elsewhere, the echo to the
    client), in microseconds: woken → on a CPU, on a CPU → its poll returned, poll
    returned → the step's first write entered."""
    me = str(pid)
    found: dict[str, list[tuple[float, float, float]]] = {name: [] for name in STEP_NAMES}
    wake: dict[str, float] = {}
    accepted = False
    ssh_fd = None
    step = 3
    for text in trace.splitlines():
        match = EVENT.match(text)
        if match is None:
            continue
        _comm, task, when, event, rest = match.groups()
        now = float(when) * 1e6
        if event == "sched_waking":
            if f"pid={me} " in rest + " ":
                wake, accepted = {"waking": now}, False
            continue
        if event == "sched_switch":
            if f"next_pid={me} " in rest + " " and "waking" in wake and "run" not in wake:
                wake["run"] = now
            continue
        if task != me or "run" not in wake or "done" in wake:
            continue
        if "poll" in event:
            wake.setdefault("polled", now)
        elif event.startswith("sys_accept"):
            accepted = True
        elif event in WRITES and "polled" in wake:
            fd = rest.partition(",")[0]
            wake["done"] = now
            if accepted:
                name, ssh_fd, step = STEP_NAMES[0], fd, 1
            elif step == 1 and fd == ssh_fd:
                name, step = STEP_NAMES[1], 2
            elif step == 2 and fd != ssh_fd:
                name, step = STEP_NAMES[2], 3
            else:
                continue
            found[name].append(
                (wake["run"] - wake["waking"], wake["polled"] - wake["run"], now - wake["polled"])
            )
    return found


@contextlib.contextmanager
def ftraced(pids: list[int]) -> Iterator[None]:
    """ftrace (an instance of its own) of the scheduler and the wake/write system calls of
    ``pids`` and their threads, copied to /tmp/path_steps.trace at the end."""
    TRACING.mkdir(exist_ok=True)
    try:
        tids = [t.name for pid in pids for t in Path(f"/proc/{pid}/task").iterdir()]
        (TRACING / "set_event_pid").write_text(" ".join(tids))
        (TRACING / "buffer_size_kb").write_text("16384")
        for event in EVENTS:
            with contextlib.suppress(OSError):
                (TRACING / "events" / event / "enable").write_text("1")
        (TRACING / "trace_clock").write_text("mono")
        (TRACING / "tracing_on").write_text("1")
        yield
        (TRACING / "tracing_on").write_text("0")
        Path("/tmp/path_steps.trace").write_text((TRACING / "trace").read_text())
    finally:
        (TRACING / "tracing_on").write_text("0")
        for event in EVENTS:
            with contextlib.suppress(OSError):
                (TRACING / "events" / event / "enable").write_text("0")
        with contextlib.suppress(OSError):  # a marker writer still has it open
            TRACING.rmdir()


def packets(pcap: Path) -> list[tuple[float, int, int, str, int]]:
    """(time, source port, destination port, flags, payload length) of each packet."""
    out = subprocess.run(
        ["tcpdump", "-r", str(pcap), "-tt", "-nn"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = []
    for text in out.splitlines():
        match = LINE.match(text)
        if match:
            when, src, dst, flags, length = match.groups()
            found.append((float(when), int(src), int(dst), flags, int(length)))
    return found


MATCHES: tuple[tuple[str, str | None, str | None], ...] = (
    # (mark, sender, receiver) in the order of a round trip, by the port that tells them
    # (None: any); the forwarder's SSH connection is the one to the relay's port, sshd's
    # the one from the relay to sshd's port
    ("line", "client", "mouth"),
    ("open", None, "relay"),
    ("open_sshd", None, "sshd"),
    ("conf_sshd", "sshd", None),
    ("conf", "relay", None),
    ("data", None, "relay"),
    ("data_sshd", None, "sshd"),
    ("echo_sshd", "sshd", None),
    ("echo", "relay", None),
    ("out", "mouth", "client"),
)


def hops(
    pkts: list[tuple[float, int, int, str, int]], mouth: int, relay: int, sshd: int
) -> list[dict[str, float]]:
    """Each round trip on ``mouth`` cut into :data:`HOPS` (ms): from its SYN on, the first
    packet with data of each kind in :data:`MATCHES`, each after the one before (the
    client's line only after the SYN). Round trips follow one another with a gap, so the
    packets between are this one's."""
    found = []
    for index, (t_syn, client, dst, flags, _) in enumerate(pkts):
        if dst != mouth or flags != "S":
            continue
        ports = {"client": client, "mouth": mouth, "relay": relay, "sshd": sshd}
        marks = {"syn": t_syn}
        start = t_syn
        for mark, sender, receiver in MATCHES:
            since = t_syn if mark == "line" else start
            for when, src, dst_port, _flags, length in pkts[index:]:
                if (
                    when >= since
                    and length
                    and (sender is None or src == ports[sender])
                    and (receiver is None or dst_port == ports[receiver])
                ):
                    break
            else:
                break
            marks[mark] = when
            if mark != "line":
                start = when
        else:
            ms = {k: v * 1000 for k, v in marks.items()}
            found.append(
                {
                    "syn→line": ms["line"] - ms["syn"],
                    "syn→OPEN": ms["open"] - ms["syn"],
                    "OPEN→sshd": ms["open_sshd"] - ms["open"],
                    "sshd open": ms["conf_sshd"] - ms["open_sshd"],
                    "conf→fwd": ms["conf"] - ms["conf_sshd"],
                    "conf→data": ms["data"] - ms["conf"],
                    "data→sshd": ms["data_sshd"] - ms["data"],
                    "sshd echo": ms["echo_sshd"] - ms["data_sshd"],
                    "echo→fwd": ms["echo"] - ms["echo_sshd"],
                    "echo→client": ms["out"] - ms["echo"],
                    "total": ms["out"] - ms["syn"],
                }
            )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=100, help="per forwarder")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--path-ms", type=float, default=10)
    parser.add_argument("--kinds", nargs="*", default=["openssh", "tunnel", "tunnel+uvloop"])
    parser.add_argument("--base", type=Path, help="another checkout, for tunnel@base kinds")
    parser.add_argument("--ftrace", nargs="*", default=[], help="kinds to trace (sched, syscalls)")
    parser.add_argument("--strace", help="a kind to trace (strace -tt -T) during its turns")
    args = parser.parse_args()
    count = min(max(args.round_trips, 10), 1000)
    gap_s = tb.PATH_GAP_RTTS * args.path_ms / 1000
    cipher = tb.CIPHERS[0]
    with tb.lab() as plain, tb.emulated_path(plain, args.path_ms / 2) as slow:
        mouths: dict[str, int] = {}
        pids: dict[str, int] = {}
        client: dict[str, list[float]] = {kind: [] for kind in args.kinds}
        with contextlib.ExitStack() as stack:
            for kind in args.kinds:
                mouths[kind], pids[kind] = stack.enter_context(
                    forwarder(kind, slow, cipher, args.base)
                )
            if args.ftrace:
                stack.enter_context(ftraced([pids[k] for k in args.ftrace]))
            if args.strace:
                tracer = subprocess.Popen(
                    [
                        "strace",
                        "-f",
                        "-tt",
                        "-T",
                        "-o",
                        "/tmp/path_steps.strace",
                        "-p",
                        str(pids[args.strace]),
                    ]
                )
                stack.callback(tracer.wait, 10)
                stack.callback(tracer.terminate)
                time.sleep(1)
            with tempfile.TemporaryDirectory(prefix="path-steps-") as tmp:
                pcap = Path(tmp) / "path.pcap"
                ports = [slow.sshd_port, plain.sshd_port, *mouths.values()]
                capture_filter = " or ".join(f"tcp port {p}" for p in ports)
                capture = subprocess.Popen(
                    [
                        "tcpdump",
                        "-i",
                        "lo",
                        "-s",
                        "96",
                        "-B",
                        "16384",
                        "-U",
                        "-w",
                        str(pcap),
                        capture_filter,
                    ],
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1)
                try:
                    batches = max(1, count // args.batch)
                    for batch in range(batches):
                        shift = batch % len(args.kinds)
                        for kind in args.kinds[shift:] + args.kinds[:shift]:
                            client[kind] += tb.round_trips(mouths[kind], args.batch, 120, gap_s)
                    time.sleep(0.5)
                finally:
                    capture.terminate()
                    capture.wait(10)
                pkts = packets(pcap)
    print(
        f"path steps: {args.path_ms:g} ms path, {cipher}, median ms per hop "
        f"({count} round trips each, interleaved batches of {args.batch})"
    )
    table = {
        kind: hops(pkts, mouth, slow.sshd_port, plain.sshd_port) for kind, mouth in mouths.items()
    }
    print(f"  {'hop':<12}" + "".join(f"{kind:>16}" for kind in table))
    for hop in HOPS:
        row = [
            statistics.median(r[hop] for r in rows) if rows else float("nan")
            for rows in table.values()
        ]
        mark = " *" if hop in OURS else ""
        print(f"  {hop + mark:<12}" + "".join(f"{v:>16.3f}" for v in row))
    print(f"  {'n':<12}" + "".join(f"{len(rows):>16}" for rows in table.values()))
    print(
        f"  {'client p50':<12}"
        + "".join(f"{statistics.median(client[kind]):>16.3f}" for kind in table)
        + "   (the bench's figure: connect → echo read)"
    )
    if args.ftrace:
        trace = Path("/tmp/path_steps.trace").read_text()
        print("\nper wake (ftrace), median us: woken→running, running→poll returned, →write")
        for kind in args.ftrace:
            for name, rows in wakes(trace, pids[kind]).items():
                if rows:
                    parts = [statistics.median(r[i] for r in rows) for i in range(3)]
                    print(
                        f"  {kind:<16} {name:<12} {parts[0]:7.0f} {parts[1]:7.0f} {parts[2]:7.0f}"
                        f"   total {sum(parts):5.0f}  (n {len(rows)})"
                    )


if __name__ == "__main__":
    main()
