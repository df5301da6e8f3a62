"""One benchmark figure (ours beside a peer's, from the same run) and how a script hands it on.

A bench script builds :class:`Figure` objects from its medians and calls :func:`emit` once
at the end::

    from figures import Figure, emit

    emit("dns", [
        Figure("DNS protected name, CPU/query", ours=1.9, peer=1.8, unit="µs/query",
               peer_name="dnsmasq", target=1.0, note="profile: bench/results/dns.svg"),
    ])

``emit`` prints the figures as a small table and, when ``$BLITZDNS_BENCH_RUN`` names a
directory (``make bench`` and ``make bench-quick`` set it), writes them to
``<dir>/<bench>.json`` for ``bench/report.py``. Run by hand, a script behaves as before.

Ratio = ours / peer. ``better`` says which way is good; ``target`` is a bound on the ratio
(``better="lower"``: ratio ≤ target; ``"higher"``: ratio ≥ target), ``limit`` one on ours
itself in ``unit`` (e.g. RSS ≤ 40 MB). ``note`` is where the owner says where the time goes
(a short sentence or a profile's path). ``group`` puts a figure in a separate table of the
report (``"growth: connections"``). The load average is taken when the figure is made.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

RUN_DIR_ENV = "BLITZDNS_BENCH_RUN"


def load_average() -> float:
    """The 1-minute load average (the machine is shared: every figure carries it)."""
    return os.getloadavg()[0]


@dataclass(frozen=True)
class Figure:
    case: str
    ours: float
    peer: float | None
    unit: str
    better: Literal["lower", "higher"] = "lower"
    target: float | None = None
    """Bound on ours / peer (≤ for lower-is-better, ≥ for higher-is-better)."""
    limit: float | None = None
    """Bound on ours itself, in ``unit``."""
    peer_name: str = ""
    note: str = ""
    group: str = ""
    load: float = field(default_factory=load_average)

    def __post_init__(self) -> None:
        if self.better not in ("lower", "higher"):
            raise ValueError(f"better must be 'lower' or 'higher', not {self.better!r}")

    @property
    def ratio(self) -> float | None:
        if self.peer is None or self.peer == 0 or math.isnan(self.peer) or math.isnan(self.ours):
            return None
        return self.ours / self.peer

    def misses(self) -> list[str]:
        """How far each bound is missed ("1.12× vs ≤ 1.00×: 12% over"); empty when met."""
        out = []
        ratio = self.ratio
        sign = "≤" if self.better == "lower" else "≥"
        if self.target is not None and ratio is not None:
            gap = ratio / self.target - 1 if self.better == "lower" else 1 - ratio / self.target
            if gap > 0:
                side = "over" if self.better == "lower" else "short"
                out.append(f"{ratio:.2f}× vs {sign} {self.target:.2f}×: {gap:.0%} {side}")
        if self.limit is not None and not math.isnan(self.ours):
            gap = self.ours - self.limit if self.better == "lower" else self.limit - self.ours
            if gap > 0:
                side = "over" if self.better == "lower" else "short"
                out.append(
                    f"{self.ours:.3g} vs {sign} {self.limit:g} {self.unit}: {gap:.3g} {side}"
                )
        return out

    def judged(self) -> bool:
        return (self.target is not None and self.ratio is not None) or self.limit is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Figure:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


def emit(bench: str, figures: Iterable[Figure], run_dir: str | None = None) -> Path | None:
    """Print ``figures`` and, in a report run, write them to ``<run dir>/<bench>.json``."""
    figures = list(figures)
    print(f"\nfigures ({bench}): ratio = ours / peer")
    for f in figures:
        ratio = f"{f.ratio:.2f}×" if f.ratio is not None else "—"
        peer = f"{f.peer:.4g}" if f.peer is not None else "—"
        missed = "; ".join(f.misses())
        verdict = ("MISSED " + missed) if missed else ("met" if f.judged() else "")
        print(f"  {f.case:<52} {f.ours:>10.4g} {peer:>10} {f.unit:<10} {ratio:>7}  {verdict}")
    where = run_dir if run_dir is not None else os.environ.get(RUN_DIR_ENV)
    if not where:
        return None
    path = Path(where) / f"{bench}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"bench": bench, "figures": [f.to_json() for f in figures]}
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    return path


def emit_profile(
    name: str,
    covers: list[str],
    summary: str,
    flamegraph: str | None,
    *,
    only: list[str] | None = None,
    skip: list[str] | None = None,
    run_dir: str | None = None,
) -> Path | None:
    """Record where the time goes for the cases whose name starts with one of ``covers``
    (and, if given, contains one of ``only`` and none of ``skip``): a one-line ``summary``
    and the flame graph's path relative to bench/results/. The report shows it beside a
    missed target that has no ``note`` of its own."""
    print(f"\nprofile {name}: {summary}" + (f" ({flamegraph})" if flamegraph else ""))
    where = run_dir if run_dir is not None else os.environ.get(RUN_DIR_ENV)
    if not where:
        return None
    path = Path(where) / "profiles" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": name,
        "covers": covers,
        "only": only or [],
        "skip": skip or [],
        "summary": summary,
        "flamegraph": flamegraph,
    }
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    return path
