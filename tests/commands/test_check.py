"""`blitzdns check`: all ✓ on a healthy demo stack; each broken step named with ✗ and a fix.

Broken on purpose: the stub stopped, a listener on all interfaces beside a mouth, the link
down, the gateway's host key unknown, the system resolver not pointed at the stub. The
last two kinds run in namespaces of their own (``unshare -n [-m]``): there a socket on all
interfaces, and getaddrinfo of the protected names, can reach nothing but loopback.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any, cast

import pytest

from blitzdns import lookup
from blitzdns.check import (
    Step,
    check_link,
    check_stub,
    render,
    run_checks,
)
from blitzdns.config import build_config
from blitzdns.demo import DemoStack
from tunnel import LinkStatus, TunnelState

from .conftest import netns_python, random_block_start, run_cli


def by_name(steps: list[Step]) -> dict[str, Step]:
    return {step.name: step for step in steps}


def failed(steps: list[Step]) -> list[str]:
    return [step.name for step in steps if not step.ok and not step.skipped]


async def checks(stack: DemoStack) -> list[Step]:
    return await run_checks(stack.config, status=stack.daemon.snapshot(), system_resolver=False)


async def wait_status(stack: DemoStack, wanted: set[LinkStatus], timeout: float = 15) -> None:
    """Until the tunnel's link status is one of ``wanted`` (told by the tunnel itself)."""
    tunnel = stack.daemon.tunnel
    assert tunnel is not None
    reached = asyncio.Event()

    def seen(state: TunnelState) -> None:
        if state.status in wanted:
            reached.set()

    tunnel.on_state_change(seen)
    if tunnel.state.status not in wanted:
        async with asyncio.timeout(timeout):
            await reached.wait()


async def test_healthy_stack_passes_every_step(stack: DemoStack) -> None:
    steps = await checks(stack)
    assert failed(steps) == [], render(steps)
    names = by_name(steps)
    for host in ("dnd", "dasher", "prancer", "newshost"):
        assert f"stub: {host}" in names
    for forward in stack.config.forwards():
        assert f"mouth {forward.host}/{forward.service}" in names
        assert f"end to end {forward.host}/{forward.service}" in names
    assert names["SSH link"].detail.startswith("up via demo@127.0.0.1:")
    assert "220 DND server here." in names["end to end dnd/dnd"].detail
    assert "010 BlitzServ" in names["end to end dasher/mail"].detail
    assert "200 " in names["end to end newshost/bulletins"].detail
    assert render(steps).endswith("all good")


async def test_stub_stopped_is_named(stack: DemoStack) -> None:
    assert stack.daemon.resolver is not None
    await stack.daemon.resolver.close()
    steps = await checks(stack)
    assert failed(steps) == ["stub answers"], render(steps)
    step = by_name(steps)["stub answers"]
    assert "does not answer" in step.detail and "blitzdns run" in step.fix
    # Told at once by the kernel (ICMP port unreachable), not after the lookup timeout.
    assert "refused" in step.detail.lower()
    assert "✗ stub answers" in render(steps)


async def test_a_lookup_where_nothing_listens_fails_at_once() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(lookup.LookupFailed, match="refused"):
        await lookup.query(("127.0.0.1", port), "dnd.dartmouth.edu", timeout=30)


async def test_link_down_is_named(stack: DemoStack) -> None:
    await stack.relay.close()  # the cable between the client machine and the gateway
    await wait_status(stack, {LinkStatus.DOWN, LinkStatus.CONNECTING})
    steps = await checks(stack)
    names = by_name(steps)
    link = names["SSH link"]
    assert not link.ok and link.detail.split(":")[0] in ("down", "connecting"), link
    port = stack.daemon.config.tunnel.gateways[0].rpartition(":")[2]
    assert link.fix.endswith(f"`ssh -p {port} demo@127.0.0.1 true`"), link.fix
    assert names["gateway host key"].skipped
    # The layer that rests on the link is not tried (a mouth would only hold each probe).
    assert names["end to end"].skipped and names["end to end"].detail.startswith("not tried")
    assert failed(steps) == ["SSH link"]
    # What still holds is still ✓: the stub and the mouths do not depend on the link.
    assert all(s.ok for s in steps if s.name.startswith(("stub:", "mouth ")))


async def test_unknown_host_key_is_named() -> None:
    async with DemoStack(mouth_block_start=random_block_start(), trust_host_key=False) as stack:
        await wait_status(stack, {LinkStatus.FAILED})
        steps = await checks(stack)
    names = by_name(steps)
    key = names["gateway host key"]
    assert not key.ok
    assert "host key of gateway" in key.detail and "is unknown" in key.detail
    assert "ssh-keyscan" in key.detail and "fingerprint" in key.fix
    assert not names["SSH link"].ok and names["SSH link"].detail.startswith("failed")
    assert all(s.ok for s in steps if s.name.startswith(("stub:", "mouth ")))


