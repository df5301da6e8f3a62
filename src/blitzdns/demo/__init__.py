"""``blitzdns demo``: the whole job on loopback, with nothing to configure.

Started here (:class:`DemoStack`), all on loopback and unprivileged ports:

- fake DND, BlitzMail (dasher, prancer), bulletin and Notify servers on their own block
  (127.78.0.0/24), which only the gateway reaches;
- a throwaway SSH gateway (asyncssh, keys made now, its host key trusted explicitly);
- a recording relay between the client machine and the gateway: the demo's tcpdump;
- the full blitzdns stack (the same :class:`~blitzdns.daemon.Daemon` as ``run``).

Then a BlitzMail client's first steps run through the stub and the tunnel (including a
Notify registration over UDP and the new-mail notice that comes back), and the same
steps run once more without the tunnel, so the two wires can be compared (:func:`judge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from blitzdns.blitzmail import dnd, probes
from blitzdns.blitzmail.fake_notify import FakeNotify
from blitzdns.blitzmail.fakes import DEMO_RECORDS, DEMO_SECOND_USER, DEMO_USER, DemoFleet, DndRecord
from blitzdns.config import Config, ForwardSpec, parse_config
from blitzdns.daemon import Daemon, RunOptions, install_fast_loop
from blitzdns.demo.gateway import DemoGateway, Route
from blitzdns.demo.relay import RecordingRelay, render_wire
from blitzdns.demo.session import SessionLog, client_session, notify_session, secrets_of
from blitzdns.errors import AddressInUse
from blitzdns.logs import setup_logging
from tunnel import RelayState, Tunnel

#: Where the fake servers live: the "campus" only the gateway reaches.
SERVER_BLOCK = "127.78.0"
#: Mouth port = service port + this, so the demo needs no privilege.
PORT_SHIFT = 10000
DEMO_HOSTS = ("dnd", "dasher", "prancer", "newshost", "notify")
SERVICE_PORTS = {"dnd": 902, "mail": 2151, "bulletins": 1119, "posting": 119, "dartnotify": 2152}
#: The Notify host's address on the server block: the gateway's relay sends there.
NOTIFY_ADDRESS = f"{SERVER_BLOCK}.20"
NOTIFY_PORT = 2154
#: The demo's mouths live in 127.77.N.0/24; N is the first block whose mouths are free.
MOUTH_BLOCKS = 256
DEMO_USERS = (DEMO_USER, DEMO_SECOND_USER)

Say = Callable[[str], None]


@dataclass
class DemoResult:
    ok: bool
    lines: list[str] = field(default_factory=list)


def _toml_string(value: object) -> str:
    """A TOML basic string (JSON's escapes are a subset TOML accepts)."""
    return json.dumps(str(value))


def demo_config(
    workdir: Path,
    gateway_port: int,
    known_hosts: Path,
    key: Path,
    dns_port: int,
    mouths: str = "127.77.0.0/24",
    notify_udp_port: int = NOTIFY_PORT,
) -> Config:
    """The config the demo runs: the preset, shifted to unprivileged mouth ports, plus a
    Notify host (dartnotify on TCP, notify on UDP through the gateway's relay) whose
    target is the fake Notify server's address (its UDP port: ``notify_udp_port``).

    Also written to ``workdir/demo.toml``, so ``blitzdns check -c`` can read it.
    """
    (workdir / "ssh_config").write_text("# empty: the demo ignores ~/.ssh/config\n")
    services = "\n".join(
        f"{name} = {{ port = {port + PORT_SHIFT}, remote_port = {port} }}"
        for name, port in SERVICE_PORTS.items()
    )
    hosts = ", ".join(_toml_string(h) for h in DEMO_HOSTS)
    text = f"""\
# Written by `blitzdns demo`: the preset on unprivileged ports, against a throwaway gateway.
preset = "blitzmail"
[dns]
listen = ["127.0.0.1:{dns_port}"]
# Nothing answers here: the demo forwards nothing to the real network.
upstreams = ["127.0.0.1:9"]
ttl = 5
[tunnel]
gateways = ["demo@127.0.0.1:{gateway_port}"]
mouths = {_toml_string(mouths)}
hosts = [{hosts}]
known_hosts = {_toml_string(known_hosts)}
identity_files = [{_toml_string(key)}]
ssh_config = {_toml_string(workdir / "ssh_config")}
keepalive_s = 5
wait_for_link_s = 5
[services]
{services}
notify = {{ port = {NOTIFY_PORT + PORT_SHIFT}, proto = "udp", remote_port = {notify_udp_port}, \
step = "notify", idle_s = 900 }}
[hosts.notify]
names = ["notify.dartmouth.edu", "notify"]
services = ["dartnotify", "notify"]
remote = "{NOTIFY_ADDRESS}"
"""

    path = workdir / "demo.toml"
    path.write_text(text, encoding="utf-8")
    return parse_config(text, source=path)


def _bindable(address: str, port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def forwards_free(forwards: Sequence[ForwardSpec]) -> bool:
    """Whether every forward's mouth could be bound now (another demo may hold them)."""
    return all(
        _bindable(f.mouth, f.port, socket.SOCK_DGRAM if f.proto == "udp" else socket.SOCK_STREAM)
        for f in forwards
    )


def free_mouth_block(make: Callable[[str], Config], start: int = 0) -> Config:
    """The config ``make(block)`` for the first 127.77.N.0/24, from ``start``, whose mouths
    are free: a second demo (or a test run beside one) then needs no flag."""
    for step in range(MOUTH_BLOCKS):
        block = f"127.77.{(start + step) % MOUTH_BLOCKS}.0/24"
        config = make(block)
        if forwards_free(config.forwards()):
            return config
    raise AddressInUse("every 127.77.N.0/24 mouth block is taken; stop the other demos")


def free_dns_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the stub listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            if _bindable("127.0.0.1", port, socket.SOCK_STREAM):
                return port
    raise AddressInUse("no free port on 127.0.0.1 for the demo's DNS stub")


def gateway_routes(fleet: DemoFleet, notify: FakeNotify | None = None) -> dict[Route, Route]:
    """What the gateway reaches: (name, port) as the client asks → the fake's address.
    (UDP needs no route: the gateway's relay sends to the Notify host's address itself.)"""
    routes: dict[Route, Route] = {
        ("dnd.dartmouth.edu", 902): fleet.dnd.address,
        ("kringle.dartmouth.edu", 902): fleet.dnd.address,
        ("newshost.dartmouth.edu", 1119): fleet.bulletins.address,
        # NNTP greets 200 as the bulletin server does; one fake stands for both.
        ("newshost.dartmouth.edu", 119): fleet.bulletins.address,
    }
    for name, server in fleet.blitzservers.items():
        routes[(name, 2151)] = server.address
    if notify is not None:
        routes[(NOTIFY_ADDRESS, 2152)] = (notify.host, notify.tcp_port)
    return routes


class DemoStack:
    """Fleet + gateway + relay + the real :class:`Daemon`, as ``async with DemoStack() as s``.

    ``trust_host_key=False`` leaves known_hosts empty, so the link fails for good with
    the host-key message (what ``check`` must name). ``mouth_block_start`` picks where the
    search for a free 127.77.N.0/24 block begins. Leaving the block closes everything;
    afterwards nothing of it listens.
    """

    #: The running parts, set once the stack is entered.
    workdir: Path
    fleet: DemoFleet
    notify: FakeNotify
    gateway: DemoGateway
    relay: RecordingRelay
    daemon: Daemon

    def __init__(
        self,
        *,
        records: Sequence[DndRecord] = DEMO_RECORDS,
        trust_host_key: bool = True,
        mouth_block_start: int = 0,
        link_timeout_s: float = 15.0,
    ) -> None:
        self.records = tuple(records)
        self.trust_host_key = trust_host_key
        self.mouth_block_start = mouth_block_start
        self.link_timeout_s = link_timeout_s
        self.link_up = False
        self._stack = contextlib.AsyncExitStack()

    @property
    def config(self) -> Config:
        return self.daemon.config

    @property
    def config_path(self) -> Path:
        return self.workdir / "demo.toml"

    @property
    def control_socket(self) -> Path:
        return self.workdir / "control.sock"

    @property
    def stub(self) -> tuple[str, int]:
        listen = self.config.dns.listen[0]
        return listen.host, listen.port

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _start(self) -> None:
        stack = self._stack
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="blitzdns-demo-"))
        workdir = Path(tmp)
        addresses = {
            "dnd": f"{SERVER_BLOCK}.1",
            "dasher.dartmouth.edu": f"{SERVER_BLOCK}.2",
            "prancer.dartmouth.edu": f"{SERVER_BLOCK}.4",
            "bulletins": f"{SERVER_BLOCK}.10",
        }
        fleet = await stack.enter_async_context(
            DemoFleet(records=self.records, addresses=addresses)
        )
        notify = await stack.enter_async_context(FakeNotify(NOTIFY_ADDRESS, records=self.records))
        gateway = DemoGateway(gateway_routes(fleet, notify), workdir)
        await gateway.start()
        stack.push_async_callback(gateway.close)
        relay = RecordingRelay(target=(gateway.host, gateway.port))
        await relay.start()
        stack.push_async_callback(relay.close)
        if self.trust_host_key:
            gateway.trust_as(relay.listen_host, relay.port)
        else:
            gateway.known_hosts_path.write_text("")

        dns_port = free_dns_port()
        config = free_mouth_block(
            lambda block: demo_config(
                workdir,
                relay.port,
                gateway.known_hosts_path,
                gateway.client_key_path,
                dns_port,
                block,
                notify.udp_port,
            ),
            self.mouth_block_start,
        )
        daemon = Daemon(
            config,
            RunOptions(
                # demo.toml: what a reload (and `blitzdns discover --write`) re-reads.
                config_path=config.source,
                control_socket=workdir / "control.sock",
                drop_privileges=False,
            ),
        )
        stack.push_async_callback(daemon.close)
        await daemon.start()
        self.workdir, self.fleet, self.gateway, self.relay = workdir, fleet, gateway, relay
        self.notify = notify
        self.daemon = daemon
        assert daemon.tunnel is not None
        if self.trust_host_key:
            self.link_up = await daemon.tunnel.wait_up(self.link_timeout_s)
            if self.link_up:
                await self._wait_for_relays(daemon.tunnel)

    async def _wait_for_relays(self, tunnel: Tunnel) -> None:
        """Until each UDP forward's relay answered on the gateway (or was found missing)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.link_timeout_s):
                while any(  # noqa: ASYNC110  (the relay's start has no event to wait on)
                    u.relay in (RelayState.DOWN, RelayState.STARTING)
                    for u in tunnel.state.udp_forwards
                ):
                    await asyncio.sleep(0.02)

    async def close(self) -> None:
        """Stop the daemon, relay, gateway and fakes (reverse order); remove the workdir."""
        await self._stack.aclose()


# ---------------------------------------------------------------------------
# The verdict


@dataclass(frozen=True)
class Verdict:
    """What the demo proves, from the session's outcome and the two recorded wires."""

    session_ok: bool
    ssh_only: bool
    secrets: tuple[str, ...]
    leaked: tuple[str, ...]
    shown: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.session_ok and self.ssh_only and not self.leaked and bool(self.shown)

    def lines(self) -> list[str]:
        def mark(ok: bool) -> str:
            return "✓" if ok else "✗"

        wire_ok = self.ssh_only and not self.leaked
        markers = ", ".join(self.secrets[:4])
        shown = ", ".join(self.shown[:4]) + (", …" if len(self.shown) > 4 else "")
        return [
            f"{mark(self.session_ok)} the session worked through the stub and the tunnel",
            f"{mark(wire_ok)} on the wire to the gateway: "
            f"{'SSH only' if self.ssh_only else 'NOT only SSH'}; "
            f"none of {len(self.secrets)} cleartext markers ({markers}, …) appears"
            + (f" — LEAKED: {', '.join(self.leaked)}" if self.leaked else ""),
            f"{mark(bool(self.shown))} without the tunnel the same session is readable: "
            + (shown or "nothing of it (the contrast proves nothing)"),
            f"verdict: {'PASS' if self.ok else 'FAIL'}",
        ]


