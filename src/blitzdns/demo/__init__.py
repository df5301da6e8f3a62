"""``blitzdns demo``: the whole job on loopback, with nothing to configure.

Started here, all on loopback and unprivileged ports:

- fake DND, BlitzMail (dasher, prancer) and bulletin servers on their own block
  (127.78.0.0/24), which only the gateway reaches;
- a throwaway SSH gateway (asyncssh, keys made now, its host key trusted explicitly);
- a recording relay between the client machine and the gateway: the demo's tcpdump;
- the full blitzdns stack (the same :class:`~blitzdns.daemon.Daemon` as ``run``).

Then a BlitzMail client's first steps run through the stub and the tunnel, and the same
steps run once more without the tunnel, so the two wires can be compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from blitzdns.blitzmail.fakes import DEMO_RECORDS, DEMO_SECOND_USER, DEMO_USER, DemoFleet
from blitzdns.config import Config, parse_config
from blitzdns.daemon import Daemon, RunOptions
from blitzdns.demo.gateway import DemoGateway
from blitzdns.demo.relay import RecordingRelay, render_wire
from blitzdns.demo.session import SessionLog, client_session, secrets_of
from blitzdns.errors import BlitzdnsError

#: Where the fake servers live: the "campus" only the gateway reaches.
SERVER_BLOCK = "127.78.0"
#: Mouth port = service port + this, so the demo needs no privilege.
PORT_SHIFT = 10000
DEMO_HOSTS = ("dnd", "dasher", "prancer", "newshost")
SERVICE_PORTS = {"dnd": 902, "mail": 2151, "bulletins": 1119, "posting": 119}


@dataclass
class DemoResult:
    ok: bool
    lines: list[str] = field(default_factory=list)


def demo_config(
    workdir: Path, gateway_port: int, known_hosts: Path, key: Path, dns_port: int
) -> Config:
    """The config the demo runs: the preset, shifted to unprivileged mouth ports."""
    services = "\n".join(
        f"{name} = {{ port = {port + PORT_SHIFT}, remote_port = {port} }}"
        for name, port in SERVICE_PORTS.items()
    )
    (workdir / "ssh_config").write_text("# empty: the demo ignores ~/.ssh/config\n")
    text = f"""
