"""A small network of namespaces for the netns tests, and the real programs run in it.

Topology (every address exists only inside these namespaces)::

    lan2 10.77.2.2 ──┐                                      ┌── srv 198.51.100.2 (DND)
                     │ 10.77.2.1 (shared)                   │        198.51.100.3 (dasher)
                   client 192.0.2.2 ──── 192.0.2.1 gw 198.51.100.1 ─┘    198.51.100.4 (prancer)
                     │ 10.77.3.1
    lan3 10.77.3.2 ──┘   (route to 10.77.2.0/24 via 10.77.3.1)

``client`` is the user's machine (blitzdns runs there); it has no route to the server
network, and ``gw`` does not forward (ip_forward 0), so the servers are reachable only
through a connection that the gateway itself opens: sshd's ``direct-tcpip`` channel, or
the plain relay of the "without blitzdns" half. ``lan2`` is an allowed second machine,
``lan3`` a disallowed third (issue 7). IPv6 is off on every link, so the capture holds
only what the test is about.

Every process is started through :meth:`Namespace.spawn` and killed by id at
teardown; :meth:`Lab.destroy` then kills whatever still runs inside the namespaces
(sshd's per-connection children) and deletes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.peers import daemon_status, wait_for

from .pcap import Frame, read_pcap

PYTHON = sys.executable
BLITZDNS = str(Path(sys.executable).with_name("blitzdns"))
AGENT = str(Path(__file__).with_name("agent.py"))
SSHD = "/usr/sbin/sshd"

CLIENT_IP = "192.0.2.2"
GATEWAY_IP = "192.0.2.1"
CLIENT_LINK = "bzc"
GATEWAY_SERVER_IP = "198.51.100.1"
SERVER_NET = "198.51.100.0/24"
DND_IP = "198.51.100.2"
DASHER_IP = "198.51.100.3"
PRANCER_IP = "198.51.100.4"
SHARED_IP = "10.77.2.1"
LAN2_IP = "10.77.2.2"
LAN2_NET = "10.77.2.0/24"
LAN3_GATE_IP = "10.77.3.1"
LAN3_IP = "10.77.3.2"
SSH_PORT = 22
DND = "dnd.dartmouth.edu"
DASHER = "dasher.dartmouth.edu"
PRANCER = "prancer.dartmouth.edu"

WAIT_S = 15.0
"""Upper bound for any single wait in this suite (a safety net, never a measurement)."""


def ip_command(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """``ip ARGS`` in the root namespace (namespace management), output captured."""
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def missing_prerequisite() -> str | None:
    """Why this machine cannot run the netns tests, or None when it can."""
    if os.geteuid() != 0:
        return "network namespace tests need root"
    for tool in ("ip", "tcpdump", "ssh-keygen", "dig"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} (openssh-server) is not installed"
    if not os.access(BLITZDNS, os.X_OK):
        return f"{BLITZDNS} is missing (install the package into the venv)"
    probe = f"bz-{os.getpid()}-probe"
    made = ip_command("netns", "add", probe)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    ip_command("netns", "del", probe)
    return None


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    """Signal one process we started (by pid), escalate to SIGKILL, and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@dataclass
class Namespace:
    """One network namespace and the processes started in it."""

    name: str
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    def argv(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def run(
        self, *command: str, timeout: float = WAIT_S, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside the namespace (bounded by ``timeout``)."""
        done = subprocess.run(
            self.argv(*command),
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_env(),
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} in {self.name} exited {done.returncode}: "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done

    def ip(self, *args: str) -> None:
        ip_command("-n", self.name, *args, check=True)

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def spawn(self, *command: str, log: Path, stdout: Path | None = None) -> subprocess.Popen[Any]:
        """Start a long-running process inside the namespace; it is killed at teardown."""
        with open(log, "ab") as err, open(stdout or log, "ab") as out:
            proc = subprocess.Popen(
                self.argv(*command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=_env(),
            )
        self.processes.append(proc)
        return proc

    def spawn_ready(
        self, *command: str, marker: str, log: Path, stdout: Path | None = None
    ) -> subprocess.Popen[Any]:
        """:meth:`spawn`, then wait until ``marker`` shows in its output; fail if it dies."""
        proc = self.spawn(*command, log=log, stdout=stdout)
        said = stdout or log
        wait_for(lambda: marker in read_text(said) or proc.poll() is not None, command[0])
        if proc.poll() is not None:
            raise AssertionError(f"{' '.join(command[:3])} died: {read_text(log)[-2000:]}")
        return proc

    def agent(self, *args: str, timeout: float = WAIT_S) -> dict[str, Any]:
        """Run one agent subcommand to completion; its JSON result (a failure raises)."""
        done = self.run(PYTHON, AGENT, *args, timeout=timeout, check=False)
        lines = done.stdout.strip().splitlines()
        if not lines:
            raise AssertionError(f"agent {args[0]} in {self.name} said nothing: {done.stderr}")
        result: dict[str, Any] = json.loads(lines[-1])
        if done.returncode != 0:
            raise AssertionError(f"agent {args[0]} in {self.name} failed: {result}")
        return result

    def pids(self) -> list[int]:
        found = ip_command("netns", "pids", self.name)
        return [int(p) for p in found.stdout.split()]

    def established_to(self, address: str, port: int) -> bool:
        """Whether any TCP connection to ``address:port`` is established from here."""
        shown = self.run(
            "ss", "-Htn", "state", "established", "dst", f"{address}:{port}", check=False
        )
        return bool(shown.stdout.strip())

    def dig(self, server: str, name: str, qtype: str = "A") -> dict[str, Any]:
        """Ask ``server`` with the real ``dig``: the status and the answer's data."""
        done = self.run(
            "dig", f"@{server}", name, qtype, "+tries=1", "+time=3", "+noall", "+comments",
            "+answer", check=False,
        )  # fmt: skip
        status = ""
        answers = []
        for line in done.stdout.splitlines():
            if "status:" in line:
                status = line.split("status:")[1].split(",")[0].strip()
            elif line and not line.startswith(";"):
                answers.append(line.split()[-1])
        return {"status": status, "answers": answers, "output": done.stdout}

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            stop_process(proc)
        self.processes.clear()


def _env() -> dict[str, str]:
    """The environment for everything we start: never drop privileges to a sudo user."""
    env = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Lab:
    """The five namespaces of the topology in this module's docstring."""

    tag: str
    root: Path
    namespaces: dict[str, Namespace] = field(default_factory=dict)

    def __getitem__(self, role: str) -> Namespace:
        return self.namespaces[role]

    def create(self) -> None:
        for role in ("client", "gw", "srv", "lan2", "lan3"):
            ns = Namespace(f"bz-{self.tag}-{role}")
            ip_command("netns", "add", ns.name, check=True)
            self.namespaces[role] = ns
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
            ns.sysctl("net.ipv4.ip_forward", "0")
            ns.ip("link", "set", "lo", "up")
        self._veth("client", CLIENT_LINK, f"{CLIENT_IP}/24", "gw", "bzg", f"{GATEWAY_IP}/24")
        self._veth("gw", "bzgs", f"{GATEWAY_SERVER_IP}/24", "srv", "bzs", f"{DND_IP}/24")
        for extra in (DASHER_IP, PRANCER_IP):
            self["srv"].ip("addr", "add", f"{extra}/24", "dev", "bzs")
        self._veth("client", "bzl2", f"{SHARED_IP}/24", "lan2", "bzl2p", f"{LAN2_IP}/24")
        self._veth("client", "bzl3", f"{LAN3_GATE_IP}/24", "lan3", "bzl3p", f"{LAN3_IP}/24")
        self["lan3"].ip("route", "add", LAN2_NET, "via", LAN3_GATE_IP)

    def _veth(self, a: str, a_dev: str, a_addr: str, b: str, b_dev: str, b_addr: str) -> None:
        ip_command(
            "link", "add", a_dev, "netns", self[a].name, "type", "veth",
            "peer", "name", b_dev, "netns", self[b].name, check=True,
        )  # fmt: skip
        for ns, dev, addr in ((self[a], a_dev, a_addr), (self[b], b_dev, b_addr)):
            ns.ip("addr", "add", addr, "dev", dev)
            ns.ip("link", "set", dev, "up")

    def destroy(self) -> None:
        """Kill every process we started, then whatever is left inside, then the namespaces."""
        for ns in self.namespaces.values():
            ns.stop_all()
        for ns in self.namespaces.values():
            for pid in ns.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            ip_command("netns", "del", ns.name)
        self.namespaces.clear()


# --------------------------------------------------------------------------- programs


def read_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def read_bytes(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


@dataclass
class Capture:
    """tcpdump on one interface, writing raw frames to a file (``-U``: as they come)."""

    ns: Namespace
    interface: str
    path: Path
    proc: subprocess.Popen[Any] | None = None
    marker_to: str = GATEWAY_IP
    """Where :meth:`stop` sends its end marker: an address across the captured link."""

    def start(self) -> Capture:
        log = self.path.with_suffix(".log")
        self.proc = self.ns.spawn_ready(
            "tcpdump", "-i", self.interface, "-nn", "-U", "--immediate-mode", "-s", "0",
            "-Z", "root", "-w", str(self.path), marker="listening on", log=log,
        )  # fmt: skip
        return self

    def stop(self) -> list[Frame]:
        """Stop the capture and return every frame that crossed the link before the call.

        Frames are captured in order: a marker datagram sent now is in the file only once
        every earlier frame is, however slowly tcpdump runs. The marker (and the ICMP error
        that quotes it) is left out of the frames returned.
        """
        assert self.proc is not None
        marker = f"blitzdns-capture-end-{os.getpid()}-{time.monotonic_ns()}".encode()
        send = (
            "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
            f".sendto({marker!r}, ({self.marker_to!r}, 9))"
        )
        self.ns.run(PYTHON, "-c", send)
        wait_for(lambda: marker in read_bytes(self.path), f"tcpdump to write {marker!r}")
        stop_process(self.proc, signal.SIGINT)
        return [f for f in read_pcap(self.path.read_bytes()) if marker not in f.raw]

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT)


@dataclass
class SshKeys:
    """A gateway host key and a client key pair, made fresh for the session."""

    host_key: Path
    client_key: Path
    known_hosts: Path
    authorized_keys: Path

    @classmethod
    def make(cls, root: Path) -> SshKeys:
        for name in ("host_key", "id_ed25519"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bz-netns", "-f",
                 str(root / name)],
                check=True, capture_output=True,
            )  # fmt: skip
        host_pub = (root / "host_key.pub").read_text().split()[:2]
        (root / "known_hosts").write_text(f"{GATEWAY_IP} {' '.join(host_pub)}\n")
        (root / "authorized_keys").write_text((root / "id_ed25519.pub").read_text())
        return cls(
            root / "host_key", root / "id_ed25519", root / "known_hosts", root / "authorized_keys"
        )


@dataclass
class Sshd:
    """OpenSSH's sshd in the gateway namespace, the real far end of the tunnel."""

    ns: Namespace
    keys: SshKeys
    root: Path
    proc: subprocess.Popen[Any] | None = None
    listen: str = f"{GATEWAY_IP}:{SSH_PORT}"

    @property
    def log(self) -> Path:
        return self.root / "sshd.log"

    def start(self) -> Sshd:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        config = self.root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.listen}",
                    f"HostKey {self.keys.host_key}",
                    f"AuthorizedKeysFile {self.keys.authorized_keys}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    "StrictModes no",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "AllowTcpForwarding yes",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        self.proc = self.ns.spawn_ready(
            SSHD, "-D", "-e", "-f", str(config), marker="Server listening", log=self.log
        )
        return self

    def logins(self) -> int:
        return read_text(self.log).count("Accepted publickey")

    def stop(self) -> None:
        """Stop the listener and every session it forked: the link goes down."""
        if self.proc is not None:
            stop_process(self.proc)
        for pid in self.ns.pids():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().startswith("sshd"):
                    os.kill(pid, signal.SIGKILL)


