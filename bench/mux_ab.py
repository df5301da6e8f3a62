#!/usr/bin/env python3
"""Same-run A/B of the openssh backend's round trip (issue 18's row "connection round trip
p50, openssh backend"), any number of trees beside ``ssh -L``.

    python bench/mux_ab.py --tree base=DIR --tree new=DIR [--loops uvloop,asyncio]
        [--rounds 5] [--round-trips 500] [--cipher aes128-gcm@openssh.com]

Each tree (a checkout: its own ``bench/tunnel_bench.py --serve``, its own ``src`` first on
the path) runs ``backend="openssh"``; all forwarders run at once in tunnel_bench's
interleaved batches of 50, ``--rounds`` rounds, each figure the median of the rounds; the
ratio is to ``ssh -L`` of the same run. CPU per connection is the forwarder's process tree
(ours and the ``ssh -M`` master). Under the machine-wide bench lock (one hold per cipher).
Needs root (the lab starts sshd), like bench/tunnel_bench.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tunnel_bench  # noqa: E402
from roundtrip_ab import rounds_beside_ssh, start  # noqa: E402
from tunnel_bench import Lab  # noqa: E402


def command(script: Path, lab_: Lab, cipher: str, mouths: tuple[int, int], loop: str) -> list[str]:
    gateway = f"root@127.0.0.1:{lab_.sshd_port}"
    argv = [sys.executable, str(script), "--serve", "tunnel", "--gateway", gateway]
    argv += ["--backend", "openssh", "--loop", loop]
    argv += ["--ssh-config", str(lab_.ssh_config(cipher)), "--known-hosts", str(lab_.known_hosts)]
    argv += ["--key", str(lab_.key)]
    argv += ["--forward", f"{mouths[0]}:{lab_.iperf_port}"]
    argv += ["--forward", f"{mouths[1]}:{lab_.echo_port}"]
    return argv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=DIR")
    parser.add_argument("--loops", default="uvloop")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--cipher", action="append")
    args = parser.parse_args()
    trees = dict(spec.split("=", 1) for spec in args.tree)
    original = tunnel_bench.start_forwarder

    def start_forwarder(
        kind: str, lab_: Lab, cipher: str, mouths: tuple[int, int]
    ) -> subprocess.Popen[bytes]:
        if kind == "openssh":
            return original(kind, lab_, cipher, mouths)
        name, _, loop = kind.partition("+")
        script = Path(trees[name]).resolve() / "bench" / "tunnel_bench.py"
        return start(command(script, lab_, cipher, mouths, loop), script)

    tunnel_bench.start_forwarder = start_forwarder  # type: ignore[assignment]
    kinds = ["openssh"] + [f"{n}+{loop}" for loop in args.loops.split(",") for n in trees]
    ciphers = args.cipher or [tunnel_bench.CIPHERS[0]]
    rounds_beside_ssh(kinds, ciphers, args.rounds, args.round_trips)


if __name__ == "__main__":
    main()
