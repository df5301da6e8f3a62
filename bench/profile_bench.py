#!/usr/bin/env python3
"""Where the time goes (issue 18): py-spy flame graphs of our side under the benches' loads.

    .venv/bin/python bench/profile_bench.py [--seconds 4] [--out bench/results/profiles]

Each load is the one a bench measures, set up with that bench's own functions, on loopback:

* ``tunnel-bulk``: the forwarder as the daemon runs it (``tunnel+uvloop``, aes128-gcm)
  carrying iperf3 up, then down (bench/tunnel_bench.py's lab);
* ``tunnel-round-trip``: the same forwarder, sequential connect → line → echo → close;
* ``dns-protected``: the resolver answering the protected name in random letter case, as
  fast as dnsperf sends (bench/dns_bench.py's set-up); ``dns-miss``: every name new;
* ``startup-imports``: ``python -X importtime`` of what ``blitzdns run`` imports first.

py-spy samples the process without pausing it (``--nonblocking``), twice at once: a flame
graph (``<out>/<name>.svg``) and the raw stacks, from which a one-line summary is made: the
self time by package and the busiest functions. Each profile names the report's cases it
explains (``covers``, prefixes of case names); bench/report.py shows its summary and flame
graph beside a missed target whose owner has not written a note. Needs py-spy (the 'bench'
extra) and root (py-spy reads another process's memory; the lab starts sshd).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from benchlock import bench_lock  # noqa: E402
from dns_bench import dnsmasq_command, run_dnsperf, wait_until_answering, write_lines  # noqa: E402
from figures import emit_profile  # noqa: E402
from tunnel_bench import free_port, iperf, lab, round_trips, start_forwarder, stop  # noqa: E402

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed (pip install -e '.[bench]')")
    return found


def package_of(path: str) -> str:
    """``.../site-packages/asyncssh/channel.py`` → ``asyncssh``, ``.../src/tunnel/x.py`` →
    ``tunnel``, ``/usr/lib/python3.11/asyncio/runners.py`` → ``asyncio``."""
    parts = Path(path).parts
    for marker in ("site-packages", "src", "python3"):
        for index in range(len(parts) - 2, -1, -1):
            if parts[index] == marker or parts[index].startswith(marker + "."):
                return parts[index + 1].removesuffix(".py")
    return Path(path).stem or "?"


def summarize(raw: Path, top: int = 4) -> str:
    """Self time by package and the busiest functions, from py-spy's collapsed stacks."""
    by_package: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        match = FRAME.match(leaf)
        function, path = (match["function"], match["file"]) if match else (leaf, "?")
        package = package_of(path)
        by_package[package] += int(count)
        by_function[f"{Path(path).stem}.{function}"] += int(count)
        total += int(count)
    if not total:
        return "no samples"

    def share(counter: collections.Counter[str]) -> str:
        return ", ".join(f"{name} {n / total:.0%}" for name, n in counter.most_common(top))

    return f"self time by package: {share(by_package)}; busiest: {share(by_function)}"


