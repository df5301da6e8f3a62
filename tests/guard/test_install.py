"""``blitzdns guard show|install|uninstall``: the real command, files under --root, the
firewall live in a network namespace of the test's own (never the machine's)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.system.conftest import snapshot

from .conftest import Dnsmasq, blitzdns, ruleset, try_connect

CONFIG = '[tunnel]\nhosts = ["dnd", "dasher"]\n'
PINNED = ["--address", "dnd=198.51.100.2", "--address", "dasher=198.51.100.3"]


def write_config(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG + extra)
    return str(path)


def test_show_resolves_the_protected_names_through_the_upstream(
    tmp_path: Path, real_dns: Dnsmasq
) -> None:
    config = write_config(tmp_path, f'[dns]\nupstreams = ["127.0.0.1:{real_dns.port}"]\n')
    done = blitzdns("guard", "show", "-c", config, "--target", "nftables", "--root", str(tmp_path))
    assert done.returncode == 0, done.stderr
    # dnd is a CNAME to a host with an A and an AAAA record: both addresses, followed.
    assert "  dnd: 198.51.100.2, 2001:db8::2 tcp 902" in done.stdout
    assert "  dasher: 198.51.100.3 tcp 2151" in done.stdout
    assert "ip6 daddr { 2001:db8::2 } tcp dport { 902 } reject with tcp reset" in done.stdout


def test_install_then_uninstall_leaves_the_root_as_it_was(tmp_path: Path) -> None:
    config = write_config(tmp_path)

    def install_twice_then_uninstall(target: str) -> None:
        """On a root of the target's own (the three run side by side)."""
        root = tmp_path / target
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "pf.conf").write_text('anchor "com.apple/*"\n')
        before = snapshot(root)
        first = blitzdns("guard", "install", "-c", config, "--target", target,
                         "--root", str(root), *PINNED)  # fmt: skip
        assert first.returncode == 0, first.stderr
        again = blitzdns("guard", "install", "-c", config, "--target", target,
                         "--root", str(root), *PINNED)  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert "created" not in again.stdout and "replaced" not in again.stdout
        done = blitzdns("guard", "uninstall", "--root", str(root))
        assert done.returncode == 0, done.stderr
        assert snapshot(root) == before, target

    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(install_twice_then_uninstall, ("nftables", "pf", "windows")))


def test_the_guard_and_the_resolver_config_have_separate_records(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    before = snapshot(root)
    config = write_config(tmp_path, '[dns]\nlisten = ["127.0.0.1:53"]\n')
    resolver = blitzdns("resolver-config", "install", "-c", config, "--target", "resolvconf",
                        "--root", str(root))  # fmt: skip
    assert resolver.returncode == 0, resolver.stderr
    guard = blitzdns("guard", "install", "-c", config, "--target", "nftables",
                     "--root", str(root), *PINNED)  # fmt: skip
    assert guard.returncode == 0, guard.stderr
    assert blitzdns("guard", "uninstall", "--root", str(root)).returncode == 0
    assert "nameserver 127.0.0.1" in (root / "etc" / "resolv.conf").read_text()
    assert blitzdns("resolver-config", "uninstall", "--root", str(root)).returncode == 0
    assert snapshot(root) == before


def test_apply_refuses_at_once_and_uninstall_restores_the_ruleset_exactly(
    tmp_path: Path, netns: str
) -> None:
    config = write_config(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    before = ruleset(netns)
    # Control: without the guard nobody answers the real address (the dummy link eats it).
    assert try_connect(netns, "198.51.100.2", 902, timeout=0.5) == "timeout"
    done = blitzdns("guard", "install", "-c", config, "--target", "nftables",
                    "--root", str(root), "--apply", *PINNED, netns=netns)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "table inet blitzdns" in ruleset(netns)
    assert try_connect(netns, "198.51.100.2", 902) == "refused"
    assert try_connect(netns, "198.51.100.3", 2151) == "refused"
    # Another port of the same host, and another address, are untouched.
    assert try_connect(netns, "198.51.100.2", 22, timeout=0.5) == "timeout"
    # Applying again replaces the table in one go: still one table, same rules.
    again = blitzdns("guard", "install", "-c", config, "--target", "nftables",
                     "--root", str(root), "--apply", *PINNED, netns=netns)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert ruleset(netns).count("table inet blitzdns") == 1
    gone = blitzdns("guard", "uninstall", "--root", str(root), "--apply", netns=netns)
    assert gone.returncode == 0, gone.stderr
    assert ruleset(netns) == before
    assert not any(root.iterdir())


def test_uninstall_leaves_other_tables_alone(tmp_path: Path, netns: str) -> None:
    from .conftest import need_netns

    need_netns()
    import subprocess

    subprocess.run(["ip", "netns", "exec", netns, "nft", "add", "table", "inet", "mine"],
                   check=True)  # fmt: skip
    before = ruleset(netns)
    config = write_config(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    assert blitzdns("guard", "install", "-c", config, "--target", "nftables", "--root",
                    str(root), "--apply", *PINNED, netns=netns).returncode == 0  # fmt: skip
    assert blitzdns("guard", "uninstall", "--root", str(root), "--apply",
                    netns=netns).returncode == 0  # fmt: skip
    assert ruleset(netns) == before


def test_a_bad_address_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    done = blitzdns("guard", "show", "-c", config, "--target", "nftables",
                    "--address", "dnd=127.0.0.1")  # fmt: skip
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "not a real address" in done.stderr
