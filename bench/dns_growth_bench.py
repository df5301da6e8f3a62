"""Benchmark: how the resolver's cost grows with its table and its cache (issue 18's growth row).

    .venv/bin/python bench/dns_growth_bench.py [--seconds 4] [--rate 10000] [--max-cached 1000000]

Two tables, each row one size, every figure from dnsperf at a fixed ``--rate`` (so each
size carries the same load, and CPU per query compares across sizes):

* protected names, 10 to 10,000: a config with that many protected hosts (one name each);
  dnsperf asks all of them, each in random letter case (so the exact-bytes reply memo
  cannot answer; the folded memo for mixed-case questions does, after each name's first
  query, up to its 1,024 questions); beside dnsmasq holding the same names as
  ``address=`` lines;
* cached names, 1,000 to 1,000,000: the cache sized to hold them and filled once (every
  name asked once, forwarded to the upstream); then 8,192 of them asked in random letter
  case, so each is a cache hit through the cache's map (or the folded memo's 1,024). The
  resolver freezes what its start made (``gc.freeze``, as the daemon does) and cached
  entries are untracked tuples, so a full collection does not walk the cache: before, one
  paused the 1,000,000 row ~0.5 s (0.125 vs 1.01 ms average in two runs). dnsmasq is not
  beside this table: its cache is not meant for a million names.

Per row: CPU per query (µs, utime+stime of the resolver over the run / answered queries),
the latency's median and 99th percentile (ms, from dnsperf's per-query lines), the
resolver's RSS (MiB, VmRSS after the run), and for the protected table also the
forwarded-miss CPU per query (the reply screen looks for every protected name). Not
dnsperf's average latency: with at most 200 queries outstanding, one stall of a few ms on
the server's CPU (another process's time slice; here a machine shared with other work)
moves the average of 40,000 queries several-fold while the median stays put.
Constant-time lookups show as flat columns; the deterministic check of the same
(operations counted, not time) is ``tests/dns/test_growth.py``. Every server
listens on 127.0.0.1; servers on CPU 0, dnsperf and the upstream on CPU 1.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from blitzdns.demo import free_dns_port as free_port
from dns_bench import (
    CLIENT_CPU,
    ROOT,
    SERVER_CPU,
    cpu_seconds,
    dnsmasq_command,
    resolver_loop,
    stop_process,
    wait_until_answering,
    write_lines,
)
from figures import Figure, emit

PROTECTED_SIZES = (10, 100, 1000, 10_000)
CACHED_SIZES = (1000, 10_000, 100_000, 1_000_000)
SAMPLE = 8192


@dataclass
class Row:
    cpu_us: float
    latency_ms: float
    p99_ms: float
    rss_mib: float
    qps: float


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def random_case(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def dnsperf(
    port: int, datafile: Path, seconds: float, rate: int, *, once: bool, each: bool = False
) -> str:
    """dnsperf's output; ``each`` adds its line per query (``> RCODE name type seconds``)."""
    command = ["taskset", "-c", CLIENT_CPU, "dnsperf", "-s", "127.0.0.1", "-p", str(port)]
    command += ["-d", str(datafile), "-l", str(seconds), "-t", "2", "-q", "200"]
    if once:
        command += ["-n", "1"]
    if each:
        command.append("-v")
    if rate:
        command += ["-Q", str(rate)]
    limit = seconds + 30 if seconds else 3600
    done = subprocess.run(command, capture_output=True, text=True, timeout=limit, check=False)
    return done.stdout + done.stderr


