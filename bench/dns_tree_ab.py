"""A/B of two source trees of the resolver, beside dnsmasq, in one run (interleaved rounds).

    .venv/bin/python bench/dns_tree_ab.py --old DIR [--new DIR] [--rounds 5] [--seconds 3]

``DIR`` is a tree's ``src`` directory (``--new`` defaults to this tree's); both run as
``python -m blitzdns.dns`` on this interpreter with ``PYTHONPATH=DIR``, pinned to CPU 0
like ``bench/dns_bench.py``'s servers (dnsperf and the upstream dnsmasq on CPU 1).

* dns_bench's hot cases, at dnsperf's full speed: (a) ``dnd.dartmouth.edu A`` as
  dnsperf repeats it, (a) the same in 8,192 random letter cases, (b) 100 cached names
  asked again: server CPU per query (µs), each round alternating the servers' order,
  medians over ``--rounds``, and each tree's ratio to dnsmasq in the same run;
* the growth row (``bench/dns_growth_bench.py``'s protected table) at ``--names``: each
  tree with that many protected names, dnsmasq with them as ``address=`` lines, the names
  asked in random letter case at ``--rate``: CPU per query, latency p50, and the
  resolver's VmRSS after the run (every name asked at least once by then at 10,000).

Loopback only; every run bounded in time. Holds the bench lock while it measures.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from blitzdns.demo import free_dns_port as free_port
from dns_bench import (
    ROOT,
    SERVER_CPU,
    dnsmasq_command,
    measure,
    run_dnsperf,
    start_upstream,
    stop_process,
    wait_until_answering,
    write_lines,
)
from dns_growth_bench import SAMPLE, growth_toml, random_case
from dns_growth_bench import measure as measure_row


def start(tree: Path, port: int, upstream: int, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "blitzdns.dns", "--listen", f"127.0.0.1:{port}"]
    command += ["--upstream", f"127.0.0.1:{upstream}", "--no-loop-probe", *extra]
    return subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PYTHONPATH": str(tree)},
    )


def hot_cases(
    trees: dict[str, Path], upstream: int, work: Path, rounds: int, seconds: float
) -> None:
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        port = free_port()
        servers["dnsmasq"] = (
            subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    SERVER_CPU,
                    *dnsmasq_command(
                        port,
                        "--cache-size=10000",
                        "--address=/dnd.dartmouth.edu/127.77.0.1",
                        "--local=/dnd.dartmouth.edu/",
                        f"--server=127.0.0.1#{upstream}",
                    ),
                ]
            ),
            port,
        )
        for label, tree in trees.items():
            port = free_port()
            servers[label] = (start(tree, port, upstream), port)
        for _, port in servers.values():
            wait_until_answering(port, timeout=30)
        rng = random.Random(20)
        cases = {
            "(a) protected": write_lines(work / "protected.txt", ["dnd.dartmouth.edu A"]),
            "(a) random case": write_lines(
                work / "mixed.txt",
                [random_case("dnd.dartmouth.edu", rng) + " A" for _ in range(8192)],
            ),
            "(b) cache hit": write_lines(
                work / "cached.txt", [f"c{i}.cached.test A" for i in range(100)]
            ),
        }
        for _, port in servers.values():
            run_dnsperf(port, cases["(b) cache hit"], 5, 0, once=True)
        cpu: dict[tuple[str, str], list[float]] = {}
        for round_ in range(rounds):
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            for case, datafile in cases.items():
                for server in order:
                    process, port = servers[server]
                    result = measure(process.pid, port, datafile, seconds, 0, False)
                    cpu.setdefault((case, server), []).append(result.cpu_us)
        print(f"\nCPU µs/query, medians of {rounds} rounds (ratio to dnsmasq in this run)")
        for case in cases:
            peer = statistics.median(cpu[(case, "dnsmasq")])
            line = f"{case:18} dnsmasq {peer:6.2f}"
            for label in trees:
                mine = statistics.median(cpu[(case, label)])
                line += f"  {label} {mine:6.2f} ({mine / peer:.2f}x)"
            print(line, flush=True)
            for server in servers:
                each = " ".join(f"{v:.2f}" for v in cpu[(case, server)])
                print(f"{'':18} {server} rounds: {each}")
    finally:
        for process, _ in servers.values():
            stop_process(process)


def growth(
    trees: dict[str, Path],
    upstream: int,
    work: Path,
    names: list[int],
    rounds: int,
    seconds: float,
    rate: int,
) -> None:
    rng = random.Random(18)
    print(f"\ngrowth: protected names asked in random case at {rate}/s (medians of {rounds})")
    for hosts in names:
        sample = [f"h{rng.randrange(hosts)}.growth.test" for _ in range(SAMPLE)]
        queries = write_lines(work / "growth.txt", [f"{random_case(n, rng)} A" for n in sample])
        config = work / f"growth{hosts}.toml"
        config.write_text(growth_toml(hosts, 10_000))
        conf = work / f"dnsmasq{hosts}.conf"
        conf.write_text(
            "".join(f"address=/h{i}.growth.test/127.80.{i >> 8}.{i & 255}\n" for i in range(hosts))
        )
        rows: dict[str, list[tuple[float, float, float]]] = {}
        for round_ in range(rounds):
            order = ["dnsmasq", *trees]
            for server in order if round_ % 2 == 0 else reversed(order):
                port = free_port()
                if server == "dnsmasq":
                    command = dnsmasq_command(port, f"--server=127.0.0.1#{upstream}")
                    command[command.index("/dev/null")] = str(conf)
                    process = subprocess.Popen(["taskset", "-c", SERVER_CPU, *command])
                else:
                    process = start(trees[server], port, upstream, "--config", str(config))
                try:
                    wait_until_answering(port, timeout=60)
                    row = measure_row(process.pid, port, queries, seconds, rate)
                finally:
                    stop_process(process)
                rows.setdefault(server, []).append((row.cpu_us, row.latency_ms, row.rss_mib))
        peer = [statistics.median(v) for v in zip(*rows["dnsmasq"], strict=True)]
        line = f"{hosts:6d} names: dnsmasq CPU {peer[0]:5.1f} µs p50 {peer[1]:.3f} ms"
        line += f" RSS {peer[2]:5.1f}"
        for label in trees:
            cpu, p50, rss = (statistics.median(v) for v in zip(*rows[label], strict=True))
            line += f" | {label} CPU {cpu:5.1f} ({cpu / peer[0]:.2f}x) p50 {p50:.3f}"
            line += f" RSS {rss:5.1f} MiB"
        print(line, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the old tree's src directory")
    parser.add_argument("--new", type=Path, default=ROOT / "src", help="the new tree's src")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--names", type=int, nargs="*", default=[10, 10_000])
    parser.add_argument("--growth-rounds", type=int, default=2)
    parser.add_argument("--rate", type=int, default=10_000)
    args = parser.parse_args()
    for tool in ("dnsperf", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    work = Path(tempfile.mkdtemp(prefix="dns_tree_ab-"))
    upstream_port = free_port()
    upstream = start_upstream(upstream_port)
    try:
        wait_until_answering(upstream_port)
        if args.rounds:
            hot_cases(trees, upstream_port, work, args.rounds, args.seconds)
        if args.names:
            growth(
                trees,
                upstream_port,
                work,
                args.names,
                args.growth_rounds,
                args.seconds,
                args.rate,
            )
    finally:
        stop_process(upstream)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    from benchlock import bench_lock

    with bench_lock(1800):
        sys.exit(main())
