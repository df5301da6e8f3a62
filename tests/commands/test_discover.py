"""`blitzdns discover USER`: DND through the tunnel names the server; each refusal its own line.

DND is the demo's fake, reached through the demo stack's real tunnel; the cases of the
demo directory: ``demo`` (dasher), ``wheelock`` (prancer), ``dem`` (two Demo records),
``d`` (too vague), ``nobody-here`` (no match). A second fake DND, on a mouth address of
its own, answers ambiguity with the candidates' records and knows an account on a server
the host table lacks.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from blitzdns.blitzmail.fakes import DEMO_RECORDS, DndRecord, FakeDnd
from blitzdns.config import Config, load_config, parse_config
from blitzdns.config_template import TEMPLATE
from blitzdns.demo import DemoStack
from blitzdns.discover import DiscoverError, Discovery, discover, with_hosts, write_discovery

from .conftest import random_block_start, run_cli

RUDOLPH = DndRecord("Rudolph Reindeer", 1225, "rudolph.Dartmouth.EDU@BlitzServ", nickname="rudy")
NOTIFIED = DndRecord(
    "Notified Reindeer",
    1300,
    "dasher.Dartmouth.EDU@BlitzServ",
    nickname="notified",
    extra=(("NOTIFYSERV", "Notifier.Dartmouth.EDU@Notify"),),
)


async def test_found_through_the_tunnel(stack: DemoStack) -> None:
    demo, wheelock = await asyncio.gather(
        discover(stack.config, "demo"), discover(stack.config, "wheelock")
    )
    assert demo.account.name == "Demo User" and demo.account.uid == "1001"
    assert demo.account.blitzserv == "dasher.dartmouth.edu"
    assert demo.host is not None and demo.host.key == "dasher"
    assert wheelock.account.name == "Eleazar Wheelock"
    assert wheelock.host is not None and wheelock.host.key == "prancer"
    # It really went through the tunnel: the gateway opened channels to DND.
    assert stack.gateway.channels_opened >= 2
    assert stack.fleet.dnd.received.count("LOOKUP demo,NAME UID BLITZSERV") == 1


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("dem", "'dem' matches several people; give the full name or the nickname"),
        ("d", "'d' is too vague for DND; give more of the name (first and last)"),
        ("nobody-here", "DND has no one matching 'nobody-here'; check the spelling"),
        ("a,b", "'a,b' cannot be asked of DND"),
    ],
)
async def test_refusals_each_have_their_line(stack: DemoStack, user: str, message: str) -> None:
    with pytest.raises(DiscoverError) as caught:
        await discover(stack.config, user)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


async def test_link_down_says_dnd_did_not_answer(stack: DemoStack) -> None:
    await stack.relay.close()
    with pytest.raises(DiscoverError) as caught:
        await discover(stack.config, "demo", timeout=1)
    assert "DND did not answer at the mouth" in str(caught.value)
    assert "blitzdns status" in str(caught.value)


@pytest.fixture
async def listing_dnd() -> AsyncIterator[Config]:
    """A DND that lists every match (as real servers do for LOOKUP), on a mouth of its own."""
    block = f"127.77.{random_block_start()}"
    records = (*DEMO_RECORDS, RUDOLPH, NOTIFIED)
    async with FakeDnd(records, f"{block}.1", ambiguous="list") as fake:
        yield parse_config(
            f'[tunnel]\nmouths = "{block}.0/24"\n[services]\ndnd = {{ port = {fake.port} }}\n'
        )


async def test_ambiguous_names_the_candidates(listing_dnd: Config) -> None:
    with pytest.raises(DiscoverError) as caught:
        await discover(listing_dnd, "dem")
    assert str(caught.value) == (
        "'dem' matches several people: Demo User, Demo Reindeer; give the full name or the nickname"
    )


async def test_server_outside_the_host_table_is_refused(
    listing_dnd: Config, tmp_path: Path
) -> None:
    found = await discover(listing_dnd, "rudy")
    assert found.account.blitzserv == "rudolph.dartmouth.edu" and found.host is None
    path = tmp_path / "config.toml"
    path.write_text(TEMPLATE)
    with pytest.raises(DiscoverError) as caught:
        write_discovery(listing_dnd, found, path)
    assert str(caught.value).startswith("rudolph.dartmouth.edu is not in the host table")
    assert path.read_text() == TEMPLATE


# ---------------------------------------------------------------------------
# --write


COMMENTED = """\
# my blitzdns setup
preset = "blitzmail"   # the Dartmouth table

[dns]
listen = ["127.0.0.1:53"]  # the stub

[tunnel]
# my gateway
gateways = ["me@gateway.example"]
hosts = [   # which hosts: all of them, for now
  "dnd",
  "dasher",   # mine? not sure
  "prancer",
]
keepalive_s = 15.0   # [not a header]

