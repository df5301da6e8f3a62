"""DES challenge-response and its octal encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blitzdns.blitzmail import challenge
from blitzdns.blitzmail.challenge import ChallengeError

pytestmark = pytest.mark.skipif(
    not challenge.des_available(), reason="cryptography offers no TripleDES here"
)


def test_single_des_known_answer() -> None:
    """The classic worked example of DES (key 133457799BBCDFF1)."""
    key = bytes.fromhex("133457799BBCDFF1")
    block = bytes.fromhex("0123456789ABCDEF")
    assert challenge.des_encrypt_block(key, block) == bytes.fromhex("85E813540F0AB405")


def test_octal_is_three_digits_a_byte_most_significant_first() -> None:
    assert challenge.bytes_to_octal(b"\x00\x01\xff\x08") == "000001377010"
    assert challenge.octal_to_bytes("377000010") == b"\xff\x00\x08"


@given(st.binary())
def test_octal_round_trips(data: bytes) -> None:
    assert challenge.octal_to_bytes(challenge.bytes_to_octal(data)) == data


@given(st.text())
def test_octal_decoder_never_crashes_on_junk(text: str) -> None:
    try:
        data = challenge.octal_to_bytes(text)
    except ChallengeError:
        return
    assert challenge.bytes_to_octal(data) == text


@pytest.mark.parametrize("text", ["400000000000000000000000", "12", "0" * 23, "8" * 24, "x" * 24])
def test_parse_challenge_refuses_malformed(text: str) -> None:
    with pytest.raises(ChallengeError):
        challenge.parse_challenge(text)


def test_key_is_password_nul_padded_or_cut_to_eight() -> None:
    assert challenge.des_key("abc") == b"abc\0\0\0\0\0"
    assert challenge.des_key("reindeers-all") == b"reindeer"


def test_answer_is_des_of_challenge_under_password() -> None:
    block = bytes(range(8))
    text = challenge.new_challenge(block)
    expected = challenge.des_encrypt_block(b"hanover\0", block)
    assert challenge.answer_challenge(text, "hanover") == challenge.bytes_to_octal(expected)


@given(st.binary(min_size=8, max_size=8), st.text(min_size=1, max_size=12))
def test_right_answer_checks_and_a_wrong_one_does_not(block: bytes, password: str) -> None:
    text = challenge.new_challenge(block)
    answer = challenge.answer_challenge(text, password)
    assert len(answer) == challenge.CHALLENGE_DIGITS
    assert challenge.check_answer(text, answer, password)
    wrong = chr(ord(password[0]) ^ 0x02) + password[1:]  # bit 0 of a DES key byte is parity
    assert not challenge.check_answer(text, answer, wrong)
    assert not challenge.check_answer(text, "not octal", password)
