"""The local side's association table (pure): one association per sender, ids never
reused, replies only to their own sender, drops counted by reason."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tunnel.udp import (
    KIND_CLOSE,
    KIND_DATA,
    KIND_DROPPED,
    KIND_OPEN,
    Frame,
    FrameDecoder,
    RelayLimits,
)
from tunnel.udp_assoc import MAX_QUEUED, ToClient, ToRelay, UdpCore

A = ("127.0.0.1", 40001)
B = ("127.0.0.1", 40002)


def frames_of(actions: list[object]) -> list[Frame]:
    decoder = FrameDecoder()
    return [f for a in actions if isinstance(a, ToRelay) for f in decoder.feed(a.data)]


def ready(limits: RelayLimits | None = None, step: object = None) -> UdpCore:
    core = UdpCore(limits or RelayLimits(), step)  # type: ignore[arg-type]
    core.relay_started()
    return core


def opened(core: UdpCore, sender: tuple[str, int], datagram: bytes, port: int) -> int:
    [open_frame] = frames_of(core.from_client(sender, datagram, now=0))
    assert open_frame.kind == KIND_OPEN
    sent = frames_of(
        core.from_relay(Frame(KIND_OPEN, open_frame.association, b"10.0.0.1 %d" % port), 0)
    )
    assert sent == [Frame(KIND_DATA, open_frame.association, datagram)]
    return open_frame.association


def test_a_sender_waits_for_its_association_then_is_carried() -> None:
    core = ready()
    first = opened(core, A, b"hello", 5000)
    assert frames_of(core.from_client(A, b"again", 1)) == [Frame(KIND_DATA, first, b"again")]
    assert core.from_relay(Frame(KIND_DATA, first, b"reply"), 1) == [ToClient(b"reply", A)]
    assert core.counters.datagrams_out == 2 and core.counters.datagrams_in == 1


def test_replies_go_only_to_their_own_sender() -> None:
    core = ready()
    a, b = opened(core, A, b"a", 5000), opened(core, B, b"b", 5001)
    assert a != b
    assert core.from_relay(Frame(KIND_DATA, a, b"for a"), 1) == [ToClient(b"for a", A)]
    assert core.from_relay(Frame(KIND_DATA, b, b"for b"), 1) == [ToClient(b"for b", B)]


@given(st.lists(st.sampled_from(["open-a", "open-b", "gone", "close-a"]), max_size=30))
def test_ids_are_never_reused_so_a_stale_reply_reaches_nobody(script: list[str]) -> None:
    core = ready()
    seen: dict[int, tuple[str, int]] = {}
    for step in script:
        if step.startswith("open"):
            sender = A if step == "open-a" else B
            for frame in frames_of(core.from_client(sender, b"x", 0)):
                if frame.kind == KIND_OPEN:
                    assert frame.association not in seen
                    seen[frame.association] = sender
                    core.from_relay(Frame(KIND_OPEN, frame.association, b"10.0.0.1 1"), 0)
        elif step == "gone":
            core.relay_gone()
            core.relay_started()
        else:
            association = core.association_of(A)
            if association is not None:
                core.from_relay(Frame(KIND_CLOSE, association.id, b"idle"), 0)
        for association_id, sender in seen.items():
            for action in core.from_relay(Frame(KIND_DATA, association_id, b"r"), 0):
                assert isinstance(action, ToClient) and action.address == sender
                current = core.association_of(sender)
                assert current is not None and current.id == association_id


def test_without_a_relay_datagrams_are_dropped_and_counted() -> None:
    core = UdpCore()
    assert core.from_client(A, b"x", 0) == []
    core.relay_started()
    opened(core, A, b"y", 5000)
    core.relay_gone()
    assert core.associations == 0
    assert core.from_client(A, b"z", 0) == []
    assert core.counters.dropped == {"no link": 2}


def test_oversize_both_ways() -> None:
    core = ready(RelayLimits(max_datagram=4))
    assert core.from_client(A, b"12345", 0) == []
    a = opened(core, A, b"1234", 5000)
    assert core.from_relay(Frame(KIND_DATA, a, b"12345"), 0) == []
    core.from_relay(Frame(KIND_DROPPED, a, b"oversize"), 0)
    assert core.counters.dropped == {"oversize": 3}


def test_socat_lowers_the_size_limit() -> None:
    core = UdpCore(RelayLimits(max_datagram=8192))
    core.relay_started(max_datagram=4096)
    assert core.from_client(A, b"x" * 4097, 0) == []
    assert core.counters.dropped == {"oversize": 1}


def test_the_queue_while_opening_is_bounded() -> None:
    core = ready()
    for _ in range(MAX_QUEUED + 3):
        core.from_client(A, b"x", 0)
    assert core.counters.dropped == {"queue full": 3}


def test_idle_associations_expire_on_the_local_side_too() -> None:
    core = ready(RelayLimits(idle_s=10))
    a = opened(core, A, b"x", 5000)
    assert core.expire(now=9) == []
    assert frames_of(core.expire(now=10)) == [Frame(KIND_CLOSE, a)]
    assert core.associations == 0
    assert core.from_relay(Frame(KIND_DATA, a, b"late"), 11) == []
    assert core.counters.dropped == {"association closed": 1}


class Step:
    """A step that asks for notices on port 6000 and calls b"REQ…" server-initiated."""

    def upstream(self, datagram: bytes, relay_port: int) -> tuple[bytes, int | None]:
        if datagram.startswith(b"REG"):
            return b"REG%d" % relay_port, 6000
        return datagram, None

    def server_initiated(self, datagram: bytes) -> bool:
        return datagram.startswith(b"REQ")


def test_a_step_rewrites_and_routes_notices_to_the_registered_port() -> None:
    core = ready(step=Step())
    [open_frame] = frames_of(core.from_client(A, b"REG", 0))
    a = open_frame.association
    sent = frames_of(core.from_relay(Frame(KIND_OPEN, a, b"10.0.0.1 7777"), 0))
    assert sent == [Frame(KIND_DATA, a, b"REG7777")]
    notice_port = ("127.0.0.1", 6000)
    assert core.from_relay(Frame(KIND_DATA, a, b"REQ new mail"), 1) == [
        ToClient(b"REQ new mail", notice_port)
    ]
    assert core.from_relay(Frame(KIND_DATA, a, b"RSP"), 1) == [ToClient(b"RSP", A)]
    # the client's answer from its notice port joins the same association
    assert frames_of(core.from_client(notice_port, b"answer", 2)) == [
        Frame(KIND_DATA, a, b"answer")
    ]
    assert core.associations == 1
