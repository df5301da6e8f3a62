#!/usr/bin/env python3
"""Roaming benchmark (issue 15): blitzdns beside ``ssh -N -L`` across network switches.

One run, in namespaces made here (:class:`tests.netns.roamlab.RoamLab`: a client with two
uplinks to a router, sshd and an echo server behind it). For each forwarder in turn, a
stream of short connections (one every 50 ms, 60 s timeout each) runs through it while
the client switches uplinks as a Wi-Fi change does (new address and default route, then
the old address deleted), ``--switches`` times:

* route usable → link up: from the moment the new default route is in place to the moment
  the forwarder's SSH connection from the new address is established (blitzdns: the
  status's ``since`` of the link coming up; the peer: polled with ``ss``);
* how many short connections that started after the switch (old address deleted) failed;
* a resume: the forwarder frozen (SIGSTOP) for ``--pause`` seconds while the network
  switches, then thawed: thaw → link up.

The peer is ``ssh -N -L`` with autossh's keepalives (``ServerAliveInterval=15``,
``ServerAliveCountMax=3``), started again at once whenever it exits, as autossh would
(without autossh's own monitor port). blitzdns keeps its default keepalives (15 s × 3)
too. Both use the same sshd and echo server. All loops are bounded in count and in time.

Usage: ``python bench/roam_bench.py [--switches 20] [--peer-switches 2] [--pause 60]
[--backend asyncssh|openssh]`` (root: it makes network namespaces).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.netns.lab import (  # noqa: E402
    Blitzdns,
    Namespace,
    Sshd,
    SshKeys,
    missing_prerequisite,
    wait_for,
)
from tests.netns.roamlab import (  # noqa: E402
    ECHO_PORT,
    SERVER_IP,
    SSHD_LISTEN,
    UPLINKS,
    Records,
    RoamLab,
    agent,
    link_source,
    roam_config,
    status,
)

from figures import Figure, emit  # noqa: E402

PEER_PORT = 17902
LINK_WAIT_S = 240.0
"""Upper bound for one link to come back (the peer needs about 45 s and a restart)."""


@dataclass
class Run:
    name: str
    link_up_s: list[float] = field(default_factory=list)
    failed_after: int = 0
    started_after: int = 0
    """Short connections started after a switch (before the next one), and failed."""
    failed_resume: int = 0
    started_resume: int = 0
    """The same after the switch made while frozen."""
    resume_s: float | None = None


def _switch(lab: RoamLab) -> tuple[str, float, float]:
    """Switch uplinks; (the new address, the wall-clock time the new route was usable, and
    the ``CLOCK_MONOTONIC`` time the switch was complete: the old address deleted).

    The link's ``since`` is wall-clock time; the short connections' starts are monotonic,
    which every namespace shares and no clock adjustment moves."""
    client = lab["client"]
    old, new = lab.active, lab.standby
    client.ip("addr", "add", f"{UPLINKS[new][0]}/24", "dev", new)
    client.ip("route", "replace", "default", "via", UPLINKS[new][1], "dev", new)
    usable = time.time()
    client.ip("addr", "del", f"{UPLINKS[old][0]}/24", "dev", old)
    lab.active = new
    return UPLINKS[new][0], usable, time.monotonic()


def _measure(
    lab: RoamLab,
    run: Run,
    switches: int,
    pause_s: float,
    link_up_at: Callable[[str], float | None],
    frozen_pid: Callable[[], int],
    stream: Records,
) -> None:
    wait_for(lambda: any(r["ok"] for r in stream.results()), f"{run.name} carrying")
    switch_times = []
    for number in range(switches):
        new, usable, done = _switch(lab)
        switch_times.append(done)
        up = wait_for(lambda n=new: link_up_at(n), f"{run.name} link up", timeout=LINK_WAIT_S)
        run.link_up_s.append(up - usable)
        print(f"  {run.name} switch {number + 1}: {up - usable:.3f} s", flush=True)
        time.sleep(0.5)  # a few short connections on the new link before the next switch
    if pause_s > 0:
        pid = frozen_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            new, usable, done = _switch(lab)
            switch_times.append(done)
            time.sleep(pause_s)
        finally:
            os.kill(pid, signal.SIGCONT)
            thawed = time.time()
        up = wait_for(lambda: link_up_at(new), f"{run.name} link up", timeout=LINK_WAIT_S)
        run.resume_s = up - thawed
        print(f"  {run.name} resume after {pause_s:g} s: {run.resume_s:.3f} s", flush=True)
    time.sleep(1.0)
    stream.stop()
    for index, at in enumerate(switch_times):
        end = switch_times[index + 1] if index + 1 < len(switch_times) else float("inf")
        started = [r for r in stream.results() if at < r["start"] < end]
        failed = [r for r in started if not r["ok"]]
        if index < switches:
            run.started_after += len(started)
            run.failed_after += len(failed)
        else:
            run.started_resume += len(started)
            run.failed_resume += len(failed)
        for r in failed[:3]:
            print(f"  failed short (switch {index + 1}): {r}")


def bench_blitzdns(
    lab: RoamLab, keys: SshKeys, sshd: Sshd, root: Path, args: argparse.Namespace
) -> Run:
    run = Run(f"blitzdns ({args.backend})")
    lab.settle_on("up1")
    daemon = Blitzdns(lab["client"], root, roam_config(keys, root, backend=args.backend), sshd)
    daemon.start("--verbose")
    try:
        daemon.wait_ready()
        mouth = daemon.mouth("dnd.dartmouth.edu")
        stream = agent(
            lab["client"], root, "shorts-blitzdns", "shorts", "--to", f"{mouth}:{ECHO_PORT}",
            "--interval", "0.05", "--timeout", str(args.pause + 60),
        )  # fmt: skip

        def link_up_at(new: str) -> float | None:
            if link_source(lab["client"]) != new:
                return None
            tunnel = status(lab["client"], daemon).get("tunnel") or {}
            return float(tunnel["since"]) if tunnel.get("status") == "up" else None

        assert daemon.proc is not None
        pid = daemon.proc.pid
        _measure(lab, run, args.switches, args.pause, link_up_at, lambda: pid, stream)
        tunnel = status(lab["client"], daemon).get("tunnel") or {}
        print(f"  last relink: {tunnel.get('last_relink')}")
    finally:
        daemon.stop()
    return run


def _ssh_pid(ns: Namespace) -> int:
    for pid in ns.pids():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "ssh":
                return pid
        except OSError:
            continue
    raise RuntimeError("no ssh process in the client namespace")


def bench_peer(lab: RoamLab, keys: SshKeys, root: Path, args: argparse.Namespace) -> Run:
    run = Run("ssh -N -L (ServerAlive 15 × 3, restarted)")
    lab.settle_on("up1")
    known_hosts = root / "known_hosts_roam"
    argv = [
        "ssh", "-N", "-F", "/dev/null", "-i", str(keys.client_key),
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
        "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes",
        "-L", f"127.0.0.1:{PEER_PORT}:{SERVER_IP}:{ECHO_PORT}", f"root@{SERVER_IP}",
    ]  # fmt: skip
    peer = lab["client"].spawn(
        sys.executable, str(HERE.parent / "tests" / "netns" / "roam_agent.py"), "autossh",
        "--", *argv, log=root / "autossh.log",
    )  # fmt: skip
    try:
        wait_for(lambda: link_source(lab["client"]) == UPLINKS["up1"][0], "the peer's link")
        stream = agent(
            lab["client"], root, "shorts-peer", "shorts", "--to", f"127.0.0.1:{PEER_PORT}",
            "--interval", "0.05", "--timeout", str(args.pause + 60),
        )  # fmt: skip

        def link_up_at(new: str) -> float | None:
            return time.time() if link_source(lab["client"]) == new else None

        _measure(
            lab, run, args.peer_switches, args.pause, link_up_at,
            lambda: _ssh_pid(lab["client"]), stream,
        )  # fmt: skip
    finally:
        os.kill(peer.pid, signal.SIGTERM)
        peer.wait(timeout=10)
    return run


def _p50(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f})"


def figures_of(ours: Run, peer: Run) -> list[Figure]:
    """blitzdns beside restarted ``ssh -L`` across uplink switches, for the report."""
    out = []
    if ours.link_up_s:
        peer_s = statistics.median(peer.link_up_s) if peer.link_up_s else None
        out.append(
            Figure(
                "roam route usable → link up, p50",
                statistics.median(ours.link_up_s),
                peer_s,
                "s",
                peer_name="ssh -L restarted",
                group="roaming",
            )
        )
    share = ours.failed_after / max(ours.started_after, 1) * 100
    peer_share = peer.failed_after / max(peer.started_after, 1) * 100
    out.append(
        Figure(
            "roam connections failed after a switch",
            share,
            peer_share,
            "%",
            peer_name="ssh -L restarted",
            group="roaming",
        )
    )
    if ours.resume_s is not None:
        out.append(
            Figure(
                "roam thaw → link up",
                ours.resume_s,
                peer.resume_s,
                "s",
                peer_name="ssh -L restarted",
                group="roaming",
            )
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--peer-switches", type=int, default=2)
    parser.add_argument("--pause", type=float, default=60.0, help="0: no resume test")
    parser.add_argument("--backend", choices=("asyncssh", "openssh"), default="asyncssh")
    parser.add_argument("--keep", action="store_true", help="keep the logs (path printed)")
    args = parser.parse_args()
    reason = missing_prerequisite()
    if reason is not None:
        print(f"roam bench skipped: {reason}")
        return 0
    with tempfile.TemporaryDirectory(prefix="roam-bench-") as tmp:
        root = Path(tempfile.mkdtemp(prefix="roam-bench-")) if args.keep else Path(tmp)
        if args.keep:
            print(f"logs in {root}", flush=True)
        lab = RoamLab(f"{os.getpid()}b", root)
        try:
            lab.create()
            keys = SshKeys.make(root)
            roam_config(keys, root)  # writes known_hosts for the server, used by the peer too
            sshd = Sshd(lab["server"], keys, root, listen=SSHD_LISTEN).start()
            agent(lab["server"], root, "servers", "serve", "--address", SERVER_IP)
            runs = [bench_blitzdns(lab, keys, sshd, root, args)]
            runs.append(bench_peer(lab, keys, root, args))
        finally:
            lab.destroy()
    print()
    print(f"{'forwarder':42} {'route usable → link up, p50':38} {'n':>3} "
          f"{'failed after switch':>20} {'thaw → link up':>15} {'failed after':>13}")  # fmt: skip
    for run in runs:
        failed = f"{run.failed_after} of {run.started_after}"
        resumed = f"{run.resume_s:.3f} s" if run.resume_s is not None else "-"
        failed_resume = f"{run.failed_resume} of {run.started_resume}"
        print(f"{run.name:42} {_p50(run.link_up_s):38} {len(run.link_up_s):>3} "
              f"{failed:>20} {resumed:>15} {failed_resume:>13}")  # fmt: skip
    emit("roam", figures_of(*runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
