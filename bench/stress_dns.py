"""Stress the resolver: hostile upstreams, and a flood of forwarded names.

    .venv/bin/python bench/stress_dns.py [--queries 10] [--flood-seconds 10] [--no-peer]

1. The upstream-fault table. For each fault a hand-written upstream on 127.0.0.1 does the
   wrong thing — down (nothing listens), black hole, slow (answers after half the
   resolver's timeout), garbage, wrong ID, spoofed source port, another question, TC set
   with no TCP listener, a CNAME chain to a protected name with its real address — and
   ``--queries`` distinct names are asked through the resolver. Per fault: the RCODEs,
   p50 and max time, and bad replies accepted (an answer carrying the upstream's forged
   address 192.0.2.66): must be 0.
2. The flood. The upstream is a black hole; a separate process sends distinct forwarded
   names as fast as it can for ``--flood-seconds`` while this one asks a protected name
   every 10 ms. Printed: the flood's packet rate, the share of protected queries
   answered within 100 ms (and within 1 s), the resolver's peak descriptors and RSS, its
   RSS at idle before and after, and the load average. The same flood runs, interleaved,
   against blitzdns without its UDP steering (``--no-steer``: the control, one socket;
   ``--no-control`` skips it) and dnsmasq configured alike (``--no-peer`` skips it), for
   ``--rounds`` rounds; the table shows medians, and each round's 100 ms figure.

Everything listens on 127.0.0.1 and every loop is bounded. The last line is
``RESULT {json}``; exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dnsabuse import (
    PROTECTED_ADDRESS,
    PROTECTED_NAME,
    answered,
    descriptors,
    dnsmasq_binary,
    dnsmasq_command,
    free_port,
    rss_kib,
    start_stub,
)
from figures import Figure, emit

FORGED = "192.0.2.66"
#: The resolver's ``dns.timeout_s`` for the run (``--timeout``).
SETTINGS = {"timeout_s": 2.0}


def reply_to(
    query: bytes,
    *,
    rid: bytes | None = None,
    flags: int = 0x8180,
    name: bytes | None = None,
    answers: bytes = b"",
    ancount: int = 0,
) -> bytes:
    """A reply echoing ``query``'s question (or ``name``), with ``answers`` appended."""
    qend = query.index(b"\x00", 12) + 5
    question = (name + query[qend - 4 : qend]) if name is not None else query[12:qend]
    head = (rid or query[:2]) + struct.pack(">HHHHH", flags, 1, ancount, 0, 0)
    return head + question + answers


def a_record(address: str, owner: bytes = b"\xc0\x0c") -> bytes:
    return owner + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(address)


def forged_answer(query: bytes) -> bytes:
    return reply_to(query, answers=a_record(FORGED), ancount=1)


def name_wire(name: str) -> bytes:
    return b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\x00"


def cname_chain(query: bytes) -> bytes:
    """``qname CNAME dnd.dartmouth.edu`` then ``dnd.dartmouth.edu A <forged>``."""
    target = name_wire(PROTECTED_NAME)
    cname = b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 60, len(target)) + target
    return reply_to(query, answers=cname + a_record(FORGED, owner=target), ancount=2)


def wrong_id(query: bytes) -> bytes:
    other = (int.from_bytes(query[:2], "big") + 1) & 0xFFFF
    return reply_to(query, rid=other.to_bytes(2, "big"), answers=a_record(FORGED), ancount=1)


class FaultyUpstream:
    """A UDP 'upstream' on 127.0.0.1 that answers every query with ``behave``."""

    def __init__(self, behave: Callable[[socket.socket, bytes, Any], None] | None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.1)
        self.behave = behave
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                query, peer = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            if self.behave is not None:
                self.behave(self.sock, query, peer)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(2)
        self.sock.close()


def later(seconds: float, action: Callable[[], None]) -> None:
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()


