"""What one forwarded miss costs the resolver, counted rather than timed (issue #18).

    .venv/bin/python bench/dns_miss_cost.py [--src DIR] [--misses 3000] [--bytecodes]

``python -m blitzdns.dns`` (from ``--src``, default this tree's ``src``) forwards to a
dnsmasq answering ``*.bench.test`` (cache off); a client here sends ``--misses`` names,
each new, 64 outstanding, after 500 of warm-up. By default the resolver runs under
callgrind, its counters zeroed after the warm-up and dumped after the misses: the
instructions per miss, repeatable within ~1.5 % whatever the machine's load (the batch
sizes, hence the per-miss share of each read and send, still move a little with it).
``--bytecodes`` runs it under a ``sys.settrace`` opcode counter instead and prints the
Python bytecodes per miss of its busiest functions (the start-up's and warm-up's counted
in too: some 300 per miss in the total at 5,000 misses, next to nothing in the rows of
the per-miss functions). Needs valgrind and dnsmasq; loopback only. For an A/B, run it on
both trees (``--src``) and compare; bench/notes/dns.md has the figures.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from blitzdns.demo import free_dns_port as free_port

ROOT = Path(__file__).resolve().parent.parent
OUTSTANDING = 64
WARM_UP = 500

#: Run as the resolver's main module under ``--bytecodes``: counts opcodes per code object.
TRACER = """
import atexit, collections, os, runpy, sys
counts = collections.Counter()
def local(frame, event, arg):
    if event == "opcode":
        counts[frame.f_code] += 1
    return local
def start(frame, event, arg):
    frame.f_trace_opcodes = True
    return local
def dump():
    sys.settrace(None)
    with open(os.environ["MISS_COST_OUT"], "w") as out:
        for code, n in counts.items():
            where = code.co_filename.rsplit("/", 1)[-1]
            out.write(f"{n} {where}:{code.co_name}:{code.co_firstlineno}\\n")
atexit.register(dump)
sys.argv = ["blitzdns.dns", *sys.argv[1:]]
sys.settrace(start)
runpy.run_module("blitzdns.dns", run_name="__main__")
"""


def query(query_id: int, name: str) -> bytes:
    wire = b"".join(bytes((len(label),)) + label.encode() for label in name.split("."))
    return (
        query_id.to_bytes(2, "big")
        + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + wire
        + (b"\x00\x00\x01\x00\x01")
    )


def ask(port: int, names: list[str], timeout_s: float = 120) -> int:
    """Send every name, ``OUTSTANDING`` at a time, and wait for as many replies; how many
    replies were not NOERROR (a SERVFAIL is a timed-out exchange, not a miss's cost)."""
    failed = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(timeout_s)
        sent = received = 0
        while received < len(names):
            while sent < len(names) and sent - received < OUTSTANDING:
                sock.send(query(sent & 0xFFFF, names[sent]))
                sent += 1
            reply = sock.recv(4096)
            failed += len(reply) < 4 or reply[3] & 0x0F != 0
            received += 1
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", default=str(ROOT / "src"))
    parser.add_argument("--misses", type=int, default=3000)
    parser.add_argument("--bytecodes", action="store_true")
    args = parser.parse_args()
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    work = Path(tempfile.mkdtemp(prefix="dns_miss_cost-"))
    upstream, ours = free_port(), free_port()
    dnsmasq = subprocess.Popen(
        [
            *(binary, "-k", "-C", "/dev/null", "--no-resolv", "--no-hosts"),
            *("--listen-address=127.0.0.1", "--bind-interfaces", f"--port={upstream}"),
            *("--pid-file=", "--user=root", "--cache-size=0", "--local-ttl=3600"),
            "--address=/bench.test/127.0.0.9",
        ],
        stderr=subprocess.DEVNULL,
    )
    resolver = ["--listen", f"127.0.0.1:{ours}", "--upstream", f"127.0.0.1:{upstream}"]
    resolver.append("--no-loop-probe")
    out = work / "callgrind.out"
    if args.bytecodes:
        (work / "tracer.py").write_text(TRACER)
        command = [sys.executable, str(work / "tracer.py"), *resolver]
    else:
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        command += [sys.executable, "-m", "blitzdns.dns", *resolver]
    env = {**os.environ, "PYTHONPATH": args.src, "MISS_COST_OUT": str(work / "opcodes")}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    tag = random.randrange(10**9)
    try:
        assert server.stdout is not None
        if not server.stdout.readline().startswith(b"ready"):
            sys.exit("the resolver did not start")
        ask(ours, [f"w{i}.x{tag}.bench.test" for i in range(WARM_UP)])
        if not args.bytecodes:
            subprocess.run(
                ["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True
            )
        failed = ask(ours, [f"m{i}.y{tag}.bench.test" for i in range(args.misses)])
        if not args.bytecodes:
            subprocess.run(
                ["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True
            )
            time.sleep(1)
    finally:
        server.terminate()
        server.wait()
        dnsmasq.terminate()
        dnsmasq.wait()
    misses = args.misses
    if failed:
        # The upstream did not answer (its port taken, say): those were timeouts.
        sys.exit(f"{args.src}: {failed} of {misses} answers were not NOERROR: no figure")
    if args.bytecodes:
        rows = [line.split(" ", 1) for line in (work / "opcodes").read_text().splitlines()]
        counted = sorted(((int(n), where) for n, where in rows), reverse=True)
        total = sum(n for n, _ in counted) / (misses + WARM_UP)
        print(f"{args.src}: {total:,.0f} bytecodes per miss (warm-up and start-up included)")
        for n, where in counted[:30]:
            print(f"{n / (misses + WARM_UP):8.1f}  {where}")
        return
    dump = next(work.glob("callgrind.out.*"))
    found = re.search(r"^summary: (\d+)", dump.read_text(), re.M)
    assert found is not None
    print(f"{args.src}: {int(found.group(1)) / misses:,.0f} instructions per miss ({misses})")


if __name__ == "__main__":
    main()
