"""The decision as a table of cases: no sockets, no event loop."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import pytest

from blitzdns.config import build_config, parse_config
from blitzdns.dns.decide import (
    Decision,
    Drop,
    Edns,
    Forward,
    Local,
    Query,
    Question,
    Reject,
    decide,
)
from blitzdns.dns.rfc import (
    AAAA,
    ANY,
    BADVERS,
    FORMERR,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    PTR,
    REFUSED,
    SOA,
    TXT,
    A,
)
from blitzdns.dns.table import Table, labels_of

from .conftest import SHARED_TOML

MX, HTTPS, CLASS_CH = 15, 65, 3


@pytest.fixture(scope="module")
def table() -> Table:
    return Table.from_config(parse_config(SHARED_TOML))


def ask(
    table: Table,
    name: str,
    qtype: int = A,
    client: str = "127.0.0.1",
    qclass: int = 1,
    **fields: Any,
) -> Decision:
    question = Question(labels_of(name), qtype, qclass)
    query = Query(id=1, qr=False, opcode=0, rd=True, cd=False, questions=(question,))
    return decide(replace(query, **fields), table, client)


def only_answer(decision: object) -> tuple[int, object]:
    assert isinstance(decision, Local), decision
    assert decision.rcode == NOERROR
    assert len(decision.answers) == 1 and not decision.authority
    return decision.answers[0].rtype, decision.answers[0].rdata


def assert_nodata(decision: object, owner: str) -> None:
    assert isinstance(decision, Local), decision
    assert decision.rcode == NOERROR and not decision.answers
    (soa,) = decision.authority
    assert soa.rtype == SOA and soa.owner == labels_of(owner)


V4 = ipaddress.IPv4Address


@pytest.mark.parametrize(
    ("name", "mouth"),
    [
        ("dnd.dartmouth.edu", "127.77.0.1"),
        ("kringle.dartmouth.edu", "127.77.0.1"),
        ("dnd", "127.77.0.1"),
        ("kringle", "127.77.0.1"),
        ("dasher.dartmouth.edu", "127.77.0.2"),
        ("blitzen", "127.77.0.9"),
        ("newshost.dartmouth.edu", "127.77.0.10"),
    ],
)
def test_a_is_the_mouth_whatever_the_case(table: Table, name: str, mouth: str) -> None:
    for variant in (name, name.upper(), name.title(), name + "."):
        assert only_answer(ask(table, variant)) == (A, V4(mouth))


def test_the_answer_keeps_the_question_letters(table: Table) -> None:
    decision = ask(table, "DnD.DartMouth.EDU")
    assert isinstance(decision, Local)
    assert decision.answers[0].owner == (b"DnD", b"DartMouth", b"EDU")


def test_aaaa_is_the_ipv6_mouth_or_nodata_with_soa(table: Table) -> None:
    assert only_answer(ask(table, "dnd", AAAA)) == (AAAA, ipaddress.IPv6Address("::1"))
    assert_nodata(ask(table, "dasher.dartmouth.edu", AAAA), "dasher.dartmouth.edu")


@pytest.mark.parametrize("qtype", [MX, TXT, HTTPS, PTR, 99, 65000])
def test_other_types_of_a_protected_name_are_nodata_never_forwarded(
    table: Table, qtype: int
) -> None:
    assert_nodata(ask(table, "Vixen.dartmouth.edu", qtype), "Vixen.dartmouth.edu")


def test_any_is_the_a(table: Table) -> None:
    assert only_answer(ask(table, "comet", ANY)) == (A, V4("127.77.0.6"))


def test_ptr_of_each_mouth_is_the_canonical_name(table: Table) -> None:
    assert only_answer(ask(table, "1.0.77.127.in-addr.arpa", PTR)) == (
        PTR,
        labels_of("dnd.dartmouth.edu"),
    )
    assert only_answer(ask(table, "2.0.77.127.IN-ADDR.ARPA", PTR))[1] == labels_of(
        "dasher.dartmouth.edu"
    )
    assert_nodata(ask(table, "1.0.77.127.in-addr.arpa", A), "1.0.77.127.in-addr.arpa")
    assert isinstance(ask(table, "200.0.77.127.in-addr.arpa", PTR), Forward)


def test_names_under_a_protected_name_are_nxdomain_locally(table: Table) -> None:
    decision = ask(table, "www.DND.dartmouth.edu", AAAA)
    assert isinstance(decision, Local) and decision.rcode == NXDOMAIN
    assert decision.authority[0].owner == (b"DND", b"dartmouth", b"edu")
    assert isinstance(ask(table, "a.b.dasher"), Local)


@pytest.mark.parametrize(
    "name", ["example.com", "dartmouth.edu", "www.dartmouth.edu", "dndx.dartmouth.edu", "."]
)
def test_other_names_are_forwarded(table: Table, name: str) -> None:
    assert isinstance(ask(table, name), Forward)


def test_protected_name_in_another_class_is_refused_locally(table: Table) -> None:
    decision = ask(table, "dnd", TXT, qclass=CLASS_CH)
    assert isinstance(decision, Reject) and decision.rcode == REFUSED
    assert isinstance(ask(table, "version.bind", TXT, qclass=CLASS_CH), Forward)


def test_clients_outside_the_allowed_networks_are_refused(table: Table) -> None:
    for client in ("10.0.0.1", "127.0.0.2", "::1", "not-an-address"):
        decision = ask(table, "example.com", client=client)
        assert isinstance(decision, Reject) and decision.rcode == REFUSED, client


def test_shared_clients_get_the_shared_address_or_nodata(table: Table) -> None:
    assert only_answer(ask(table, "dnd", client="127.0.0.70")) == (A, V4("127.0.0.5"))
    assert_nodata(ask(table, "dnd", AAAA, client="127.0.0.70"), "dnd")
    assert_nodata(ask(table, "dasher", client="127.0.0.70"), "dasher")
    assert isinstance(ask(table, "example.com", client="127.0.0.70"), Forward)
    v6 = ask(table, "dasher", AAAA, client="fd00::7")
    assert only_answer(v6) == (AAAA, ipaddress.IPv6Address("fd00::5"))
    assert_nodata(ask(table, "dasher", A, client="fd00::7"), "dasher")
    assert only_answer(ask(table, "dnd", client="127.0.0.1")) == (A, V4("127.77.0.1"))


def test_loopback_clients_keep_their_mouths_even_inside_a_shared_network() -> None:
    config = parse_config(
        '[[shared]]\naddress = "192.0.2.1"\nallow = ["0.0.0.0/0"]\nhosts = ["dnd"]\n'
    )
    table = Table.from_config(config)
    assert only_answer(ask(table, "dnd", client="127.0.0.1")) == (A, V4("127.77.0.1"))
    assert only_answer(ask(table, "dnd", client="198.51.100.7")) == (A, V4("192.0.2.1"))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"qr": True}, Drop),
        ({"opcode": 2}, NOTIMP),
        ({"questions": ()}, FORMERR),
        ({"opt_count": 2, "edns": Edns(1232, 0, False)}, FORMERR),
        ({"edns": Edns(1232, 1, False), "opt_count": 1}, BADVERS),
    ],
)
def test_malformed_or_unsupported_queries(
    table: Table, fields: dict[str, object], expected: object
) -> None:
    decision = ask(table, "dnd", **fields)
    if expected is Drop:
        assert isinstance(decision, Drop)
    else:
        assert isinstance(decision, Reject) and decision.rcode == expected


def test_only_the_selected_hosts_are_protected() -> None:
    table = Table.from_config(build_config({"tunnel": {"hosts": ["dnd"]}}, source=None))
    assert isinstance(ask(table, "dnd"), Local)
    assert isinstance(ask(table, "dasher"), Forward)
    assert isinstance(ask(table, "2.0.77.127.in-addr.arpa", PTR), Forward)


def test_local_ttl_comes_from_the_config() -> None:
    table = Table.from_config(build_config({"dns": {"ttl": 0}}, source=None))
    decision = ask(table, "dnd")
    assert isinstance(decision, Local) and decision.answers[0].ttl == 0
