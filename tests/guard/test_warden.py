"""The resolver watch's privileged half (the warden): it puts back exactly what blitzdns
installed, and nothing else; and the root helper's narrow protocol."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from blitzdns.config import parse_config
from blitzdns.errors import BlitzdnsError
from blitzdns.guard_service import GuardService, Helper
from blitzdns.system.guard import Block, GuardRules, PortBlock, usable_address
from blitzdns.warden import BadRequest, Warden, rules_from_json, rules_to_json, spawn

from ..peers import wait_until
from .conftest import blitzdns

ORIGINAL = "nameserver 192.0.2.53\nsearch example.org\n"
LAN_DNS = "# written by a DHCP client\nnameserver 10.0.0.1\n"


@pytest.fixture
def installed_root(tmp_path: Path) -> Path:
    """A root whose /etc/resolv.conf was replaced by ``resolver-config install``."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "resolv.conf").write_text(ORIGINAL)
    config = tmp_path / "config.toml"
    config.write_text('[dns]\nlisten = ["127.0.0.1:53"]\n')
    done = blitzdns("resolver-config", "install", "-c", str(config), "--target", "resolvconf",
                    "--root", str(root))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root


def rewrite(path: Path, text: str) -> None:
    """As a DHCP client does: a new file renamed over the old one."""
    temp = path.with_name(".resolv.conf.dhcp")
    temp.write_text(text)
    os.replace(temp, path)


def test_a_rewritten_resolv_conf_is_put_back_exactly(installed_root: Path) -> None:
    resolv = installed_root / "etc" / "resolv.conf"
    ours = resolv.read_bytes()
    warden = Warden(installed_root)
    assert warden.check_resolver() == []
    assert warden.watched_paths() == ["/etc/resolv.conf"]
    rewrite(resolv, LAN_DNS)
    (drift,) = warden.check_resolver()
    assert (drift.path, drift.change, drift.restored) == ("/etc/resolv.conf", "a rewrite of", True)
    assert drift.describe() == "a rewrite of /etc/resolv.conf"
    assert resolv.read_bytes() == ours
    assert warden.check_resolver() == []


def test_a_removed_file_or_a_symlink_over_it_is_put_back(installed_root: Path) -> None:
    resolv = installed_root / "etc" / "resolv.conf"
    ours = resolv.read_bytes()
    warden = Warden(installed_root)
    warden.check_resolver()
    resolv.unlink()
    assert [d.change for d in warden.check_resolver()] == ["the removal of"]
    assert resolv.read_bytes() == ours
    resolv.unlink()
    resolv.symlink_to("/run/elsewhere/resolv.conf")
    assert [d.change for d in warden.check_resolver()] == ["a symlink over"]
    assert not resolv.is_symlink() and resolv.read_bytes() == ours


def test_what_was_never_seen_is_not_invented(installed_root: Path) -> None:
    """Changed before the watch began: the warden does not know the bytes, so it writes
    nothing and says what to do."""
    resolv = installed_root / "etc" / "resolv.conf"
    rewrite(resolv, LAN_DNS)
    (drift,) = Warden(installed_root).check_resolver()
    assert not drift.restored and "resolver-config install" in (drift.error or "")
    assert resolv.read_text() == LAN_DNS


def test_after_uninstall_there_is_nothing_to_watch(installed_root: Path) -> None:
    warden = Warden(installed_root)
    warden.check_resolver()
    assert blitzdns("resolver-config", "uninstall", "--root", str(installed_root)).returncode == 0
    assert warden.check_resolver() == []
    assert (installed_root / "etc" / "resolv.conf").read_text() == ORIGINAL


def test_rules_cross_to_the_helper_checked() -> None:
    rules = GuardRules(
        (Block("dnd", "tcp", (902,), (usable_address("198.51.100.2"),)),),  # type: ignore[arg-type]
        (PortBlock("notify", "udp", 2154),),
        ("dasher",),
    )
    assert rules_from_json(json.loads(json.dumps(rules_to_json(rules)))) == rules
    bad = rules_to_json(rules)
    bad["blocks"][0]["addresses"] = ["127.0.0.1"]
    with pytest.raises(BadRequest, match="not a real address"):
        rules_from_json(bad)
    bad = rules_to_json(rules)
    bad["blocks"][0]["host"] = 'x" ; flush ruleset'
    with pytest.raises(BadRequest, match="not a name"):
        rules_from_json(bad)


def test_the_root_helper_answers_its_two_requests_only(installed_root: Path) -> None:
    resolv = installed_root / "etc" / "resolv.conf"
    ours = resolv.read_bytes()
    sock, pid = spawn(installed_root)
    stream = sock.makefile("rwb", buffering=0)
    try:

        def ask(request: dict[str, object]) -> dict[str, object]:
            stream.write(json.dumps(request).encode() + b"\n")
            reply: dict[str, object] = json.loads(stream.readline())
            return reply

        assert ask({"cmd": "paths"}) == {"ok": True, "result": ["/etc/resolv.conf"]}
        rewrite(resolv, LAN_DNS)
        reply = ask({"cmd": "watch"})
        assert reply["ok"] and reply["result"][0]["restored"], reply  # type: ignore[index]
        assert resolv.read_bytes() == ours
        refused = ask({"cmd": "nft", "script": "flush ruleset"})
        assert refused == {"ok": False, "error": "unknown request 'nft'"}
        refused = ask({"cmd": "guard", "target": "pf", "rules": {}})
        assert refused["ok"] is False
        broken = ask({"cmd": "guard", "target": "nftables", "rules": {"blocks": [{}]}})
        assert broken["ok"] is False
        # One bad request is answered, never fatal: the helper still serves.
        assert ask({"cmd": "paths"}) == {"ok": True, "result": ["/etc/resolv.conf"]}
    finally:
        stream.close()
        sock.close()
        os.waitpid(pid, 0)


async def test_a_dead_root_helper_is_a_typed_error_and_the_watch_says_so(
    installed_root: Path,
) -> None:
    """The refresh and watch loops handle BlitzdnsError: a helper that died (a reset, then a
    broken pipe) must reach them as one, every time, or the loops end without a word and
    the resolver config is no longer put back."""
    sock, pid = spawn(installed_root)
    helper = Helper(sock, pid)
    service = GuardService(parse_config(""), [], helper, root=installed_root)
    try:
        assert await helper.paths() == ["/etc/resolv.conf"]
        os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(os.waitpid, pid, 0)
        for _ in range(3):
            with pytest.raises(BlitzdnsError, match="root helper"):
                await helper.paths()
        service.start()
        await wait_until(lambda: service.watch_error, timeout_s=30)
        assert "root helper" in (service.watch_error or "")
        assert all(not task.done() for task in service._tasks)
    finally:
        await service.close()