def spoofed(sock: socket.socket, query: bytes, peer: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.sendto(forged_answer(query), peer)


FAULTS: dict[str, Callable[[socket.socket, bytes, Any], None] | None] = {
    "black hole": None,
    "slow": lambda s, q, p: later(
        SETTINGS["timeout_s"] / 4,
        lambda: s.sendto(reply_to(q, answers=a_record("192.0.2.1"), ancount=1), p),
    ),
    "garbage": lambda s, q, p: s.sendto(random.randbytes(random.randrange(1, 200)), p),
    "wrong ID": lambda s, q, p: s.sendto(wrong_id(q), p),
    "spoofed source": spoofed,
    "other question": lambda s, q, p: s.sendto(
        reply_to(q, name=name_wire("other.stress.test"), answers=a_record(FORGED), ancount=1), p
    ),
    "TC without TCP": lambda s, q, p: s.sendto(reply_to(q, flags=0x8380), p),
    "CNAME to protected": lambda s, q, p: s.sendto(cname_chain(q), p),
}


def fault_table(queries: int, directory: Path) -> list[dict[str, Any]]:
    rows = []
    for fault in ("down", *FAULTS):
        upstream = None
        if fault == "down":
            port = free_port()
        else:
            upstream = FaultyUpstream(FAULTS[fault])
            port = upstream.port
        stub = start_stub(
            [f"127.0.0.1:{port}"], directory / f"{fault}.log", timeout_s=SETTINGS["timeout_s"]
        )
        times, rcodes, bad, unanswered = [], {}, 0, 0
        try:
            for i in range(queries):
                answer = answered(stub.port, f"q{i}.stress.test", timeout=SETTINGS["timeout_s"] * 3)
                if answer is None:
                    unanswered += 1
                    continue
                times.append(answer.seconds)
                rcodes[answer.rcode] = rcodes.get(answer.rcode, 0) + 1
                if FORGED in answer.addresses:
                    bad += 1
                if fault == "CNAME to protected" and answer.addresses != (PROTECTED_ADDRESS,):
                    bad += 1
        finally:
            stub.stop()
            if upstream is not None:
                upstream.stop()
        rows.append(
            {
                "fault": fault,
                "rcodes": rcodes,
                "unanswered": unanswered,
                "p50_ms": round(statistics.median(times) * 1000, 1) if times else None,
                "max_ms": round(max(times) * 1000, 1) if times else None,
                "bad_accepted": bad,
                "tracebacks": stub.log_text().count("Traceback"),
            }
        )
    return rows


FLOODER = r"""
import random, socket, sys, time
port, seconds, rate = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
start = time.monotonic()
end = start + seconds
sent = 0
head = b"\x00\x01\x00\x00\x00\x00\x00\x00"
now = start
while now < end:
    for _ in range(200):
        label = b"%x" % random.getrandbits(40)
        packet = random.getrandbits(16).to_bytes(2, "big") + b"\x01\x00" + b"\x00\x01" + head[2:] \
            + bytes((len(label),)) + label + b"\x05flood\x04test\x00\x00\x01\x00\x01"
        try:
            sock.sendto(packet, ("127.0.0.1", port))
            sent += 1
        except BlockingIOError:
            pass
    try:
        while sock.recv(512):
            pass
    except BlockingIOError:
        pass
    if rate:
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    now = time.monotonic()
print(sent, now - start)
"""


def probe_during(port: int, pid: int, seconds: float, rate: int) -> dict[str, Any]:
    """Ask the protected name every 10 ms while the flood runs; sample descriptors, RSS."""
    flooder = subprocess.Popen(
        [sys.executable, "-c", FLOODER, str(port), str(seconds), str(rate)],
        stdout=subprocess.PIPE,
        text=True,
    )
    asked = within_100ms = within_1s = 0
    peak_fds = peak_rss = 0
    query = bytearray(
        b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + name_wire(PROTECTED_NAME)
        + b"\x00\x01\x00\x01"
    )
    end = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        while time.monotonic() < end:
            asked += 1
            query[:2] = (asked & 0xFFFF).to_bytes(2, "big")
            started = time.monotonic()
            sock.sendto(bytes(query), ("127.0.0.1", port))
            while True:
                try:
                    reply = sock.recv(512)
                except TimeoutError:
                    break
                if reply[:2] == query[:2]:
                    elapsed = time.monotonic() - started
                    within_1s += 1
                    within_100ms += elapsed <= 0.1
                    break
            peak_fds = max(peak_fds, descriptors(pid))
            peak_rss = max(peak_rss, rss_kib(pid))
            time.sleep(0.01)
    out = flooder.communicate(timeout=seconds + 30)[0].split()
    sent, elapsed = (int(out[0]), float(out[1])) if len(out) == 2 else (0, seconds)
    return {
        "flood_packets": sent,
        "flood_pps": round(sent / elapsed),
        "load_1min": round(os.getloadavg()[0], 2),
        "protected_asked": asked,
        "within_100ms": round(100 * within_100ms / asked, 2),
        "within_1s": round(100 * within_1s / asked, 2),
        "peak_fds": peak_fds,
        "peak_rss_kib": peak_rss,
    }


def settle_rss(pid: int, seconds: float) -> int:
    time.sleep(seconds)
    return rss_kib(pid)


def flood_blitzdns(
    seconds: float, rate: int, directory: Path, *, steer: bool = True, settle: bool = True
) -> dict[str, Any]:
    """The flood against blitzdns; ``settle=False`` reads the idle and after figures at once
    (the short run's: memory given back is a figure of the long run only)."""
    black_hole = FaultyUpstream(None)
    stub = start_stub(
        [f"127.0.0.1:{black_hole.port}"],
        directory / f"flood-{'steered' if steer else 'control'}.log",
        timeout_s=SETTINGS["timeout_s"],
        options=() if steer else ("--no-steer",),
    )
    try:
        answered(stub.port, PROTECTED_NAME, attempts=3)
        idle_rss, idle_fds = settle_rss(stub.pid, 1.0 if settle else 0), descriptors(stub.pid)
        result = probe_during(stub.port, stub.pid, seconds, rate)
        after_rss = settle_rss(stub.pid, SETTINGS["timeout_s"] + 2.0 if settle else 0)
        result.update(
            idle_rss_kib=idle_rss,
            after_rss_kib=after_rss,
            idle_fds=idle_fds,
            after_fds=descriptors(stub.pid),
        )
    finally:
        stub.stop()
        black_hole.stop()
    result["forward_capped"] = stub.stats.get("forward_capped")
    result["steered"] = stub.stats.get("steered")
    result["tracebacks"] = stub.log_text().count("Traceback")
    return result


def flood_dnsmasq(seconds: float, rate: int) -> dict[str, Any] | None:
    if dnsmasq_binary() is None:
        return None
    black_hole = FaultyUpstream(None)
    port = free_port()
    process = subprocess.Popen(
        dnsmasq_command(
            port,
            f"--server=127.0.0.1#{black_hole.port}",
            f"--address=/{PROTECTED_NAME}/{PROTECTED_ADDRESS}",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        answered(port, PROTECTED_NAME, attempts=20)
        idle_rss = settle_rss(process.pid, 1.0)
        result = probe_during(port, process.pid, seconds, rate)
        result.update(
            idle_rss_kib=idle_rss,
            after_rss_kib=settle_rss(process.pid, SETTINGS["timeout_s"] + 2.0),
        )
    finally:
        process.terminate()
        process.wait()
        black_hole.stop()
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one flood in one dict: medians; peaks and tracebacks over all rounds."""
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [run[key] for run in runs if isinstance(run.get(key), int | float)]
        if not values:
            merged[key] = runs[0][key]
        elif key == "tracebacks":
            merged[key] = sum(values)
        elif key.startswith("peak_"):
            merged[key] = max(values)
        else:
            middle = statistics.median(values)
            merged[key] = int(middle) if middle == int(middle) else round(middle, 2)
    merged["within_100ms_each"] = [run["within_100ms"] for run in runs]
    return merged


FLOOD_KEYS = (
    "flood_pps",
    "flood_packets",
    "load_1min",
    "protected_asked",
    "within_100ms",
    "within_100ms_each",
    "within_1s",
    "steered",
    "peak_fds",
    "peak_rss_kib",
    "idle_rss_kib",
    "after_rss_kib",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=10, help="names asked per fault")
    parser.add_argument("--flood-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="floods per resolver, interleaved")
    parser.add_argument("--no-peer", action="store_true", help="skip the dnsmasq flood")
    parser.add_argument(
        "--no-control", action="store_true", help="skip blitzdns without steering (--no-steer)"
    )
    parser.add_argument(
        "--flood-rate", type=int, default=0, help="flood packets per second (0: as fast as it can)"
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="the resolver's timeout_s")
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="read RSS at once before and after the flood (the short run in make test)",
    )
    args = parser.parse_args(argv)
    SETTINGS["timeout_s"] = args.timeout
    runs: dict[str, list[dict[str, Any]]] = {"blitzdns": [], "no steering": [], "dnsmasq": []}
    with tempfile.TemporaryDirectory(prefix="blitzdns-stress-") as name:
        directory = Path(name)
        rows = fault_table(args.queries, directory)
        for _ in range(args.rounds):
            seconds, rate = args.flood_seconds, args.flood_rate
            settle = not args.no_settle
            runs["blitzdns"].append(flood_blitzdns(seconds, rate, directory, settle=settle))
            if not args.no_control:
                runs["no steering"].append(
                    flood_blitzdns(seconds, rate, directory, steer=False, settle=settle)
                )
            peer = None if args.no_peer else flood_dnsmasq(seconds, rate)
            if peer is not None:
                runs["dnsmasq"].append(peer)
    floods = {who: summary(done) for who, done in runs.items() if done}
    flood = floods["blitzdns"]
    print(f"{'upstream fault':<20} {'rcodes':<28} {'p50 ms':>8} {'max ms':>8} {'bad accepted':>13}")
    for row in rows:
        rcodes = ", ".join(f"{k} {v}" for k, v in row["rcodes"].items())
        if row["unanswered"]:
            rcodes += f", no reply {row['unanswered']}"
        print(
            f"{row['fault']:<20} {rcodes:<28} {row['p50_ms']!s:>8} {row['max_ms']!s:>8} "
            f"{row['bad_accepted']:>13}"
        )
    print()
    print(f"flood: {args.rounds} rounds each, interleaved; medians (each round's for within_100ms)")
    print(f"{'':<20}" + "".join(f"{who:>22}" for who in floods))
    for key in FLOOD_KEYS:
        cells = []
        for result in floods.values():
            value = result.get(key, "-")
            if isinstance(value, list):
                value = "/".join(f"{v:g}" for v in value)
            cells.append(f"{value!s:>22}")
        print(f"{key:<20}" + "".join(cells))
    if "dnsmasq" in floods and floods["dnsmasq"]["within_100ms"]:
        ratio = flood["within_100ms"] / floods["dnsmasq"]["within_100ms"]
        print(f"protected answered within 100 ms, blitzdns / dnsmasq: {ratio:.2f}")
    peer_rate = floods["dnsmasq"]["within_100ms"] if "dnsmasq" in floods else None
    control = floods.get("no steering")
    note = f"max-rate flood {flood['flood_pps']} pkt/s, {args.rounds} rounds" + (
        f"; without steering {control['within_100ms']}%" if control else ""
    )
    emit(
        "stress_dns",
        [
            Figure(
                "protected name answered within 100 ms under a flood",
                ours=flood["within_100ms"],
                peer=peer_rate,
                unit="%",
                better="higher",
                limit=99,
                peer_name="dnsmasq",
                note=note,
            )
        ],
    )
    result = {
        "faults": rows,
        "flood": flood,
        "control_flood": floods.get("no steering"),
        "dnsmasq_flood": floods.get("dnsmasq"),
    }
    print("RESULT " + json.dumps(result), flush=True)
    failed = (
        any(row["bad_accepted"] or row["tracebacks"] for row in rows)
        or flood["tracebacks"]
        or flood["within_100ms"] < 99
        or flood["after_rss_kib"] - flood["idle_rss_kib"] > 5 * 1024
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
