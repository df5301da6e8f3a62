"""Issue 16 in the namespaces: Notify over UDP through blitzdns, and what the client's
link carries meanwhile.

The fake Notify server runs on the server network (DND's address, ports 2152 and 2154),
which only the gateway reaches. ``blitzdns run`` in the client namespace protects a
Notify host (dartnotify on TCP, notify on UDP); sshd in the gateway namespace starts the
relay (python3) when the link comes up. The client registers at the UDP mouth, posts a
notice on the TCP mouth, and gets the notice back over UDP. tcpdump on the client's link
must see SSH with the gateway and nothing else: no UDP datagram, none of the cleartext.
The control sends the same registration in the clear from the client: the capture shows
it, so the check can fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import MakeBlitzdns
from .lab import AGENT, DND_IP, GATEWAY_IP, PYTHON, Capture, Lab, Sshd, stop_process
from .pcap import PROTO_UDP
from .test_leak import is_ssh_with_gateway, leaked, unexpected

pytestmark = pytest.mark.timeout(90)

NOTICE = "New mail from Demo Reindeer (netns)"
CLEARTEXT = (b"NR02", b"#1001", NOTICE.encode())
NOTIFIER = f"""
[hosts.notifier]
names = ["notifier.dartmouth.edu", "notifier"]
services = ["dartnotify", "notify"]
remote = "{DND_IP}"
"""


@pytest.fixture
def notify_server(lab: Lab) -> Iterator[Any]:
    out = lab.root / "notify-server.out"
    server = lab["srv"].spawn_ready(
        PYTHON, AGENT, "notify-server", DND_IP,
        marker='"ready"', log=out.with_suffix(".log"), stdout=out,
    )  # fmt: skip
    yield server
    stop_process(server)


def test_a_notice_comes_back_over_udp_and_the_link_carries_only_ssh(
    lab: Lab,
    notify_server: Any,
    sshd: Sshd,
    make_blitzdns: MakeBlitzdns,
    client_capture: Capture,
) -> None:
    daemon = make_blitzdns(sshd, extra=NOTIFIER, hosts=("dnd", "notifier")).start()
    daemon.wait_ready()
    client_capture.start()

    # The relay starts on the gateway once the link is up; a registration sent before it
    # answers is dropped (as UDP would lose it) and re-sent by the client, as ATP does.
    result = lab["client"].agent(
        "notify", "--resolver", "127.0.0.1:53", "--text", NOTICE, "--timeout", "30", timeout=45
    )
    frames = client_capture.stop()

    assert result["notice"] == NOTICE
    assert result["address"].startswith("127.")
    # the link was up before the capture began: the exchange is SSH packets, no banner
    assert any(is_ssh_with_gateway(f) and f.payload for f in frames), "the capture saw no SSH"
    assert [str(f) for f in frames if f.protocol == PROTO_UDP] == []
    assert unexpected(frames) == []
    assert leaked(frames, CLEARTEXT) == []


def test_the_same_registration_in_the_clear_is_seen(lab: Lab, client_capture: Capture) -> None:
    client_capture.start()
    lab["client"].agent("notify", "--plain", "--address", GATEWAY_IP, "--text", NOTICE)
    frames = client_capture.stop()
    assert [f for f in frames if f.protocol == PROTO_UDP], "no datagram in the capture"
    assert leaked(frames, CLEARTEXT) == list(CLEARTEXT)
    assert unexpected(frames) != []
