"""The pure DND core: line splitting, reply parsing, commands, reply readers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blitzdns.blitzmail import dnd
from blitzdns.blitzmail.dnd import (
    Ambiguous,
    FieldDenied,
    FieldInfo,
    FieldsReader,
    InvalidRequest,
    LineSplitter,
    LineTooLong,
    LookupReader,
    LookupResult,
    NoBlitzServ,
    NoMatch,
    ProtocolError,
    Reply,
    TooVague,
    parse_reply,
)


def feed_all(reader: dnd.ReplyReader[dnd.T], lines: list[str]) -> dnd.T:
    """Feed reply lines; the last must complete the reader, none before it."""
    for line in lines[:-1]:
        assert reader.feed(parse_reply(line)) is None
    result = reader.feed(parse_reply(lines[-1]))
    assert result is not None
    return result


# --- replies -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code", "text"),
    [
        ("220 DND server here.", 220, "DND server here."),
        ("110 ", 110, ""),
        ("110", 110, ""),
        ("110  two leading", 110, " two leading"),
        ("110 a b  c ", 110, "a b  c "),
        (
            "201 Additional matching records not returned.",
            201,
            "Additional matching records not returned.",
        ),
    ],
)
def test_parse_reply_keeps_text_after_first_space(line: str, code: int, text: str) -> None:
    assert parse_reply(line) == Reply(code, text)


@pytest.mark.parametrize("line", ["", "22", "2200 x", "abc ok", " 220 x", "220-more", "２２０ x"])
def test_parse_reply_rejects_non_reply_lines(line: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_reply(line)
    assert caught.value.line == line


@given(st.text())
def test_parse_reply_never_crashes_on_junk(line: str) -> None:
    try:
        reply = parse_reply(line)
    except ProtocolError:
        return
    assert 0 <= reply.code <= 999


@given(st.integers(0, 999), st.text().filter(lambda t: "\n" not in t and "\r" not in t))
def test_parse_reply_round_trips(code: int, text: str) -> None:
    assert parse_reply(str(Reply(code, text))) == Reply(code, text)


# --- lines -------------------------------------------------------------------


def test_splitter_accepts_crlf_and_bare_lf_across_chunks() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"220 hi\r") == []
    assert splitter.feed(b"\n101 1 1\n110 x") == [b"220 hi", b"101 1 1"]
    assert splitter.pending == b"110 x"
    assert splitter.feed(b"\r\n") == [b"110 x"]


def test_splitter_in_cr_mode_counts_split_crlf_once() -> None:
    splitter = LineSplitter(cr_ends_line=True)
    assert splitter.feed(b"VERS a\r") == [b"VERS a"]
    assert splitter.feed(b"\nNOOP\rQUIT\n") == [b"NOOP", b"QUIT"]


def test_splitter_refuses_endless_line() -> None:
    splitter = LineSplitter(max_line=16)
    with pytest.raises(LineTooLong):
        splitter.feed(b"x" * 17)
    with pytest.raises(LineTooLong):
        LineSplitter(cr_ends_line=True, max_line=16).feed(b"y" * 17)


lines_strategy = st.lists(st.binary().map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))


@given(lines_strategy, st.sampled_from([b"\n", b"\r\n", b"\r"]), st.data())
def test_splitter_lines_survive_any_chunking(
    lines: list[bytes], ending: bytes, data: st.DataObject
) -> None:
    stream = b"".join(line + ending for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    splitter = LineSplitter(cr_ends_line=ending == b"\r", max_line=1 << 20)
    got: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += splitter.feed(stream[start:end])
    assert got == lines
    assert splitter.pending == b""


# --- commands ----------------------------------------------------------------


def test_lookup_command_upper_cases_fields() -> None:
    assert dnd.lookup_command(" demo ", ["name", "Uid"]) == "LOOKUP demo,NAME UID"
    assert dnd.lookup_command("#1001") == "LOOKUP #1001"
    assert dnd.fields_command() == "FIELDS"
    assert dnd.validate_command("demo", ["NAME"]) == "VALIDATE demo,NAME"


@pytest.mark.parametrize("key", ["", "   ", "a,b", "demo\r\nQUIT", "x\0"])
def test_lookup_command_refuses_unsendable_keys(key: str) -> None:
    with pytest.raises(InvalidRequest):
        dnd.lookup_command(key, ["NAME"])


@pytest.mark.parametrize("fields", [["NAME UID"], ["NA,ME"], [""], "NAME"])
def test_lookup_command_refuses_bad_field_names(fields: list[str]) -> None:
    with pytest.raises(InvalidRequest):
        dnd.lookup_command("demo", fields)


# --- readers -----------------------------------------------------------------


def test_lookup_reader_rows_record_by_record_with_empty_values() -> None:
    result = feed_all(
        LookupReader(("NAME", "NICKNAME")),
        ["101 2 2", "110 Demo User", "110 demo", "110 Demo Reindeer", "110 ", "200 Ok."],
    )
    assert result.rows == (("Demo User", "demo"), ("Demo Reindeer", ""))
    assert result.records[1] == {"NAME": "Demo Reindeer", "NICKNAME": ""}
    assert not result.truncated


def test_lookup_reader_without_fields_counts_records() -> None:
    result = feed_all(
        LookupReader(()), ["101 3 0", "201 Additional matching records not returned."]
    )
    assert result.rows == ((), (), ())
    assert result.truncated


@pytest.mark.parametrize(
    ("code", "kind"),
    [(520, NoMatch), (521, FieldDenied), (501, FieldDenied), (522, Ambiguous), (523, TooVague)],
)
def test_lookup_reader_maps_refusals(code: int, kind: type[dnd.DndRefusal]) -> None:
    with pytest.raises(kind) as caught:
        LookupReader(("NAME",)).feed(Reply(code, "no"))
    assert caught.value.reply.code == code
    assert not caught.value.retryable


@pytest.mark.parametrize(
    "lines",
    [
        ["101 1 2", "110 a", "200 Ok."],
        ["101 1 1", "110 a", "110 b"],
        ["101 one 1"],
        ["101 1 3"],
        ["220 hello"],
        ["101 1 1", "120 NAME A A"],
    ],
)
def test_lookup_reader_rejects_out_of_shape_replies(lines: list[str]) -> None:
    reader = LookupReader(("NAME",))
    with pytest.raises(ProtocolError):
        for line in lines:
            reader.feed(parse_reply(line))


def test_unique_reports_candidates_and_truncation() -> None:
    several = LookupResult(("NAME", "UID"), (("A One", "1"), ("A Two", "2")))
    with pytest.raises(Ambiguous) as caught:
        several.unique()
    assert caught.value.candidates == ("A One", "A Two")
    assert "A One, A Two" in str(caught.value)
    one_of_many = LookupResult(("NAME",), (("A One",),), truncated=True)
    with pytest.raises(Ambiguous) as caught:
        one_of_many.unique()
    assert caught.value.truncated
    with pytest.raises(NoMatch):
        LookupResult(("NAME",), ()).unique()
    assert LookupResult(("NAME",), (("A One",),)).unique() == {"NAME": "A One"}


def test_fields_reader() -> None:
    infos = feed_all(FieldsReader(), ["102 2", "120 name T A", "120 PERM T T", "200 Ok."])
    assert infos == (FieldInfo("NAME", "T", "A"), FieldInfo("PERM", "T", "T"))
    with pytest.raises(ProtocolError):
        feed_all(FieldsReader(), ["102 1", "120 NAME", "200 Ok."])


# --- BLITZSERV ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("dasher.Dartmouth.EDU@BlitzServ", "dasher.dartmouth.edu"),
        ("PRANCER.dartmouth.edu", "prancer.dartmouth.edu"),
        ("vixen@Zone@Odd", "vixen"),
        ("comet.dartmouth.edu.@BlitzServ", "comet.dartmouth.edu"),
    ],
)
def test_blitzserv_host_drops_zone_and_case(value: str, host: str) -> None:
    assert dnd.blitzserv_host(value) == host


def test_blitzserv_host_refuses_empty_and_junk() -> None:
    with pytest.raises(NoBlitzServ):
        dnd.blitzserv_host("@BlitzServ")
    with pytest.raises(NoBlitzServ):
        dnd.blitzserv_host("")
    for junk in ("dasher dartmouth", "-dasher.edu", "a..b", "x/y@Z"):
        with pytest.raises(ProtocolError):
            dnd.blitzserv_host(junk)


def test_account_short_server() -> None:
    account = dnd.account_from_record(
        {"NAME": "Demo User", "UID": "1001", "BLITZSERV": "dasher.Dartmouth.EDU@BlitzServ"}
    )
    assert account.blitzserv == "dasher.dartmouth.edu"
    assert account.short_server == "dasher"


reply_lines = st.one_of(
    st.builds(
        lambda code, text: f"{code} {text}",
        st.sampled_from([101, 110, 200, 201, 220, 520, 522, 999]),
        st.one_of(st.text(max_size=12), st.sampled_from(["1 1", "2 1", "0 1", "1 0", "x y"])),
    ),
    st.text(max_size=20),
)


@given(st.lists(reply_lines, max_size=12))
def test_lookup_reader_fails_only_with_dnd_errors(lines: list[str]) -> None:
    reader = LookupReader(("NAME",))
    try:
        for line in lines:
            result = reader.feed(parse_reply(line))
            if result is not None:
                assert all(len(row) == 1 for row in result.rows)
                return
    except dnd.DndError:
        return
