"""The UDP framing codec, the relay's own parser (its twin) and the socat transcript: pure,
property-checked under every chunking of the byte streams."""

from __future__ import annotations

import itertools
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tunnel.udp_relay as relay_program
from tunnel.udp import (
    BOOTSTRAP,
    HEADER,
    KIND_CLOSE,
    KIND_DATA,
    KIND_DROPPED,
    KIND_HELLO,
    KIND_OPEN,
    MAX_DATAGRAM,
    RELAY_PROGRAM,
    Frame,
    FrameDecoder,
    FramingError,
    RelayLimits,
    SocatConnected,
    SocatDatagram,
    SocatTranscript,
    SocatTransfer,
    encode,
    parse_socat_line,
    python_relay_command,
    socat_command,
)

kinds = st.sampled_from([KIND_HELLO, KIND_OPEN, KIND_DATA, KIND_CLOSE, KIND_DROPPED])
frames = st.builds(
    Frame,
    kind=kinds,
    association=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=600),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates allowed)."""
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(frames, max_size=20), st.lists(st.integers(0, 10**6), max_size=30))
def test_frames_survive_any_chunking(sent: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(frame.encode() for frame in sent)
    decoder = FrameDecoder()
    received = [frame for piece in chunked(stream, cuts) for frame in decoder.feed(piece)]
    assert received == sent
    assert decoder.pending == 0


@given(frames)
def test_encode_function_matches_frame_encode(frame: Frame) -> None:
    assert encode(frame.kind, frame.association, frame.payload) == frame.encode()


def test_largest_datagram_fits_and_more_is_refused() -> None:
    big = Frame(KIND_DATA, 7, b"x" * MAX_DATAGRAM)
    assert FrameDecoder().feed(big.encode()) == [big]
    with pytest.raises(ValueError):
        Frame(KIND_DATA, 7, b"x" * (MAX_DATAGRAM + 1))


def test_unknown_kind_is_a_framing_error() -> None:
    with pytest.raises(FramingError, match="unknown frame kind 0x5a"):
        FrameDecoder().feed(HEADER.pack(ord("Z"), 1, 0))


def test_a_claim_over_the_limit_is_refused_before_its_payload_arrives() -> None:
    decoder = FrameDecoder(max_payload=100)
    with pytest.raises(FramingError, match="101 bytes"):
        decoder.feed(HEADER.pack(KIND_DATA, 1, 101))


class RecordingRelay(relay_program.Relay):
    """The relay's own parser, with its actions recorded instead of performed."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1", 9, 65507, 1.0, 10, out_fd=-1)
        self.actions: list[tuple[str, int, bytes]] = []

    def forward_up(self, association: int, datagram: bytes) -> None:
        self.actions.append(("data", association, datagram))

    def open(self, association: int) -> None:
        self.actions.append(("open", association, b""))

    def close(self, association: int, reason: bytes = b"") -> None:
        self.actions.append(("close", association, reason))


local_frames = st.builds(
    Frame,
    kind=st.sampled_from([KIND_OPEN, KIND_DATA, KIND_CLOSE]),
    association=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=300),
)


@given(st.lists(local_frames, max_size=20), st.lists(st.integers(0, 10**6), max_size=30))
@settings(max_examples=200)
def test_the_relay_parses_what_the_codec_writes(sent: list[Frame], cuts: list[int]) -> None:
    """The relay (which cannot import the codec on the gateway) is the codec's twin."""
    relay = RecordingRelay()
    for piece in chunked(b"".join(frame.encode() for frame in sent), cuts):
        relay.feed(piece)
    names = {KIND_OPEN: "open", KIND_DATA: "data", KIND_CLOSE: "close"}
    expected = [
        (names[f.kind], f.association, f.payload if f.kind == KIND_DATA else b"") for f in sent
    ]
    assert relay.actions == expected
    assert relay.buffer == b""