class Recording:
    """Two py-spy samplers on ``pid`` at once: a flame graph and raw stacks."""

    def __init__(self, pid: int, seconds: float, svg: Path, raw: Path) -> None:
        self.svg, self.raw = svg, raw
        base = [py_spy(), "record", "--pid", str(pid), "--duration", f"{seconds:.0f}"]
        base += ["--rate", "250", "--nonblocking", "--full-filenames"]
        self.procs = [
            subprocess.Popen(
                [*base, "--format", fmt, "-o", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for fmt, path in (("flamegraph", svg), ("raw", raw))
        ]
        self.deadline = time.monotonic() + seconds + 30
        time.sleep(0.5)  # py-spy attaches (the load it samples is longer than this)

    def finish(self) -> str:
        for proc in self.procs:
            try:
                proc.wait(max(1.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return summarize(self.raw) if self.raw.exists() else "py-spy wrote nothing"


def profile_tunnel(out: Path, work: Path, seconds: float) -> None:
    with lab() as where:
        mouths = (free_port(), free_port())
        proc = start_forwarder("tunnel+uvloop", where, "aes128-gcm@openssh.com", mouths)
        try:
            round_trips(mouths[1], 20, 10)
            half = max(1.0, seconds / 2)
            recording = Recording(proc.pid, 2 * half + 1, out / "tunnel-bulk.svg", work / "b")
            iperf(mouths[0], half, reverse=False)
            iperf(mouths[0], half, reverse=True)
            emit_profile(
                "tunnel-bulk",
                ["tunnel tunnel ", "tunnel tunnel+uvloop "],
                recording.finish(),
                "profiles/tunnel-bulk.svg",
                skip=[" round trip"],
            )
            recording = Recording(proc.pid, seconds, out / "tunnel-round-trip.svg", work / "r")
            round_trips(mouths[1], 5000, seconds)
            emit_profile(
                "tunnel-round-trip",
                ["tunnel tunnel ", "tunnel tunnel+uvloop "],
                recording.finish(),
                "profiles/tunnel-round-trip.svg",
                only=[" round trip"],
            )
        finally:
            stop(proc)


def profile_dns(out: Path, work: Path, seconds: float) -> None:
    upstream_port, ours_port = free_port(), free_port()
    upstream = subprocess.Popen(
        dnsmasq_command(
            upstream_port, "--cache-size=0", "--local-ttl=3600", "--address=/bench.test/127.0.0.9"
        )
    )
    ours = subprocess.Popen(
        [
            *(sys.executable, "-m", "blitzdns.dns", "--listen", f"127.0.0.1:{ours_port}"),
            *("--upstream", f"127.0.0.1:{upstream_port}", "--no-loop-probe"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    try:
        wait_until_answering(upstream_port)
        wait_until_answering(ours_port)
        mixed = write_lines(
            work / "mixed.txt",
            [
                "".join(c.upper() if (i >> k) & 1 else c for k, c in enumerate("dnd.dartmouth"))
                + ".edu A"
                for i in range(4096)
            ],
        )
        misses = write_lines(work / "miss.txt", [f"p{i}.bench.test A" for i in range(200_000)])
        for name, datafile, covers, once in (
            ("dns-protected", mixed, ["DNS (a)", "DNS (b)"], False),
            ("dns-miss", misses, ["DNS (c)"], True),
        ):
            recording = Recording(ours.pid, seconds, out / f"{name}.svg", work / name)
            run_dnsperf(ours_port, datafile, seconds - 0.5, 0, once=once)
            emit_profile(name, covers, recording.finish(), f"profiles/{name}.svg")
    finally:
        for proc in (ours, upstream):
            proc.terminate()
            proc.wait(10)


def profile_startup(work: Path) -> None:
    """``-X importtime`` of the daemon's entry: self time summed by top-level package."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import blitzdns.daemon"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    by_package: collections.Counter[str] = collections.Counter()
    for line in done.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) == 3 and fields[0].strip().isdigit():
            by_package[fields[2].strip().split(".")[0]] += int(fields[0])
    total = sum(by_package.values())
    top = ", ".join(f"{name} {us / 1000:.0f} ms" for name, us in by_package.most_common(5))
    emit_profile(
        "startup-imports",
        ["daemon exec → ready"],
        f"importing blitzdns.daemon takes {total / 1000:.0f} ms of import work: {top}",
        None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per profile (1..30)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "profiles")
    args = parser.parse_args()
    seconds = min(max(args.seconds, 1.0), 30.0)
    py_spy()
    args.out.mkdir(parents=True, exist_ok=True)
    with bench_lock(1800), tempfile.TemporaryDirectory(prefix="profile-bench-") as tmp:
        profile_startup(Path(tmp))
        profile_dns(args.out, Path(tmp), seconds)
        profile_tunnel(args.out, Path(tmp), seconds)


if __name__ == "__main__":
    main()
