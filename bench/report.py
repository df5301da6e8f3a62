#!/usr/bin/env python3
"""The benchmark report (issue 18): run the benches, keep the run's figures, compare.

    python bench/report.py run [--quick]     # what `make bench` / `make bench-quick` do
    python bench/report.py write RUN_DIR     # report from a run directory's <bench>.json

``run`` makes a run directory, runs each bench script with ``$BLITZDNS_BENCH_RUN`` pointing
at it (each script's :func:`figures.emit` writes ``<bench>.json`` there), notes each
script's exit status and duration, then writes:

* ``bench/results/<UTC date>-<commit>.json``: the run's figures with the date, commit, load
  average (at the start, at the end, and with every figure), Python, event loop, machine and
  the peers' versions; every run is kept, so a later run shows its change;
* ``bench/results/REPORT.md``: one table per bench (case, ours, peer, ratio, target, met or
  missed by how much, the previous run's ratio beside it, load average), the missed targets
  first with where the time goes (the figure's ``note``, filled in by whoever owns the case);
* ``bench/results/ratios.png``: the ratios with a bound (matplotlib), target marks and the
  previous run's ratio.

``--quick`` (``make bench-quick``, under a minute here) runs the headline cases with small
counts and writes the same three files under ``bench/results/quick/`` (not committed); its
"previous" is the last quick run, or the last full run when there is none.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from figures import RUN_DIR_ENV, Figure  # noqa: E402

RESULTS = HERE / "results"

FULL = (  # (bench, script arguments): what `make bench` runs, in this order
    ("dns", ["dns_bench.py", "--also=--no-linger"]),  # the fixed-rate rows both ways
    ("dns_growth", ["dns_growth_bench.py"]),
    ("tunnel", ["tunnel_bench.py"]),
    ("daemon", ["daemon_bench.py"]),
    ("growth", ["growth_bench.py"]),
    ("roam", ["roam_bench.py"]),
    ("udp", ["udp_bench.py"]),
    ("profile", ["profile_bench.py"]),
)
QUICK = (  # the headline ratios with small counts: DNS CPU/query, tunnel, RSS, exec → ready
    (
        "dns",
        [
            *("dns_bench.py", "--seconds", "1", "--repeat", "1", "--rate", "0"),
            *("--case", "(a) protected name max"),
        ],
    ),
    (
        "tunnel",
        [
            *("tunnel_bench.py", "--only", "openssh", "tunnel+uvloop", "--rounds", "1"),
            *("--seconds", "1", "--round-trips", "100", "--ciphers", "aes128-gcm@openssh.com"),
        ],
    ),
    ("daemon", ["daemon_bench.py", "--rounds", "1", "--connections", "100", "--start-rounds", "4"]),
)


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    date: str
    commit: str
    kind: str
    load_start: float
    load_end: float
    environment: dict[str, str]
    benches: dict[str, dict[str, Any]] = field(default_factory=dict)
    """bench → {"status": exit status or None, "seconds": duration} (None: not run here)."""
    figures: list[tuple[str, Figure]] = field(default_factory=list)
    """(bench, figure) in the order the benches ran."""
    profiles: list[dict[str, Any]] = field(default_factory=list)
    """Where the time goes (bench/profile_bench.py via figures.emit_profile)."""

    def profile_for(self, case: str) -> dict[str, Any] | None:
        for profile in self.profiles:
            if (
                case.startswith(tuple(profile["covers"]))
                and (not profile["only"] or any(o in case for o in profile["only"]))
                and not any(s in case for s in profile["skip"])
            ):
                return profile
        return None

    @property
    def stamp(self) -> str:
        return f"{self.date.replace(':', '').replace('-', '')[:13]}Z-{self.commit}"

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.date,
            "commit": self.commit,
            "kind": self.kind,
            "load_average": {"start": self.load_start, "end": self.load_end},
            "environment": self.environment,
            "benches": self.benches,
            "figures": [{"bench": bench, **f.to_json()} for bench, f in self.figures],
            "profiles": self.profiles,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        load = data.get("load_average", {})
        return cls(
            date=data["date"],
            commit=data["commit"],
            kind=data.get("kind", "full"),
            load_start=load.get("start", math.nan),
            load_end=load.get("end", math.nan),
            environment=data.get("environment", {}),
            benches=data.get("benches", {}),
            figures=[(f.get("bench", ""), Figure.from_json(f)) for f in data["figures"]],
            profiles=data.get("profiles", []),
        )


def _output(*command: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip().splitlines()[0] if done.stdout + done.stderr else ""


def commit_id() -> str:
    commit = _output("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD") or "unknown"
    dirty = _output("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no")
    return f"{commit}-dirty" if dirty else commit


def environment() -> dict[str, str]:
    """What the figures depend on besides the code: machine, Python, loop, peers."""
    model = ""
    with_cpuinfo = Path("/proc/cpuinfo")
    if with_cpuinfo.exists():
        for line in with_cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__} (the daemon's loop; the standard one without it)"
    except ImportError:
        loop = "asyncio (uvloop not installed)"
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {model}".rstrip(", "),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loop": loop,
        "ssh": _output("ssh", "-V"),
        "dnsmasq": _output(shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "--version"),
    }


def collect(run_dir: Path) -> list[tuple[str, Figure]]:
    """Every ``<bench>.json`` in ``run_dir``: the benches in ``FULL``'s order, then others."""
    order = [bench for bench, _ in FULL]
    figures = []
    paths = sorted(
        run_dir.glob("*.json"),
        key=lambda p: (p.stem not in order, order.index(p.stem) if p.stem in order else 0, p.stem),
    )
    for path in paths:
        data = json.loads(path.read_text())
        figures += [(data["bench"], Figure.from_json(f)) for f in data["figures"]]
    return figures