# trailing comment
"""


def dasher_discovery(config: Config) -> Discovery:
    from blitzdns.blitzmail.dnd import Account

    account = Account("Demo User", "1001", "dasher.dartmouth.edu", "dasher.Dartmouth.EDU@BlitzServ")
    return Discovery("demo", account, config.host("dasher"))


def comment_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "#" in line and "hosts" not in line]


@pytest.mark.parametrize("original", [COMMENTED, TEMPLATE, "preset = 'blitzmail'\n", ""])
def test_write_keeps_comments_and_is_idempotent(tmp_path: Path, original: str) -> None:
    path = tmp_path / "config.toml"
    if original:
        path.write_text(original)
        path.chmod(0o640)
    config = load_config(path) if original else parse_config("")
    kept = write_discovery(config, dasher_discovery(config), path)
    assert kept == ["dnd", "dasher", "newshost"]
    first = path.read_text()
    for line in comment_lines(original):
        if "mine? not sure" not in line:  # inside the replaced array: gone with it
            assert line in first.splitlines(), line
    loaded = load_config(path)
    assert loaded.tunnel.hosts == ("dnd", "dasher", "newshost")
    assert [h.key for h in loaded.hosts] == ["dnd", "dasher", "newshost"]
    assert loaded.dns == config.dns and loaded.tunnel.gateways == config.tunnel.gateways
    if original:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert write_discovery(loaded, dasher_discovery(loaded), path) == kept
    assert path.read_text() == first
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_with_hosts_replaces_only_the_tunnel_key() -> None:
    text = '[hosts.dasher]\nhosts = ["x"]\n[tunnel]\nmouths = "127.77.0.0/24"\n'
    assert with_hosts(text, ["dnd"]) == (
        '[hosts.dasher]\nhosts = ["x"]\n[tunnel]\nhosts = ["dnd"]\nmouths = "127.77.0.0/24"\n'
    )


def test_an_unrecognised_form_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    original = 'tunnel.hosts = ["dnd"]\n'
    path.write_text(original)
    config = load_config(path)
    with pytest.raises(DiscoverError) as caught:
        write_discovery(config, dasher_discovery(config), path)
    assert str(caught.value).startswith(f"not writing {path}")
    assert path.read_text() == original


# ---------------------------------------------------------------------------
# The command line


async def test_cli_discover_prints_writes_and_refuses(stack: DemoStack) -> None:
    async def cli(*argv: str) -> tuple[int, str, str]:
        return await run_cli("discover", *argv, "-c", str(stack.config_path))

    dasher = stack.config.host("dasher").mouth
    code, out, _ = await cli("demo")
    assert code == 0
    assert out == f"Demo User (uid 1001): dasher.dartmouth.edu (host dasher, mouth {dasher})\n"

    code, out, err = await cli("dem")
    assert code == 1 and out == ""
    assert err.splitlines() == [
        "blitzdns: 'dem' matches several people; give the full name or the nickname"
    ]

    code, out, _ = await cli("wheelock", "--write")
    assert code == 0 and f"wrote {stack.config_path}" in out
    assert load_config(stack.config_path).tunnel.hosts == ("dnd", "prancer", "newshost", "notify")


async def test_cli_discover_write_reloads_the_daemon_and_says_when_nothing_changed(
    stack: DemoStack,
) -> None:
    async def cli(*argv: str) -> tuple[int, str, str]:
        # No -c: the file is the one the running daemon says it reads.
        return await run_cli("discover", *argv, "--control-socket", str(stack.control_socket))

    pid = os.getpid()  # the demo daemon runs in this process
    code, out, err = await cli("wheelock", "--write")
    assert code == 0, err
    assert out.splitlines()[1:] == [
        f"wrote {stack.config_path}: tunnel.hosts = ['dnd', 'prancer', 'newshost', 'notify']",
        f"reloaded the running daemon (pid {pid})",
    ]
    assert {h.key for h in stack.daemon.config.hosts} == {"dnd", "prancer", "newshost", "notify"}
    code, out, err = await cli("wheelock", "--write")
    assert code == 0, err
    assert out.splitlines()[1:] == [
        f"{stack.config_path} already has tunnel.hosts = ['dnd', 'prancer', 'newshost', 'notify']; "
        "nothing written"
    ]


async def test_notifyserv_is_reported_and_written_as_a_notify_host(
    listing_dnd: Config, tmp_path: Path
) -> None:
    """NOTIFYSERV names the Notify server: --write adds it to the table (dartnotify on
    TCP, notify on UDP) and protects it; a second write changes nothing."""
    found = await discover(listing_dnd, "notified")
    assert found.account.notifyserv == "notifier.dartmouth.edu"
    assert found.notify_host is None
    plain = await discover(listing_dnd, "rudy")
    assert plain.account.notifyserv == ""
    path = tmp_path / "config.toml"
    path.write_text(COMMENTED)
    kept = write_discovery(listing_dnd, found, path)
    assert kept[-1] == "notifier"
    written = load_config(path)
    notifier = written.host("notifier")
    assert notifier.names == ("notifier.dartmouth.edu", "notifier")
    assert {(f.port, f.proto) for f in written.forwards() if f.host == "notifier"} == {
        (2152, "tcp"),
        (2154, "udp"),
    }
    assert "my gateway" in path.read_text()
    rediscovered = Discovery(found.user, found.account, found.host, written.host("notifier"))
    before = path.read_text()
    assert write_discovery(written, rediscovered, path) == kept
    assert path.read_text() == before