@dataclass
class FakeServers:
    """The fake DND and BlitzServs, run by the agent in the server namespace."""

    ns: Namespace
    root: Path
    proc: subprocess.Popen[Any] | None = None

    @property
    def state(self) -> Path:
        return self.root / "servers.json"

    def start(self) -> FakeServers:
        self.proc = self.ns.spawn_ready(
            PYTHON, AGENT, "servers", "--dnd", DND_IP, "--blitz", f"{DASHER}={DASHER_IP}",
            "--blitz", f"{PRANCER}={PRANCER_IP}", "--state", str(self.state),
            marker='"ready"', log=self.root / "servers.log", stdout=self.root / "servers.out",
        )  # fmt: skip
        return self

    def transcript(self) -> dict[str, Any]:
        text = read_text(self.state)
        return json.loads(text) if text else {}

    def connections(self, server: str) -> int:
        count: int = self.transcript().get(server, {}).get("connections", 0)
        return count

    def received(self, server: str) -> list[str]:
        lines = self.transcript().get(server, {}).get("lines", [])
        return [line for _, direction, line in lines if direction == "in"]


REMOTES = {"dnd": DND_IP, "dasher": DASHER_IP, "prancer": PRANCER_IP}


def config_text(
    keys: SshKeys,
    root: Path,
    *,
    wait_for_link_s: float = 2.0,
    extra: str = "",
    hosts: Sequence[str] = ("dnd", "dasher", "prancer"),
    gateway: str = f"{GATEWAY_IP}:{SSH_PORT}",
    known_hosts: Path | None = None,
    remotes: dict[str, str] = REMOTES,
    tunnel: str = "keepalive_s = 5",
) -> str:
    """A blitzdns config for a lab: stub on 127.0.0.1:53, tunnel to the sshd on ``gateway``
    (the gateway's), ``remotes`` the hosts' addresses behind it, ``tunnel`` more lines of
    ``[tunnel]``."""
    ssh_config = root / "ssh_config"
    ssh_config.write_text("")
    sections = "".join(f'\n[hosts.{h}]\nremote = "{ip}"\n' for h, ip in remotes.items())
    return f"""\
preset = "blitzmail"

[dns]
listen = ["127.0.0.1:53"]
upstreams = ["127.0.0.1:5353"]

[tunnel]
gateways = ["root@{gateway}"]
hosts = {json.dumps(list(hosts))}
known_hosts = "{known_hosts or keys.known_hosts}"
identity_files = ["{keys.client_key}"]
ssh_config = "{ssh_config}"
wait_for_link_s = {wait_for_link_s}
{tunnel}
{sections}{extra}"""