def judge(
    session_ok: bool,
    tunnel_wire: RecordingRelay,
    plain_wire: RecordingRelay,
    secrets: Sequence[str],
) -> Verdict:
    """Pass only when the session worked, the tunnel's wire is SSH and holds no marker,
    and the same markers are plainly on the untunneled wire (else the check proves nothing)."""
    return Verdict(
        session_ok=session_ok,
        ssh_only=bool(tunnel_wire.segments) and tunnel_wire.wire_bytes().startswith(b"SSH-2.0-"),
        secrets=tuple(secrets),
        leaked=tuple(s for s in secrets if tunnel_wire.contains(s)),
        shown=tuple(s for s in secrets if plain_wire.contains(s)),
    )


async def cleartext_contrast(fleet: DemoFleet, say: Say) -> RecordingRelay:
    """The classic mistake: talk to DND and a BlitzMail server directly, through relays.

    The relays append to one list, so the returned record holds every segment in the
    order it crossed (each relay's times count from its own start, a fraction of a
    millisecond apart).
    """

    record = RecordingRelay(target=fleet.dnd.address)
    relay_dnd = RecordingRelay(target=fleet.dnd.address, segments=record.segments)
    mail_relays = {
        name: RecordingRelay(target=server.address, segments=record.segments)
        for name, server in fleet.blitzservers.items()
    }
    relays = [relay_dnd, *mail_relays.values()]
    try:
        for relay in relays:
            await relay.start()
        account = await dnd.find_blitzserv("127.0.0.1", relay_dnd.port, DEMO_USER, timeout=5)
        say(f"  LOOKUP {DEMO_USER} → {account.name} (uid {account.uid}) on {account.blitzserv}")
        relay_mail = mail_relays.get(account.blitzserv)
        if relay_mail is not None:
            await probes.converse_blitzserv(
                "127.0.0.1", relay_mail.port, ["VERS blitzdns-demo", "NOOP"], timeout=5
            )
    finally:
        for relay in relays:
            await relay.close()
    return record