def test_link_step_without_a_daemon_or_tunnel() -> None:
    (alone,) = check_link(None)
    assert not alone.ok and "control socket" in alone.detail
    (no_tunnel,) = check_link({"tunnel": None})
    assert not no_tunnel.ok and "--no-tunnel" in no_tunnel.fix
    up = check_link({"tunnel": {"status": "up", "gateway": "g", "final_error": None}})
    assert [s.ok for s in up] == [True, True]


async def test_cli_check_json_exit_status(stack: DemoStack) -> None:
    async def cli() -> tuple[int, list[dict[str, Any]]]:
        code, out, _ = await run_cli(
            "check",
            "--json",
            "--skip-system-resolver",
            "-c",
            str(stack.config_path),
            "--control-socket",
            str(stack.control_socket),
        )
        return code, json.loads(out or "null")

    code, steps = await cli()
    assert code == 0, steps
    assert steps and all(step["ok"] for step in steps)
    assert {"name", "ok", "detail", "fix"} <= set(steps[0])

    assert stack.daemon.resolver is not None
    await stack.daemon.resolver.close()
    code, steps = await cli()
    assert code == 1
    assert [s["name"] for s in steps if not s["ok"] and not s["skipped"]] == ["stub answers"]


# ---------------------------------------------------------------------------
# In namespaces of their own


ALL_INTERFACES_BESIDE_THE_STACK = """
import asyncio, json, socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
from blitzdns.check import run_checks, to_json
from blitzdns.demo import DemoStack

async def main():
    async with DemoStack() as stack:
        assert stack.link_up
        dnd = next(f for f in stack.config.forwards() if f.service == "dnd")
        wide = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            wide.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            wide.bind(("::", dnd.port))
            wide.listen()
        except OSError as exc:
            print(f"no IPv6 in this namespace: {exc}", file=sys.stderr)
            sys.exit(97)
        steps = await run_checks(
            stack.config, status=stack.daemon.snapshot(), system_resolver=False
        )
        wide.close()
    print(json.dumps(to_json(steps)))

asyncio.run(main())
"""

ALL_INTERFACES_INSTEAD_OF_A_MOUTH = """
import json, socket, subprocess
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
from blitzdns.check import check_mouths, to_json
from blitzdns.config import ForwardSpec, build_config

def listener(address, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((address, port))
    sock.listen()
    return sock

mouth = listener("127.77.0.1", 0)
port = mouth.getsockname()[1]
held = listener("0.0.0.0", 0)  # the classic `ssh -g -L` holding a forward's port
held_port = held.getsockname()[1]
forwards = [
    ForwardSpec("dnd", "dnd", "127.77.0.1", port, "dnd.dartmouth.edu", 902),
    ForwardSpec("dasher", "mail", "127.77.0.2", held_port, "dasher.dartmouth.edu", 2151),
]
print(json.dumps(to_json(check_mouths(build_config({}, source=None), forwards))))
"""


def test_listener_on_all_interfaces_beside_a_mouth_is_named() -> None:
    steps = json.loads(netns_python(ALL_INTERFACES_BESIDE_THE_STACK))
    bad = [s for s in steps if not s["ok"] and not s["skipped"]]
    assert [s["name"] for s in bad] == ["mouth dnd/dnd"], steps
    assert "listening; ALSO on ::" in bad[0]["detail"]
    assert "all interfaces" in bad[0]["fix"]


def test_listener_on_all_interfaces_holding_a_forward_port_is_named() -> None:
    good, held = json.loads(netns_python(ALL_INTERFACES_INSTEAD_OF_A_MOUTH))
    assert good["ok"] and good["name"] == "mouth dnd/dnd"
    assert not held["ok"] and held["name"] == "mouth dasher/mail"
    assert "not listening" in held["detail"] and "ALSO on 0.0.0.0" in held["detail"]
    assert "all interfaces" in held["fix"]


