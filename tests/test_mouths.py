"""Mouth allocation (blitzdns.mouths): pinned, then preset offsets, then a stable hash."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blitzdns.errors import ConfigError
from blitzdns.mouths import MouthRequest, allocate_mouths, hash_start, usable_addresses

BLOCK = ipaddress.IPv4Network("127.77.0.0/24")
A = ipaddress.IPv4Address


def test_pinned_then_offsets_then_hash() -> None:
    mouths = allocate_mouths(
        [
            MouthRequest("dnd", offset=1),
            MouthRequest("imap"),
            MouthRequest("pinned", A("127.9.9.9")),
        ],
        BLOCK,
    )
    assert list(mouths) == ["dnd", "imap", "pinned"]
    assert mouths["dnd"] == A("127.77.0.1")
    assert mouths["pinned"] == A("127.9.9.9")
    usable = usable_addresses(BLOCK)
    assert mouths["imap"] == usable[hash_start("imap", len(usable))]


def test_a_pin_wins_over_its_own_preset_offset() -> None:
    assert allocate_mouths([MouthRequest("dnd", A("127.77.0.9"), offset=1)], BLOCK) == {
        "dnd": A("127.77.0.9")
    }


def test_an_offset_outside_a_small_block_falls_back_to_the_hash() -> None:
    small = ipaddress.IPv4Network("127.77.0.0/30")  # two usable addresses
    mouths = allocate_mouths([MouthRequest("far", offset=200)], small)
    assert mouths["far"] in usable_addresses(small)


def test_two_pins_on_one_address_name_the_second() -> None:
    with pytest.raises(ConfigError) as caught:
        allocate_mouths(
            [MouthRequest("a", A("127.77.0.5")), MouthRequest("b", A("127.77.0.5"))], BLOCK
        )
    assert caught.value.key == "hosts.b.mouth"
    assert caught.value.detail == "mouth 127.77.0.5 is already taken by host a"


def test_a_pin_on_a_preset_address_names_the_pin() -> None:
    with pytest.raises(ConfigError) as caught:
        allocate_mouths(
            [MouthRequest("dnd", offset=1), MouthRequest("mine", A("127.77.0.1"))], BLOCK
        )
    assert caught.value.key == "hosts.mine.mouth"
    assert "127.77.0.1 is the preset mouth of host dnd; pin another address" in (
        caught.value.detail
    )


def test_a_full_block_is_refused() -> None:
    tiny = ipaddress.IPv4Network("127.77.0.0/30")
    requests = [MouthRequest(key) for key in ("a", "b", "c")]
    with pytest.raises(ConfigError) as caught:
        allocate_mouths(requests, tiny)
    assert caught.value.key == "tunnel.mouths"
    assert "has no free address" in caught.value.detail


KEYS = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), unique=True, max_size=30)


@given(KEYS, st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), st.integers(0, 30))
def test_adding_a_host_on_a_free_address_moves_no_other(
    keys: list[str], added: str, position: int
) -> None:
    """The README's promise: adding a host (anywhere in the table) leaves the others'
    mouths where they were, unless it lands on an address one of them held."""
    if added in keys:
        return
    before = allocate_mouths([MouthRequest(k) for k in keys], BLOCK)
    grown = [*keys[:position], added, *keys[position:]]
    after = allocate_mouths([MouthRequest(k) for k in grown], BLOCK)
    assert len(set(after.values())) == len(after)
    if after[added] not in before.values():
        assert {k: after[k] for k in keys} == before