def test_the_relay_refuses_a_stream_that_is_not_frames() -> None:
    with pytest.raises(SystemExit):
        RecordingRelay().feed(b"SSH-2.0-OpenSSH\r\n")


def test_the_relay_command_is_one_shell_word_per_argument() -> None:
    command = python_relay_command("notify.example.org", 2154, RelayLimits(1000, 600.0, 8))
    words = shlex.split(command)
    assert words == [
        "python3",
        "-c",
        BOOTSTRAP,
        str(len(RELAY_PROGRAM)),
        "notify.example.org",
        "2154",
        "1000",
        "600",
        "8",
    ]
    assert "\n" not in command and "!" not in command
    assert "'" not in BOOTSTRAP  # so single quotes carry it through sh and csh alike


def test_socat_command_brackets_ipv6_targets() -> None:
    assert shlex.split(socat_command("::1", 53))[-1] == "UDP:[::1]:53"


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_datagram": 0}, "max_datagram"),
        ({"max_datagram": MAX_DATAGRAM + 1}, "max_datagram"),
        ({"idle_s": 0}, "idle_s"),
        ({"max_associations": 0}, "max_associations"),
    ],
)
def test_relay_limits_are_validated(limits: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RelayLimits(**limits)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# socat's transfer log


def test_socat_lines_as_socat_1_7_writes_them() -> None:
    assert parse_socat_line(
        b"2026/12/03 13:45:49 socat[13147] N successfully connected from local address "
        b"AF=2 127.0.0.1:45549"
    ) == SocatConnected("127.0.0.1", 45549)
    assert parse_socat_line(
        b"2026/12/03 13:45:49 socat[1] N successfully connected from local address AF=10 "
        b"[::1]:40000"
    ) == SocatConnected("::1", 40000)
    assert parse_socat_line(
        b"> 2026/12/03 13:45:49.000834027  length=7 from=0 to=6"
    ) == SocatTransfer("up", 7)
    assert parse_socat_line(
        b"< 2026/12/03 13:45:49.000834148  length=3 from=7 to=9"
    ) == SocatTransfer("down", 3)
    assert parse_socat_line(b" 68 65 6c 6c 6f 00 01") is None
    assert parse_socat_line(b"2026/12/03 13:45:50 socat[13147] N exiting with status 0") is None


def socat_log(datagrams: list[bytes]) -> bytes:
    lines, offset = [], 0
    for datagram in datagrams:
        end = offset + len(datagram) - 1
        lines.append(
            f"< 2026/12/03 13:45:49.000834027  length={len(datagram)} from={offset} to={end}"
        )
        lines.append(" " + " ".join(f"{byte:02x}" for byte in datagram))
        offset += len(datagram)
    return "\n".join(lines).encode() + b"\n"


@given(
    st.lists(st.binary(min_size=1, max_size=200), max_size=15),
    st.lists(st.integers(0, 10**6), max_size=20),
    st.lists(st.integers(0, 10**6), max_size=20),
    st.randoms(use_true_random=False),
)
def test_socat_output_is_cut_back_into_datagrams(
    datagrams: list[bytes], out_cuts: list[int], log_cuts: list[int], rnd: object
) -> None:
    """However stdout and the log are chunked and interleaved, the datagrams come out whole."""
    import random

    assert isinstance(rnd, random.Random)
    transcript = SocatTranscript()
    pieces = [("out", p) for p in chunked(b"".join(datagrams), out_cuts)]
    log_pieces = [("log", p) for p in chunked(socat_log(datagrams), log_cuts)]
    merged: list[tuple[str, bytes]] = []
    while pieces or log_pieces:  # a random interleaving keeping each stream in order
        source = pieces if (pieces and (not log_pieces or rnd.random() < 0.5)) else log_pieces
        merged.append(source.pop(0))
    out = []
    for which, piece in merged:
        feed = transcript.feed_output if which == "out" else transcript.feed_log
        out += [event.payload for event in feed(piece) if isinstance(event, SocatDatagram)]
    assert out == datagrams