def measure(pid: int, port: int, datafile: Path, seconds: float, rate: int) -> Row:
    before = cpu_seconds(pid)
    output = dnsperf(port, datafile, seconds, rate, once=False, each=True)
    used = cpu_seconds(pid) - before
    completed = re.search(r"Queries completed:\s+(\d+)", output)
    qps = re.search(r"Queries per second:\s+([\d.]+)", output)
    # An answered query's line ends with its latency; a lost one's (``> T name type``,
    # timed out) does not, and has none to count (dnsperf counts it as lost).
    latencies = sorted(
        float(fields[-1])
        for fields in (line.split() for line in output.splitlines() if line[:2] == "> ")
        if fields[1] != "T"
    )
    if not (completed and qps and latencies):
        raise RuntimeError(f"unexpected dnsperf output:\n{output[-2000:]}")
    answered = max(int(completed.group(1)), 1)
    return Row(
        used * 1e6 / answered,
        latencies[len(latencies) // 2] * 1e3,
        latencies[len(latencies) * 99 // 100] * 1e3,
        rss_mib(pid),
        float(qps.group(1)),
    )


def growth_toml(hosts: int, cache_size: int) -> str:
    lines = ["[dns]", f"cache_size = {cache_size}", "[tunnel]", 'mouths = "127.80.0.0/16"']
    lines.append("hosts = [" + ", ".join(f'"h{i}"' for i in range(hosts)) + "]")
    for i in range(hosts):
        lines += [f"[hosts.h{i}]", f'names = ["h{i}.growth.test"]', 'services = ["dnd"]']
    return "\n".join(lines) + "\n"


class Servers:
    """The upstream dnsmasq, and the resolvers and peers started for each row."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.processes: list[subprocess.Popen[bytes]] = []
        self.upstream_port = free_port()
        self.start(
            CLIENT_CPU,
            dnsmasq_command(
                self.upstream_port,
                "--cache-size=0",
                "--local-ttl=3600",
                "--address=/bench.test/127.0.0.9",
                "--address=/cached.test/127.0.0.8",
            ),
        )
        wait_until_answering(self.upstream_port)

    def start(self, cpu: str, command: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            ["taskset", "-c", cpu, *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        self.processes.append(process)
        return process

    def resolver(self, hosts: int, cache_size: int) -> tuple[subprocess.Popen[bytes], int]:
        config = self.work / "growth.toml"
        config.write_text(growth_toml(hosts, cache_size))
        port = free_port()
        process = self.start(
            SERVER_CPU,
            [
                sys.executable,
                "-m",
                "blitzdns.dns",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{port}",
                "--upstream",
                f"127.0.0.1:{self.upstream_port}",
                "--no-loop-probe",
            ],
        )
        wait_until_answering(port, timeout=60)
        return process, port

    def dnsmasq(self, hosts: int) -> tuple[subprocess.Popen[bytes], int]:
        conf = self.work / "dnsmasq-growth.conf"
        conf.write_text(
            "".join(f"address=/h{i}.growth.test/127.80.{i >> 8}.{i & 255}\n" for i in range(hosts))
        )
        port = free_port()
        command = dnsmasq_command(port, f"--server=127.0.0.1#{self.upstream_port}")
        command[command.index("/dev/null")] = str(conf)
        process = self.start(SERVER_CPU, command)
        wait_until_answering(port, timeout=60)
        return process, port

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        stop_process(process)
        self.processes.remove(process)

    def close(self) -> None:
        for process in list(self.processes):
            self.stop(process)


def protected_rows(
    servers: Servers, sizes: tuple[int, ...], seconds: float, rate: int
) -> dict[int, dict[str, Row]]:
    rng = random.Random(18)
    out: dict[int, dict[str, Row]] = {}
    for hosts in sizes:
        names = [f"h{rng.randrange(hosts)}.growth.test" for _ in range(SAMPLE)]
        queries = write_lines(
            servers.work / "protected.txt", [f"{random_case(n, rng)} A" for n in names]
        )
        misses = write_lines(
            servers.work / "miss.txt", [f"g{i}.r{hosts}.bench.test A" for i in range(100_000)]
        )
        rows: dict[str, Row] = {}
        ours, port = servers.resolver(hosts, 10_000)
        rows["blitzdns"] = measure(ours.pid, port, queries, seconds, rate)
        rows["blitzdns miss"] = measure(ours.pid, port, misses, seconds, min(rate, 5000))
        servers.stop(ours)
        theirs, port = servers.dnsmasq(hosts)
        rows["dnsmasq"] = measure(theirs.pid, port, queries, seconds, rate)
        servers.stop(theirs)
        out[hosts] = rows
        print(f"protected {hosts}: {rows}", flush=True)
    return out


def cached_rows(
    servers: Servers, sizes: tuple[int, ...], seconds: float, rate: int
) -> dict[int, Row]:
    rng = random.Random(19)
    out: dict[int, Row] = {}
    for size in sizes:
        names = [f"n{i}.cached.test" for i in range(size)]
        fill = write_lines(servers.work / "fill.txt", [f"{n} A" for n in names])
        sample = [random_case(rng.choice(names), rng) + " A" for _ in range(SAMPLE)]
        queries = write_lines(servers.work / "hits.txt", sample)
        ours, port = servers.resolver(1, size)
        started = time.monotonic()
        dnsperf(port, fill, 0, 0, once=True)
        print(f"cached {size}: filled in {time.monotonic() - started:.0f} s", flush=True)
        out[size] = measure(ours.pid, port, queries, seconds, rate)
        servers.stop(ours)
        print(f"cached {size}: {out[size]}", flush=True)
    return out


def figures_of(
    protected: dict[int, dict[str, Row]], cached: dict[int, Row], loop: str
) -> list[Figure]:
    """Each row's figures; the protected table's beside dnsmasq's, the cache's alone."""
    out = []
    group = "growth: DNS protected names"
    for hosts, rows in protected.items():
        ours, theirs = rows["blitzdns"], rows["dnsmasq"]
        pairs = (
            ("CPU/query", ours.cpu_us, theirs.cpu_us, "µs/query"),
            ("latency p50", ours.latency_ms, theirs.latency_ms, "ms"),
            ("latency p99", ours.p99_ms, theirs.p99_ms, "ms"),
            ("RSS", ours.rss_mib, theirs.rss_mib, "MiB"),
        )
        for what, mine, peer, unit in pairs:
            out.append(
                Figure(
                    f"growth {hosts} protected: {what}",
                    mine,
                    peer,
                    unit,
                    peer_name="dnsmasq",
                    group=group,
                    note=f"blitzdns on {loop}",
                )
            )
        miss = rows["blitzdns miss"].cpu_us
        out.append(
            Figure(f"growth {hosts} protected: miss CPU/query", miss, None, "µs/query", group=group)
        )
    group = "growth: DNS cached names"
    for size, row in cached.items():
        out += [
            Figure(f"growth {size} cached: CPU/query", row.cpu_us, None, "µs/query", group=group),
            Figure(f"growth {size} cached: latency p50", row.latency_ms, None, "ms", group=group),
            Figure(f"growth {size} cached: latency p99", row.p99_ms, None, "ms", group=group),
            Figure(f"growth {size} cached: RSS", row.rss_mib, None, "MiB", group=group),
        ]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each dnsperf run")
    parser.add_argument("--rate", type=int, default=10000, help="dnsperf -Q for every row")
    parser.add_argument(
        "--max-cached", type=int, default=1_000_000, help="largest cache row (names)"
    )
    parser.add_argument(
        "--max-protected", type=int, default=10_000, help="largest protected-names row"
    )
    args = parser.parse_args()
    for tool in ("dnsperf", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    loop = resolver_loop()
    work = Path(tempfile.mkdtemp(prefix="dns_growth-"))
    servers = Servers(work)
    try:
        protected = protected_rows(
            servers,
            tuple(s for s in PROTECTED_SIZES if s <= args.max_protected),
            args.seconds,
            args.rate,
        )
        cached = cached_rows(
            servers,
            tuple(s for s in CACHED_SIZES if s <= args.max_cached),
            args.seconds,
            args.rate,
        )
    finally:
        servers.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nresolver event loop: {loop}; fixed rate {args.rate}/s; load average each figure")
    print(
        f"{'protected names':>16} {'CPU µs/q':>9} {'dnsmasq':>8} {'p50 ms':>7} {'dnsmasq':>8} "
        f"{'p99 ms':>7} {'dnsmasq':>8} {'RSS MiB':>8} {'miss µs/q':>9}"
    )
    for hosts, rows in protected.items():
        r, d = rows["blitzdns"], rows["dnsmasq"]
        print(
            f"{hosts:16d} {r.cpu_us:9.2f} {d.cpu_us:8.2f} {r.latency_ms:7.3f} {d.latency_ms:8.3f} "
            f"{r.p99_ms:7.3f} {d.p99_ms:8.3f} {r.rss_mib:8.1f} {rows['blitzdns miss'].cpu_us:9.2f}"
        )
    print(f"{'cached names':>16} {'CPU µs/q':>9} {'p50 ms':>7} {'p99 ms':>7} {'RSS MiB':>8}")
    for size, row in cached.items():
        print(
            f"{size:16d} {row.cpu_us:9.2f} {row.latency_ms:7.3f} {row.p99_ms:7.3f} "
            f"{row.rss_mib:8.1f}"
        )
    emit("dns_growth", figures_of(protected, cached, loop))
    return 0


if __name__ == "__main__":
    from benchlock import bench_lock

    with bench_lock(1800):
        sys.exit(main())