def collect_profiles(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(run_dir.glob("profiles/*.json"))]


def run_benches(plan: tuple[tuple[str, list[str]], ...], run_dir: Path) -> dict[str, Any]:
    """Each script in turn (a failing one does not stop the others), bounded in time."""
    benches: dict[str, dict[str, Any]] = {}
    for bench, argv in plan:
        if not (HERE / argv[0]).exists():
            print(f"\n=== {bench}: bench/{argv[0]} is not in this checkout", flush=True)
            continue
        print(f"\n=== {bench}: {' '.join(argv)}", flush=True)
        started = time.monotonic()
        try:
            status: int | None = subprocess.run(
                [sys.executable, str(HERE / argv[0]), *argv[1:]],
                env={**os.environ, RUN_DIR_ENV: str(run_dir)},
                timeout=3600,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            status = None
        benches[bench] = {"status": status, "seconds": round(time.monotonic() - started, 1)}
    return benches


# --------------------------------------------------------------------------- previous run


def previous_run(results: Path, kind: str, before: str) -> Run | None:
    """The latest kept run of this kind older than ``before`` (a quick run falls back on the
    latest full one)."""
    places = [results / "quick", results] if kind == "quick" else [results]
    for place in places:
        kept = sorted(p for p in place.glob("*.json") if p.stem < before)
        if kept:
            return Run.from_json(json.loads(kept[-1].read_text()))
    return None


# --------------------------------------------------------------------------- markdown


def _num(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}×" if value == 0 or value >= 0.1 else f"{value:.2g}×"


GROWTH = re.compile(r"^growth\s+(?P<count>\d+) \w+: (?P<metric>.+)$")


def _growth_table(rows: list[tuple[str, Figure]]) -> list[str]:
    """Cases named ``growth <N> <things>: <metric>`` as one row per N, ours / peer per
    metric: how each figure grows with N."""
    table: dict[int, dict[str, Figure]] = {}
    metrics: list[str] = []
    for _bench, f in rows:
        match = GROWTH.match(f.case)
        if match is None:
            continue
        table.setdefault(int(match["count"]), {})[match["metric"]] = f
        if match["metric"] not in metrics:
            metrics.append(match["metric"])
    if len(table) < 2:
        return []
    unit = {m: f.unit for by_metric in table.values() for m, f in by_metric.items()}
    lines = [
        "ours / peer at each count (ours alone where there is no peer):",
        "",
        "| N | " + " | ".join(f"{m} ({unit[m]})" for m in metrics) + " |",
        "|---:|" + "---:|" * len(metrics),
    ]
    for count in sorted(table):
        cells = []
        for metric in metrics:
            f = table[count].get(metric)
            if f is not None:
                cells.append(_num(f.ours) if f.peer is None else f"{_num(f.ours)} / {_num(f.peer)}")
            else:
                cells.append("")
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _bound(f: Figure) -> str:
    sign = "≤" if f.better == "lower" else "≥"
    parts = []
    if f.target is not None:
        parts.append(f"{sign} {f.target:.2f}×")
    if f.limit is not None:
        parts.append(f"{sign} {f.limit:g} {f.unit}")
    return ", ".join(parts)


def _verdict(f: Figure) -> str:
    missed = f.misses()
    if missed:
        return "**missed** " + "; ".join(missed)
    if f.judged():
        return "met"
    return ""


def _table(rows: list[tuple[str, Figure]], previous: dict[str, Figure]) -> list[str]:
    lines = [
        "| case | ours | peer | unit | ratio | target | verdict | previous ratio | load |",
        "|---|---:|---:|---|---:|---|---|---:|---:|",
    ]
    for _bench, f in rows:
        before = previous.get(f.case)
        earlier = _ratio(before.ratio) if before is not None else "—"
        if before is not None and before.ratio is None and before.ours is not None:
            earlier = f"ours {_num(before.ours)}"
        peer = f"{_num(f.peer)} ({f.peer_name})" if f.peer is not None and f.peer_name else ""
        lines.append(
            f"| {f.case} | {_num(f.ours)} | {peer or _num(f.peer)} | {f.unit} | "
            f"{_ratio(f.ratio)} | {_bound(f)} | {_verdict(f)} | {earlier} | {f.load:.2f} |"
        )
    return lines


def _profile_text(profile: dict[str, Any] | None, *, short: bool = False) -> str:
    """A profile's summary and flame graph link; ``short``: its two busiest functions."""
    if profile is None:
        return ""
    graph = profile.get("flamegraph")
    link = f" ([flame graph]({graph}))" if graph else ""
    summary = profile["summary"]
    if short and "busiest: " in summary:
        busiest = summary.split("busiest: ", 1)[1].split(", ")[:2]
        summary = f"busiest: {', '.join(busiest)}; more below"
    return f"{profile['name']}: {summary}{link}"


def markdown(run: Run, previous: Run | None, chart: str | None) -> str:
    env = run.environment
    lines = [
        "# blitzdns benchmark report",
        "",
        f"- run: {run.date} UTC, commit `{run.commit}`, "
        + ("`make bench`" if run.kind == "full" else "`make bench-quick` (small counts)"),
        f"- machine: {env.get('machine', '?')}, Linux {env.get('kernel', '?')}",
        f"- Python {env.get('python', '?')}, loop: {env.get('loop', '?')}",
        f"- peers: {env.get('ssh', '?')}; {env.get('dnsmasq', '?')}",
        f"- load average (1 min): {run.load_start:.2f} at the start, {run.load_end:.2f} at the "
        "end, and beside each figure (the machine is shared; ours and the peer's runs are "
        "interleaved, so both see the same load)",
        "- ratio = ours / peer, from the same run; targets are issue 18's",
    ]
    if previous is not None:
        lines.append(
            f"- previous run: {previous.date} UTC, commit `{previous.commit}` "
            f"({previous.kind}); its ratio is beside each figure"
        )
    failed = [
        f"{bench} (exit {info['status']})" if info["status"] is not None else f"{bench} (timed out)"
        for bench, info in run.benches.items()
        if info["status"] != 0
    ]
    silent = [
        bench
        for bench in run.benches
        if bench not in {b for b, _ in run.figures} and not (bench == "profile" and run.profiles)
    ]
    if failed:
        lines.append(f"- **failed:** {', '.join(failed)}")
    if silent:
        lines.append(f"- **no figures from:** {', '.join(silent)}")
    if run.benches:
        took = ", ".join(f"{b} {info['seconds']:g} s" for b, info in run.benches.items())
        lines.append(f"- durations: {took}")

    judged = [(b, f) for b, f in run.figures if f.judged()]
    missed = [(b, f) for b, f in judged if f.misses()]
    lines += ["", f"## Targets: {len(judged) - len(missed)} met, {len(missed)} missed", ""]
    if chart:
        lines += [f"![ratios against their targets]({chart})", ""]
    if missed:
        lines += ["| missed | by how much | where the time goes |", "|---|---|---|"]
        for _bench, f in missed:
            profile = _profile_text(run.profile_for(f.case), short=True)
            where = f.note or profile or "not profiled in this run"
            lines.append(f"| {f.case} | {'; '.join(f.misses())} | {where} |")
    else:
        lines.append("Every target with a figure in this run is met.")

    if run.profiles:
        lines += ["", "## Where the time goes (this run)", ""]
        lines += [
            "py-spy samples of our process under each bench's load (bench/profile_bench.py); "
            "time spent in C (uvloop's loop, socket calls, OpenSSL) counts for the Python "
            "frame that called it, so `runners.Runner.run` is the event loop itself.",
            "",
        ]
        lines += [f"- {_profile_text(profile)}" for profile in run.profiles]

    earlier = {f.case: f for _, f in previous.figures} if previous is not None else {}
    sections: dict[str, list[tuple[str, Figure]]] = {}
    for bench, f in run.figures:
        sections.setdefault(f.group or bench, []).append((bench, f))
    for title, rows in sections.items():
        lines += ["", f"## {title}", "", *_growth_table(rows), *_table(rows, earlier)]
        notes = [(f.case, f.note) for _, f in rows if f.note and not f.misses()]
        if notes:
            lines += ["", *(f"- {case}: {note}" for case, note in notes)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- chart


def chart(run: Run, previous: Run | None, path: Path) -> bool:
    """Bars of every ratio with a bound (log scale), the target as a mark, the previous
    run's ratio as a dot. False when matplotlib is missing or nothing has a ratio."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart")
        return False
    rows = [f for _, f in run.figures if f.ratio is not None and f.judged()]
    if not rows:
        return False
    earlier = {f.case: f.ratio for _, f in previous.figures} if previous is not None else {}
    height = 1.2 + 0.32 * len(rows)
    figure, axes = plt.subplots(figsize=(10, height))
    positions = list(range(len(rows)))[::-1]
    colours = ["#c0392b" if f.misses() else "#27ae60" for f in rows]
    ratios = [f.ratio or 1.0 for f in rows]
    axes.barh(positions, [r - 1 for r in ratios], left=1.0, color=colours, height=0.6)
    earlier_ratios = [r for f in rows if (r := earlier.get(f.case)) is not None]
    for y, f in zip(positions, rows, strict=True):
        if f.target is not None:
            axes.plot([f.target, f.target], [y - 0.4, y + 0.4], color="black", linewidth=2)
        before = earlier.get(f.case)
        if before is not None:
            axes.plot([before], [y], marker="o", color="#34495e", markersize=4)
        right = (f.ratio or 1.0) >= 1.0
        axes.annotate(
            f" {f.ratio:.2f}× " if f.ratio is not None else "",
            (f.ratio or 1.0, y),
            va="center",
            ha="left" if right else "right",
            fontsize=7,
        )
    axes.set_xscale("log")
    ends = ratios + [f.target for f in rows if f.target is not None] + list(earlier_ratios)
    axes.set_xlim(min(*ends, 1.0) / 1.25, max(*ends, 1.0) * 1.25)
    axes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}×"))
    axes.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    axes.tick_params(axis="x", which="minor", labelsize=6)
    axes.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    axes.set_yticks(positions)
    axes.set_yticklabels([f.case for f in rows], fontsize=7)
    axes.set_xlabel("ratio ours / peer (log scale); black mark: target; dot: previous run")
    axes.set_title(f"blitzdns / peer, {run.date} UTC, commit {run.commit}", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# --------------------------------------------------------------------------- main


def write(run: Run, results: Path) -> Path:
    """Keep the run's figures and write REPORT.md and ratios.png beside them."""
    place = results / "quick" if run.kind == "quick" else results
    place.mkdir(parents=True, exist_ok=True)
    kept = place / f"{run.stamp}.json"
    previous = previous_run(results, run.kind, kept.stem)
    kept.write_text(json.dumps(run.to_json(), indent=1, ensure_ascii=False) + "\n")
    png = place / "ratios.png"
    drawn = chart(run, previous, png)
    report = place / "REPORT.md"
    report.write_text(markdown(run, previous, png.name if drawn else None))
    print(f"\nreport: {report}\nfigures kept: {kept}" + (f"\nchart: {png}" if drawn else ""))
    return report


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    running = sub.add_parser("run", help="run the benches, then write the report")
    running.add_argument("--quick", action="store_true", help="headline cases, small counts")
    writing = sub.add_parser("write", help="write the report from a run directory")
    writing.add_argument("run_dir", type=Path)
    writing.add_argument("--quick", action="store_true", help="file it as a quick run")
    for each in (running, writing):
        each.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    kind = "quick" if args.quick else "full"
    date, commit, load_start = now_utc(), commit_id(), os.getloadavg()[0]
    if args.command == "write":
        if not args.run_dir.is_dir():
            print(f"{args.run_dir} is not a directory", file=sys.stderr)
            return 2
        run_dir, benches = args.run_dir, {}
    else:
        run_dir = Path(tempfile.mkdtemp(prefix=f"blitzdns-bench-{kind}-"))
        benches = run_benches(QUICK if args.quick else FULL, run_dir)
    run = Run(
        date=date,
        commit=commit,
        kind=kind,
        load_start=load_start,
        load_end=os.getloadavg()[0],
        environment=environment(),
        benches=benches,
        figures=collect(run_dir),
        profiles=collect_profiles(run_dir),
    )
    write(run, args.results)
    if args.command == "run":
        shutil.rmtree(run_dir, ignore_errors=True)
        return 0 if all(info["status"] == 0 for info in benches.values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
