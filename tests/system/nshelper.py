"""Runs inside ``unshare -m -n`` (a private mount and network namespace) for the system tests.

``getent RESOLV_CONF QUERY...``: bring up loopback, run the real blitzdns stub (built-in
preset) on 127.0.0.1:53, bind-mount RESOLV_CONF over /etc/resolv.conf, and print as JSON
what glibc's own resolver (``getent hosts``) returns for each QUERY.

``facts CONFIG RESOLV_CONF GATEWAY...``: build a veth pair with 10.9.0.2/24 and
129.170.16.40/22, bind-mount RESOLV_CONF over /etc/resolv.conf, then for each GATEWAY make
it the default route and print one JSON line with :func:`read_facts` and
:func:`match_location` (the route change a roaming laptop sees).

Nothing here can leave the machine: the network namespace has only the links made here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from dnsstub import Stub, blitzdns_stub


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def getent(argv: list[str]) -> None:
    resolv_conf, queries = argv[0], argv[1:]
    sh("ip", "link", "set", "lo", "up")
    # The upstream knows no name (NXDOMAIN for all, at once): only the stub's own answers
    # can carry an address, and glibc's search-list tries (``dnd.lan``) do not wait for
    # the stub's timeout.
    with Stub({}) as upstream, blitzdns_stub("127.0.0.1:53", f"127.0.0.1:{upstream.port}"):
        sh("mount", "--bind", resolv_conf, "/etc/resolv.conf")
        results = {}
        for query in queries:
            done = subprocess.run(
                ["getent", "hosts", query], capture_output=True, text=True, timeout=20, check=False
            )
            results[query] = done.stdout.split()[:1] if done.returncode == 0 else []
        print(json.dumps(results))


def facts(argv: list[str]) -> None:
    from blitzdns.config import load_config
    from blitzdns.system.locations import match_location
    from blitzdns.system.netfacts import read_facts

    config = load_config(Path(argv[0]))
    sh("mount", "--bind", argv[1], "/etc/resolv.conf")
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    sh("ip", "link", "set", "v0", "up")
    sh("ip", "link", "set", "v1", "up")
    sh("ip", "addr", "add", "10.9.0.2/24", "dev", "v0")
    sh("ip", "addr", "add", "129.170.16.40/22", "dev", "v1")
    for gateway in argv[2:]:
        sh("ip", "route", "replace", "default", "via", gateway)
        found = read_facts()
        match = match_location(config, found)
        print(
            json.dumps(
                {
                    "facts": found.to_dict(),
                    "location": match.name if match else None,
                    "reasons": list(match.reasons) if match else [],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    {"getent": getent, "facts": facts}[sys.argv[1]](sys.argv[2:])
