"""`blitzdns demo`: the verdict passes from a clean start, can fail, and nothing stays up."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from pathlib import Path

from blitzdns import lookup
from blitzdns.blitzmail.fakes import DEMO_RECORDS
from blitzdns.demo import PORT_SHIFT, DemoStack, judge, verify
from blitzdns.demo.relay import RecordingRelay
from blitzdns.demo.session import secrets_of
from tests.peers import session_members

from .conftest import BLITZDNS, random_block_start, run_cli, tcp_listening, udp_bound

USERS = ("demo", "wheelock")


def clean_env(home: Path) -> dict[str, str]:
    """An environment as on a fresh machine: no config, no ~/.ssh, no agent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSH_", "XDG_"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    return env


def test_demo_once_passes_and_leaves_nothing_listening(tmp_path: Path) -> None:
    # Its own session: whatever it left running is found by session, not by address
    # (other runs on this machine may bind the same addresses once the demo is gone).
    demo = subprocess.Popen(
        [BLITZDNS, "demo", "--once"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
        env=clean_env(tmp_path),
        start_new_session=True,
    )
    try:
        out, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, out[-3000:] + err[-3000:]
    assert session_members(demo.pid) == [], "the demo left processes running"
    assert "verdict: PASS" in out
    assert "LOOKUP demo,NAME UID BLITZSERV → 'Demo User', 1001" in out
    assert "VERS blitzdns-demo → 010 BlitzServ" in out
    # The Notify exchange over UDP came back through the tunnel.
    assert "NOTI ← 'New mail from Demo Reindeer: Reindeer games tonight' (answered)" in out
    assert "release ← the server got the answer" in out
    # The contrast wire shows the cleartext; the tunnel's wire view shows the SSH banner.
    assert "LOOKUP demo,NAME UID BLITZSERV.." in out
    assert "SSH-2.0-" in out

    stub = re.search(r"stub on (127\.0\.0\.1):(\d+)", out)
    relay = re.search(r"relay on (127\.0\.0\.1):(\d+)", out)
    gateway = re.search(r"SSH gateway (127\.0\.0\.1):(\d+)", out)
    block = re.search(r"connect (127\.77\.\d+)\.1:", out)
    notify = re.search(r"NR02 #1001 → (127\.77\.\d+\.\d+):(\d+) \(UDP\)", out)
    assert stub and relay and gateway and block and notify, out
    assert list(tmp_path.iterdir()) == []  # nothing written to the user's home


async def test_demo_serves_a_real_client_until_interrupted(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        BLITZDNS,
        "demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        cwd=tmp_path,
        env=clean_env(tmp_path),
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not lines or not lines[-1].startswith("  blitzdns check"):
                line = (await process.stdout.readline()).decode()
                assert line, "".join(lines)
                lines.append(line.rstrip("\n"))
        # The whole output as the message: which check step failed is in it.
        assert "verdict: PASS" in lines, "\n".join(lines)
        assert "Serving until Ctrl-C. Try it yourself:" in lines, "\n".join(lines)
        # What the demo tells a user to run works while it is up.
        code, out, err = await run_cli(*lines[-1].split()[1:])
        assert code == 0, out + err
        dig = next(line for line in lines if line.startswith("  dig @"))
        stub_host, stub_port = dig.split()[1][1:], int(dig.split()[3])
        reply = await lookup.query((stub_host, stub_port), "dnd.dartmouth.edu", "A")
        mouth = reply.addresses()[0]
        assert tcp_listening(mouth, PORT_SHIFT + 902)
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    # Its sockets closed with it; nothing of it may run on (other runs on this machine
    # may take the same mouth and stub port at once, so addresses prove nothing now).
    assert session_members(process.pid) == [], "the demo left processes running"


async def test_stack_closes_everything() -> None:
    async with DemoStack(mouth_block_start=random_block_start()) as stack:
        assert stack.link_up
        mouths = [(f.mouth, f.port) for f in stack.config.forwards() if f.proto == "tcp"]
        udp_mouths = [(f.mouth, f.port) for f in stack.config.forwards() if f.proto == "udp"]
        servers = [s.address for s in stack.fleet.all]
        others = [("127.0.0.1", stack.gateway.port), ("127.0.0.1", stack.relay.port)]
        stub = stack.stub
        control = stack.control_socket
        assert all(tcp_listening(*m) for m in mouths)
        assert udp_mouths and all(udp_bound(*m) for m in udp_mouths)
        assert udp_bound(*stub) and tcp_listening(*stub)
        assert control.exists()
    for address, port in [*mouths, *servers, *others, stub]:
        assert not tcp_listening(address, port), (address, port)
    assert not udp_bound(*stub)
    assert not any(udp_bound(*m) for m in udp_mouths)
    assert not control.exists()


async def test_verdict_fails_when_the_wire_carries_cleartext(stack: DemoStack) -> None:
    lines: list[str] = []
    verdict = await verify(stack, lines.append, USERS)
    assert verdict.ok, "\n".join(lines)
    assert lines[-1] == "verdict: PASS"

    # A session that goes around the tunnel: cleartext into the same recorded wire.
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.relay.port)
    writer.write(b"LOOKUP demo,NAME UID BLITZSERV\r\n")
    await writer.drain()
    async with asyncio.timeout(10):
        await reader.read()  # the gateway hangs up on a line that is not SSH
    writer.close()

    contrast = RecordingRelay(target=("127.0.0.1", 9), segments=[])
    contrast.segments.extend(stack.relay.segments)
    again = judge(True, stack.relay, contrast, secrets_of(DEMO_RECORDS, USERS))
    assert not again.ok
    assert {"demo", "LOOKUP", "BLITZSERV"} <= set(again.leaked)
    assert "wheelock" not in again.leaked
    assert any("LEAKED: demo" in line for line in again.lines())
    assert again.lines()[-1] == "verdict: FAIL"


async def test_verdict_needs_the_contrast_and_the_session(stack: DemoStack) -> None:
    lines: list[str] = []
    verdict = await verify(stack, lines.append, USERS)
    assert verdict.ok
    secrets = secrets_of(DEMO_RECORDS, USERS)
    empty = RecordingRelay(target=("127.0.0.1", 9))
    blind = judge(True, stack.relay, empty, secrets)
    assert not blind.ok and blind.shown == ()
    assert "the contrast proves nothing" in blind.lines()[2]
    failed = judge(False, stack.relay, stack.relay, secrets)
    assert not failed.ok and failed.lines()[0].startswith("✗")
    not_ssh = judge(True, empty, stack.relay, secrets)
    assert not not_ssh.ok and not not_ssh.ssh_only


async def test_verdict_fails_when_the_link_never_comes_up() -> None:
    lines: list[str] = []
    async with DemoStack(mouth_block_start=random_block_start(), trust_host_key=False) as stack:
        assert not stack.link_up
        verdict = await verify(stack, lines.append, USERS)
    assert not verdict.ok and not verdict.session_ok
    assert "✗ the SSH link to the demo gateway did not come up" in lines
    assert lines[-1] == "verdict: FAIL"
