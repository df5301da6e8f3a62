"""Shared parts of the DNS fuzz and stress runs (``fuzz_dns.py``, ``stress_dns.py``).

The resolver runs as its own process (``python -m blitzdns.dns``) on 127.0.0.1, its log
in a file, so the runs can count its crashes, tracebacks, descriptors and memory from
outside, as an operator would. Everything listens on loopback; every loop is bounded.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from dns_bench import dnsmasq_command

ROOT = Path(__file__).resolve().parent.parent
PROTECTED_NAME = "dnd.dartmouth.edu"
PROTECTED_ADDRESS = "127.77.0.1"
FORWARDED_SUFFIX = "fwd.test"
FORWARDED_ADDRESS = "192.0.2.10"


def dnsmasq_binary() -> str | None:
    found = shutil.which("dnsmasq")
    if found is None and Path("/usr/sbin/dnsmasq").exists():
        found = "/usr/sbin/dnsmasq"
    return found


def free_port() -> int:
    from blitzdns.demo import free_dns_port

    return free_dns_port()


def start_dnsmasq(*options: str) -> tuple[subprocess.Popen[bytes], int]:
    """A dnsmasq on 127.0.0.1 answering ``*.fwd.test`` (cache off), and its port."""
    if dnsmasq_binary() is None:
        raise SystemExit("dnsmasq is not installed (Debian package dnsmasq)")
    for _ in range(5):
        port = free_port()
        process = subprocess.Popen(
            dnsmasq_command(
                port,
                "--cache-size=0",
                "--local-ttl=60",
                f"--address=/{FORWARDED_SUFFIX}/{FORWARDED_ADDRESS}",
                *options,
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if answered(port, f"ready.{FORWARDED_SUFFIX}", attempts=50) is not None:
            return process, port
        process.kill()
        process.wait()
    raise SystemExit("dnsmasq did not start")


@dataclass
class Stub:
    """The resolver as a process: its port, its log file, and how to stop it."""

    process: subprocess.Popen[str]
    port: int
    log_path: Path
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
        try:
            out, _ = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        for line in out.splitlines():
            if line.startswith("stats "):
                self.stats = ast.literal_eval(line[6:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_stub(
    upstreams: list[str],
    log_path: Path,
    *,
    timeout_s: float | None = None,
    options: tuple[str, ...] = (),
) -> Stub:
    """``python -m blitzdns.dns`` on a free port of 127.0.0.1 forwarding to ``upstreams``
    (``options``: more of its flags, e.g. ``--no-steer``)."""
    command = [sys.executable, "-m", "blitzdns.dns", "--listen", "127.0.0.1:0", "--no-loop-probe"]
    command += options
    for upstream in upstreams:
        command += ["--upstream", upstream]
    if timeout_s is not None:
        config = log_path.with_suffix(".toml")
        config.write_text(f'preset = "blitzmail"\n[dns]\ntimeout_s = {timeout_s}\n')
        command += ["--config", str(config)]
    log = log_path.open("w")
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert process.stdout is not None
    ready = process.stdout.readline().split()
    if ready[:1] != ["ready"]:
        process.kill()
        raise SystemExit(f"the resolver did not start: {log_path.read_text()}")
    return Stub(process, int(ready[1].rsplit(":", 1)[1]), log_path)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(frozen=True)
class Answer:
    rcode: str
    addresses: tuple[str, ...]
    seconds: float


def answered(
    port: int,
    name: str,
    rdtype: str = "A",
    *,
    tcp: bool = False,
    attempts: int = 1,
    timeout: float = 1.0,
) -> Answer | None:
    """Ask once (or up to ``attempts`` times); None when no reply came in time."""
    query = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    for _ in range(attempts):
        started = time.monotonic()
        try:
            reply = send(query, "127.0.0.1", port=port, timeout=timeout)
        except (dns.exception.Timeout, OSError):
            continue
        addresses = tuple(
            item.address
            for rrset in reply.answer
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
            for item in rrset
        )
        return Answer(dns.rcode.to_text(reply.rcode()), addresses, time.monotonic() - started)
    return None


def healthy(port: int) -> tuple[bool, bool]:
    """Whether a protected and a forwarded name get their correct answers (retried)."""
    protected = answered(port, PROTECTED_NAME, attempts=5)
    forwarded = answered(port, f"check.{FORWARDED_SUFFIX}", attempts=5, timeout=3.0)
    return (
        protected is not None and protected.addresses == (PROTECTED_ADDRESS,),
        forwarded is not None and forwarded.addresses == (FORWARDED_ADDRESS,),
    )