async def verify(stack: DemoStack, say: Say, users: Sequence[str] = DEMO_USERS) -> Verdict:
    """Play the session through the stack, show both wires, and judge them."""
    say("== A BlitzMail client's first steps, through blitzdns ==")
    if not stack.link_up:
        say("✗ the SSH link to the demo gateway did not come up")
    session_ok = stack.link_up and await client_session(
        SessionLog(say), stub=stack.stub, config=stack.config, users=users
    )
    say("")
    say("== A new-mail notice over UDP (Notify), through the tunnel ==")
    notify_ok = stack.link_up and await notify_session(
        SessionLog(say), stub=stack.stub, config=stack.config, user=users[0]
    )
    say("")
    say("== What crossed the wire between the client machine and the gateway ==")
    say(render_wire(stack.relay.segments))
    say("")
    say("== The same steps without the tunnel (direct to the servers) ==")
    plain = await cleartext_contrast(stack.fleet, say)
    say(render_wire(plain.segments, limit=6))
    say("")
    verdict = judge(session_ok and notify_ok, stack.relay, plain, secrets_of(stack.records, users))
    say("== Verdict ==")
    for line in verdict.lines():
        say(line)
    return verdict


async def run_demo(*, once: bool, out: Say = print) -> DemoResult:
    """Run the demo; with ``once`` return after the verdict, else serve until interrupted."""
    result = DemoResult(ok=False)

    def say(line: str = "") -> None:
        result.lines.append(line)
        out(line)

    async with DemoStack() as stack:
        host, port = stack.stub
        say(f"blitzdns demo: stub on {host}:{port}, SSH gateway 127.0.0.1:{stack.gateway.port}")
        say(f"  (seen by the client through a recording relay on 127.0.0.1:{stack.relay.port})")
        say("")
        verdict = await verify(stack, say)
        result.ok = verdict.ok
        if not once:
            dnd_mouth = stack.config.host("dnd").mouth
            say("")
            say("Serving until Ctrl-C. Try it yourself:")
            say(f"  dig @{host} -p {port} DND.Dartmouth.EDU.")
            say(f"  nc {dnd_mouth} {902 + PORT_SHIFT}   # then: LOOKUP demo,NAME")
            say(f"  blitzdns status --control-socket {stack.control_socket}")
            say(
                f"  blitzdns check -c {stack.config_path} --control-socket "
                f"{stack.control_socket} --skip-system-resolver"
            )
            await _wait_for_interrupt()
    return result


async def _wait_for_interrupt() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def demo_command(once: bool) -> int:
    """Entry for the CLI: run the demo on a fresh loop, exit 0 when everything was verified."""

    setup_logging(False)
    logging.getLogger().setLevel(logging.WARNING)
    install_fast_loop()
    result = asyncio.run(run_demo(once=once, out=lambda line: print(line, flush=True)))
    if not result.ok:
        print("blitzdns demo: verification failed (see above)", file=sys.stderr)
    return 0 if result.ok else 1
