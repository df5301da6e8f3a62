"""bench/report.py on two made-up runs: the report shows this run's ratio beside the previous
run's, says by how much a target is missed and where the time goes, keeps the run's figures,
and draws the chart. No benchmark runs here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import report
from figures import Figure, emit, emit_profile


def previous_run(results: Path) -> None:
    """A kept full run from an earlier commit: DNS CPU/query at 1.30×, bulk up at 0.50×."""
    earlier = report.Run(
        date="2026-12-01T10:00:00",
        commit="aaaaaaa",
        kind="full",
        load_start=1.0,
        load_end=1.5,
        environment={},
        figures=[
            ("dns", Figure("DNS protected, CPU/query", 2.6, 2.0, "µs/query", target=1.0)),
            ("tunnel", Figure("bulk up", 1.0, 2.0, "Gbit/s", better="higher", target=0.9)),
        ],
    )
    results.mkdir(parents=True)
    (results / f"{earlier.stamp}.json").write_text(json.dumps(earlier.to_json()))


def this_run(run_dir: Path) -> None:
    emit(
        "dns",
        [
            Figure(
                "DNS protected, CPU/query",
                2.24,
                2.0,
                "µs/query",
                target=1.0,
                note="dnslib parse, see profile-dns.svg",
            )
        ],
        run_dir=str(run_dir),
    )
    emit(
        "tunnel",
        [
            Figure("bulk up", 1.9, 2.0, "Gbit/s", better="higher", target=0.9),
            Figure("RSS idle", 46.0, 13.0, "MB", limit=40.0),
        ],
        run_dir=str(run_dir),
    )
    emit(
        "growth",
        [
            Figure(f"growth {n} conns: RSS", rss, peer, "MB", group="growth: connections")
            for n, rss, peer in ((1, 50.0, 8.0), (1000, 60.0, 40.0))
        ],
        run_dir=str(run_dir),
    )
    emit_profile("memory", ["RSS"], "asyncssh 30 MB", "profiles/memory.svg", run_dir=str(run_dir))
    # Listed first, but it leaves "RSS idle" out.
    emit_profile("a-peak", ["RSS"], "not this one", None, skip=["idle"], run_dir=str(run_dir))


def test_report_shows_both_runs_and_what_is_missed(tmp_path: Path) -> None:
    results, run_dir = tmp_path / "results", tmp_path / "run"
    previous_run(results)
    this_run(run_dir)
    assert report.main(["write", str(run_dir), "--results", str(results)]) == 0

    text = (results / "REPORT.md").read_text()
    rows = text.split("\n## dns\n", 1)[1].splitlines()
    dns_row = next(line for line in rows if line.startswith("| DNS protected"))
    assert "1.12×" in dns_row  # this run
    assert "1.30×" in dns_row  # the previous run, beside it
    assert "**missed** 1.12× vs ≤ 1.00×: 12% over" in dns_row
    bulk_row = next(line for line in rows if line.startswith("| bulk up"))
    assert "0.95×" in bulk_row and "0.50×" in bulk_row and "| met |" in bulk_row
    assert "46 vs ≤ 40 MB: 6 over" in text
    missed = text.split("## Targets: 1 met, 2 missed", 1)[1]
    assert "dnslib parse, see profile-dns.svg" in missed
    rss_row = next(line for line in missed.splitlines() if line.startswith("| RSS idle"))
    assert "memory: asyncssh 30 MB ([flame graph](profiles/memory.svg))" in rss_row
    assert "not this one" not in rss_row
    assert "commit `aaaaaaa`" in text
    growth = text.split("## growth: connections", 1)[1]
    assert "| N | RSS (MB) |" in growth
    assert "| 1 | 50.0 / 8.00 |" in growth and "| 1000 | 60.0 / 40.0 |" in growth

    kept = [p for p in results.glob("*.json") if "aaaaaaa" not in p.name]
    assert len(kept) == 1
    again = report.Run.from_json(json.loads(kept[0].read_text()))
    assert [(bench, f.case) for bench, f in again.figures] == [
        ("dns", "DNS protected, CPU/query"),
        ("tunnel", "bulk up"),
        ("tunnel", "RSS idle"),
        ("growth", "growth 1 conns: RSS"),
        ("growth", "growth 1000 conns: RSS"),
    ]


def test_chart_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the 'bench' extra (make bench installs it)")
    results, run_dir = tmp_path / "results", tmp_path / "run"
    previous_run(results)
    this_run(run_dir)
    report.main(["write", str(run_dir), "--results", str(results)])
    png = results / "ratios.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![ratios against their targets](ratios.png)" in (results / "REPORT.md").read_text()


def test_a_missing_run_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report.main(["write", str(tmp_path / "nowhere"), "--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("is not a directory")
