"""The generated configs fed to the real programs that read them (dnsmasq, glibc).

- NetworkManager's dnsmasq snippet, loaded by a real dnsmasq on loopback: protected names
  reach the running blitzdns stub; unrelated names go to dnsmasq's usual upstream.
- The resolv.conf target inside a private mount + network namespace, where glibc's own
  resolver (``getent hosts``) must return the mouth for the full name and the short name.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from blitzdns.config import parse_config
from blitzdns.system import install as installer
from blitzdns.system import record as install_record
from blitzdns.system.resolvers import NM_DNSMASQ_SNIPPET, build_plan
from tests.peers import dig_short as dig
from tests.peers import free_port, wait_for

from .conftest import need, need_namespaces, run_in_namespace
from .dnsstub import Stub, blitzdns_stub

#: The preset's mouths (tunnel.mouths 127.77.0.0/24, fixed offsets).
DND_MOUTH = "127.77.0.1"
DASHER_MOUTH = "127.77.0.2"


@pytest.fixture
def dnsmasq_with_snippet(tmp_path: Path) -> Iterator[tuple[int, Stub, Stub]]:
    """dnsmasq reading only our snippet, its usual upstream a stand-in that is not blitzdns."""
    need("dnsmasq", "dig")
    usual = Stub({"example.com": "192.0.2.99", "www.dartmouth.edu": "192.0.2.80"})
    behind_stub = Stub({"example.com": "198.51.100.7", "www.dartmouth.edu": "198.51.100.80"})
    with usual, behind_stub, blitzdns_stub("127.0.0.1:0", f"127.0.0.1:{behind_stub.port}") as at:
        config = parse_config(f'[dns]\nlisten = ["{at}"]\n')
        plan = build_plan(config, "networkmanager")
        (snippet,) = [f for f in plan.files if f.path == NM_DNSMASQ_SNIPPET]
        conf = tmp_path / "blitzdns.conf"
        conf.write_bytes(snippet.content)
        port = free_port()
        argv = ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", "--no-resolv"]
        argv += ["--no-hosts", f"--server=127.0.0.1#{usual.port}", f"--port={port}"]
        argv += ["--listen-address=127.0.0.1", "--bind-interfaces", "--pid-file="]
        dnsmasq = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:

            def answering() -> bool:
                if dnsmasq.poll() is not None:
                    pytest.fail(f"dnsmasq exited: {dnsmasq.communicate()[1][-800:]}")
                return dig(port, "example.com") == ["192.0.2.99"]

            wait_for(answering, "dnsmasq to answer through its usual upstream", 30)
            usual.questions.clear()
            yield port, usual, behind_stub
        finally:
            dnsmasq.terminate()
            dnsmasq.communicate(timeout=10)


def test_networkmanager_snippet_in_a_real_dnsmasq_reaches_the_stub(
    dnsmasq_with_snippet: tuple[int, Stub, Stub],
) -> None:
    port, usual, behind_stub = dnsmasq_with_snippet
    assert dig(port, "dnd.dartmouth.edu") == [DND_MOUTH]
    assert dig(port, "DASHER.Dartmouth.EDU.") == [DASHER_MOUTH]
    # The bare name: dnsmasq's server=/dnd/ matches the name itself.
    assert dig(port, "dnd") == [DND_MOUTH]
    assert dig(port, "dasher") == [DASHER_MOUTH]
    # Protected names never reached the usual upstream.
    assert not [q for q in usual.questions if "dnd" in q[0] or "dasher" in q[0]]

    # An unrelated name goes where it went before, not through the stub.
    assert dig(port, "example.com") == ["192.0.2.99"]
    assert ("example.com", "A") in usual.questions
    assert not [q for q in behind_stub.questions if q[0] == "example.com"]
    # Another name inside the protected domain goes to the stub, which forwards it.
    assert dig(port, "www.dartmouth.edu") == ["198.51.100.80"]


def test_resolvconf_target_answers_glibc_in_a_private_namespace(tmp_path: Path) -> None:
    need_namespaces()
    need("getent", "mount")
    root = tmp_path / "machine"
    (root / "etc").mkdir(parents=True)
    (root / "etc/resolv.conf").write_bytes(b"search lan\nnameserver 192.0.2.53\n")
    config = parse_config('[dns]\nlisten = ["127.0.0.1:53"]\n')
    current = install_record.original_bytes(Path("/etc/resolv.conf"), root)
    installer.install(
        build_plan(config, "resolvconf", current_resolv_conf=current), root, sudo_hint="x"
    )
    assert install_record.saved_upstreams(root) == ("192.0.2.53",)

    done = run_in_namespace(
        "getent", str(root / "etc/resolv.conf"), "dnd.dartmouth.edu", "dnd", "dasher", "kringle"
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results == {
        "dnd.dartmouth.edu": [DND_MOUTH],
        "dnd": [DND_MOUTH],
        "dasher": [DASHER_MOUTH],
        "kringle": [DND_MOUTH],
    }