@dataclass
class Blitzdns:
    """``blitzdns run`` in the client namespace, as a user would start it."""

    ns: Namespace
    root: Path
    config: str
    sshd: Sshd | None = None
    proc: subprocess.Popen[Any] | None = None

    @property
    def log(self) -> Path:
        return self.root / "blitzdns.log"

    def start(self, *flags: str) -> Blitzdns:
        path = self.root / "blitzdns.toml"
        path.write_text(self.config)
        self.proc = self.ns.spawn(
            BLITZDNS, "run", "--config", str(path),
            "--control-socket", str(self.root / "control.sock"), *flags,
            log=self.log,
        )  # fmt: skip
        return self

    def died(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"blitzdns exited {self.proc.returncode}: {read_text(self.log)}"
        return None

    def wait_ready(self, logins_before: int = 0) -> None:
        """Until the stub answers a protected name and the gateway accepted our key.

        The cheap looks first (the control socket answers, sshd logged the login): ``dig``
        in the namespace, a program per look, only once they hold.
        """

        def ready() -> bool:
            if (reason := self.died()) is not None:
                raise AssertionError(reason)
            if not daemon_status(self.root / "control.sock"):
                return False
            if self.sshd is not None and self.sshd.logins() <= logins_before:
                return False
            return bool(self.ns.dig("127.0.0.1", DND)["answers"])

        try:
            wait_for(ready, "blitzdns: stub answering and link up")
        except AssertionError as exc:
            sshd_log = read_text(self.sshd.log)[-2000:] if self.sshd else ""
            own_log = read_text(self.log)[-3000:]
            raise AssertionError(
                f"{exc}\n--- blitzdns log:\n{own_log}\n--- sshd log:\n{sshd_log}"
            ) from None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def mouth(self, name: str) -> str:
        """The address the stub gives this (loopback) client for ``name``."""
        answers: Sequence[str] = self.ns.dig("127.0.0.1", name)["answers"]
        assert answers, f"the stub gave no address for {name}"
        return answers[0]