SYSTEM_RESOLVER = """
import asyncio, json, pathlib, subprocess, sys, tempfile, threading

def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True)

sh("ip", "link", "set", "lo", "up")
etc = pathlib.Path(tempfile.mkdtemp())
(etc / "resolv.conf").write_text("nameserver 127.0.0.1\\noptions timeout:1 attempts:1\\n")
(etc / "nsswitch.conf").write_text("hosts: files dns\\n")
(etc / "hosts").write_text("127.0.0.1 localhost\\n")
for name in ("resolv.conf", "nsswitch.conf", "hosts"):
    sh("mount", "--bind", str(etc / name), f"/etc/{name}")

from blitzdns.check import check_system_resolver, to_json
from blitzdns.config import build_config

config = build_config(
    {"dns": {"listen": ["127.0.0.1:53"], "upstreams": ["127.0.0.1:9"]}}, source=None
)

def elsewhere():
    # Another resolver on 127.0.0.1:53: the real address for every name, as an ISP's would.
    import socket
    from dnslib import QTYPE, RR, A, DNSRecord
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))
    def serve():
        while True:
            data, peer = sock.recvfrom(4096)
            query = DNSRecord.parse(data)
            reply = query.reply()
            if query.q.qtype == QTYPE.A:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("129.170.16.2"), ttl=0))
            sock.sendto(reply.pack(), peer)
    threading.Thread(target=serve, daemon=True).start()

async def main(mode):
    resolver = None
    if mode == "elsewhere":
        elsewhere()
    elif mode == "stub":
        from blitzdns.dns.server import Resolver
        resolver = Resolver(config, config.dns.upstreams, loop_probe=False)
        await resolver.start()
    loop = asyncio.get_running_loop()
    steps = await loop.run_in_executor(None, check_system_resolver, config)
    if resolver is not None:
        await resolver.close()
    print(json.dumps(to_json(steps)))

asyncio.run(main(sys.argv[1]))
"""


def system_resolver_steps(mode: str) -> list[dict[str, Any]]:
    code = SYSTEM_RESOLVER.replace("sys.argv[1]", repr(mode))
    steps: list[dict[str, Any]] = json.loads(netns_python(code, mounts=True))
    preset_hosts = build_config({}, source=None).hosts
    assert [s["name"] for s in steps] == [
        f"system resolver: {h.canonical_name}" for h in preset_hosts
    ]
    return steps


def test_resolver_pointed_nowhere_is_named() -> None:
    steps = system_resolver_steps("nothing")
    assert all(not s["ok"] for s in steps)
    assert all(s["detail"].startswith("getaddrinfo → error") for s in steps)
    # Runnable as printed: the target is named (the install refuses to guess for you).
    assert all(
        re.search(r"`(sudo )?blitzdns resolver-config install --target \S+ --apply`", s["fix"])
        for s in steps
    ), steps[0]


def test_resolver_pointed_elsewhere_is_named() -> None:
    steps = system_resolver_steps("elsewhere")
    assert all(not s["ok"] for s in steps)
    assert all(s["detail"] == "getaddrinfo → 129.170.16.2" for s in steps), steps


def test_resolver_pointed_at_the_stub_passes() -> None:
    steps = system_resolver_steps("stub")
    assert all(s["ok"] for s in steps), steps
    dnd = next(s for s in steps if s["name"] == "system resolver: dnd.dartmouth.edu")
    assert dnd["detail"] == "getaddrinfo → 127.77.0.1"


class RealAddresses(asyncio.DatagramProtocol):
    """A resolver that is not the stub: the real address for every name, of every type."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        from dnslib import QTYPE, RR, A, DNSRecord

        query = DNSRecord.parse(data)
        reply = query.reply()
        reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("129.170.16.2"), ttl=0))
        self.transport.sendto(reply.pack(), addr)


async def test_a_stub_answering_real_addresses_is_named(stack: DemoStack) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(RealAddresses, local_addr=("127.0.0.1", 0))
    try:
        other = transport.get_extra_info("sockname")[:2]
        steps = await check_stub(stack.config, other)
    finally:
        transport.close()
    assert [s.name for s in steps] == [f"stub: {h.key}" for h in stack.config.hosts]
    assert not any(s.ok for s in steps)
    dnd = by_name(steps)["stub: dnd"]
    assert "dnd.dartmouth.edu A → NOERROR ['129.170.16.2']" in dnd.detail
    assert "blitzdns plan" in dnd.fix
    # The same check against the real stub holds (the case above is the stub's absence).
    assert all(s.ok for s in await check_stub(stack.config, stack.stub))


def test_an_unavailable_udp_relay_fails_its_step_with_the_reason() -> None:
    from blitzdns.check import check_udp_relays
    from blitzdns.config import parse_config

    config = parse_config(
        "[hosts.notifier]\nnames = ['notifier.dartmouth.edu']\nservices = ['notify']\n"
    )
    [forward] = [f for f in config.forwards() if f.proto == "udp"]
    relay = {
        "mouth": f"{forward.mouth}:{forward.port}",
        "relay": "unavailable",
        "reason": "python3: bash: python3: command not found; socat: bash: socat: not found",
    }
    status = {"tunnel": {"status": "up", "udp_forwards": [relay]}}
    [step] = check_udp_relays(status, config.forwards())
    assert step.name == "end to end notifier/notify" and not step.ok
    assert "unavailable (python3: bash: python3: command not found" in step.detail
    assert "python3 (or socat)" in step.fix
    [ok] = check_udp_relays(
        {"tunnel": {"status": "up", "udp_forwards": [{**relay, "relay": "socat"}]}},
        config.forwards(),
    )
    assert ok.ok
    # With the link down the layer is not reached: run_checks stops at "SSH link" and shows
    # "end to end" as not tried (tests/cli/test_check.py covers the layering).