preset = "blitzmail"
[dns]
listen = ["127.0.0.1:{dns_port}"]
upstreams = ["127.0.0.1:9"]
ttl = 5
[tunnel]
gateways = ["demo@127.0.0.1:{gateway_port}"]
hosts = [{", ".join(f'"{h}"' for h in DEMO_HOSTS)}]
known_hosts = "{known_hosts}"
identity_files = ["{key}"]
ssh_config = "{workdir / "ssh_config"}"
keepalive_s = 5
wait_for_link_s = 5
[services]
{services}
"""
    return parse_config(text, source=workdir / "demo.toml")


def _free_udp_tcp_port() -> int:
    import socket

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise BlitzdnsError("no free port on 127.0.0.1 for the demo's DNS stub")


async def run_demo(
    *, once: bool, out: Callable[[str], None] = print, dns_port: int = 0
) -> DemoResult:
    """Run the demo; with ``once`` return after the verdict, else serve until cancelled."""
    result = DemoResult(ok=False)

    def say(line: str = "") -> None:
        result.lines.append(line)
        out(line)

    with tempfile.TemporaryDirectory(prefix="blitzdns-demo-") as tmp:
        workdir = Path(tmp)
        addresses = {
            "dnd": f"{SERVER_BLOCK}.1",
            "dasher.dartmouth.edu": f"{SERVER_BLOCK}.2",
            "prancer.dartmouth.edu": f"{SERVER_BLOCK}.4",
            "bulletins": f"{SERVER_BLOCK}.10",
        }
        async with contextlib.AsyncExitStack() as stack:
            fleet = await stack.enter_async_context(DemoFleet(addresses=addresses))
            routes = {
                ("dnd.dartmouth.edu", 902): fleet.dnd.address,
                ("kringle.dartmouth.edu", 902): fleet.dnd.address,
                ("newshost.dartmouth.edu", 1119): fleet.bulletins.address,
            }
            for name, server in fleet.blitzservers.items():
                routes[(name, 2151)] = server.address
            gateway = DemoGateway(routes, workdir)
            await gateway.start()
            stack.push_async_callback(gateway.close)
            relay = RecordingRelay(target=(gateway.host, gateway.port))
            await relay.start()
            stack.push_async_callback(relay.close)
            gateway.trust_as(relay.listen_host, relay.port)

            config = demo_config(
                workdir,
                relay.port,
                gateway.known_hosts_path,
                gateway.client_key_path,
                dns_port or _free_udp_tcp_port(),
            )
            daemon = Daemon(
                config,
                RunOptions(control_socket=workdir / "control.sock", drop_privileges=False),
            )
            stack.push_async_callback(daemon.close)
            await daemon.start()
            assert daemon.tunnel is not None
            await daemon.tunnel.wait_up(15)
            stub = (config.dns.listen[0].host, config.dns.listen[0].port)
            say(f"blitzdns demo: stub on {stub[0]}:{stub[1]}, SSH gateway 127.0.0.1:{gateway.port}")
            say(f"  (seen by the client through a recording relay on 127.0.0.1:{relay.port})")
            say("")

            say("== A BlitzMail client's first steps, through blitzdns ==")
            log = SessionLog(say)
            tunneled_ok = await client_session(
                log, stub=stub, config=config, users=(DEMO_USER, DEMO_SECOND_USER)
            )
            say("")
            say("== What crossed the wire between the client machine and the gateway ==")
            say(render_wire(relay.segments))
            secrets = secrets_of(DEMO_RECORDS, (DEMO_USER, DEMO_SECOND_USER))
            leaked = [s for s in secrets if relay.contains(s)]
            ssh_seen = relay.wire_bytes().startswith(b"SSH-2.0-")
            say("")

            say("== The same steps without the tunnel (direct to the servers) ==")
            plain = await _cleartext_contrast(fleet, say)
            shown = [s for s in secrets if plain.contains(s)]
            say(render_wire(plain.segments, limit=6))
            await plain.close()
            say("")

            result.ok = tunneled_ok and ssh_seen and not leaked and bool(shown)
            say("== Verdict ==")
            say(f"{'✓' if tunneled_ok else '✗'} the session worked through the stub and the tunnel")
            say(
                f"{'✓' if ssh_seen and not leaked else '✗'} on the wire to the gateway: SSH only; "
                f"none of {len(secrets)} cleartext markers "
                f"({', '.join(secrets[:4])}, …) appears"
                + (f" — LEAKED: {', '.join(leaked)}" if leaked else "")
            )
            say(
                f"{'✓' if shown else '✗'} without the tunnel the same session is readable: "
                f"{', '.join(shown[:4])}{', …' if len(shown) > 4 else ''}"
            )
            say(f"verdict: {'PASS' if result.ok else 'FAIL'}")
            if not once:
                say("")
                say("Serving until Ctrl-C. Try it yourself:")
                say(f"  dig @{stub[0]} -p {stub[1]} DND.Dartmouth.EDU.")
                say(
                    f"  nc {config.host('dnd').mouth} {902 + PORT_SHIFT}   # then: LOOKUP demo,NAME"
                )
                say(f"  blitzdns status --control-socket {workdir / 'control.sock'}")
                await _wait_for_interrupt()
    return result


async def _cleartext_contrast(fleet: DemoFleet, say: Callable[[str], None]) -> RecordingRelay:
    """The classic mistake: talk to DND and a BlitzMail server directly, through a relay."""
    from blitzdns.blitzmail import dnd, probes

    relay_dnd = RecordingRelay(target=fleet.dnd.address)
    await relay_dnd.start()
    account = await dnd.find_blitzserv("127.0.0.1", relay_dnd.port, DEMO_USER, timeout=5)
    server = fleet.blitzservers[account.blitzserv]
    relay_mail = RecordingRelay(target=server.address)
    await relay_mail.start()
    await probes.converse_blitzserv(
        "127.0.0.1", relay_mail.port, ["VERS blitzdns-demo", "NOOP"], timeout=5
    )
    say(f"  LOOKUP {DEMO_USER} → {account.name} (uid {account.uid}) on {account.blitzserv}")
    relay_dnd.segments.extend(relay_mail.segments)
    await relay_mail.close()
    return relay_dnd


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
    from blitzdns.daemon import install_fast_loop, setup_logging

    setup_logging(False)
    logging.getLogger().setLevel(logging.WARNING)
    install_fast_loop()
    result = asyncio.run(run_demo(once=once, out=lambda line: print(line, flush=True)))
    if not result.ok:
        print("blitzdns demo: verification failed (see above)", file=sys.stderr)
    return 0 if result.ok else 1
