"""DND challenge-response: 24 octal digits, single DES in ECB mode.

A DND server that validates a user (``VALIDATE``, and BlitzServ's ``UID#`` /
``USER`` which relay it as ``033``) sends a random 8-byte block written as 24
octal digits, three digits a byte, most significant first. The client encrypts
that block with single DES in ECB mode, keyed by the password NUL-padded (or cut)
to 8 bytes, and sends the result back the same way (``PASE <24 digits>``); the
password itself never crosses the wire.

Pure functions only: the randomness for a new challenge is passed in. Single DES
comes from ``cryptography`` (a dependency of asyncssh): its TripleDES with the
8-byte key repeated three times is exactly single DES (EDE with K1 = K2 = K3).
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives.ciphers import Cipher, modes

CHALLENGE_BYTES = 8
CHALLENGE_DIGITS = 3 * CHALLENGE_BYTES


class ChallengeError(ValueError):
    """Text that is not a well-formed octal challenge or answer."""


class DesUnavailable(RuntimeError):
    """The installed ``cryptography`` offers no DES (TripleDES) cipher."""


def bytes_to_octal(data: bytes) -> str:
    """Write each byte as three octal digits, most significant first."""
    return "".join(f"{byte:03o}" for byte in data)


def octal_to_bytes(text: str) -> bytes:
    """Read three octal digits per byte; the inverse of :func:`bytes_to_octal`.

    Raises :class:`ChallengeError` when the length is not a multiple of three, a
    character is not an octal digit, or a triple exceeds 0o377.
    """
    if len(text) % 3:
        raise ChallengeError(f"octal text must be 3 digits a byte, got {len(text)} digits")
    if text.strip("01234567"):
        raise ChallengeError(f"not octal digits: {text!r}")
    out = bytearray()
    for start in range(0, len(text), 3):
        value = int(text[start : start + 3], 8)
        if value > 0xFF:
            raise ChallengeError(f"octal triple {text[start : start + 3]!r} exceeds one byte")
        out.append(value)
    return bytes(out)


def parse_challenge(text: str) -> bytes:
    """Decode a challenge or answer: exactly 24 octal digits → 8 bytes."""
    if len(text) != CHALLENGE_DIGITS:
        raise ChallengeError(f"expected {CHALLENGE_DIGITS} octal digits, got {text!r}")
    return octal_to_bytes(text)


def des_key(password: str) -> bytes:
    """The DES key for a password: its first 8 bytes, NUL-padded to 8.

    Latin-1 when the password fits it (the Macintosh-era clients sent one byte a
    character), UTF-8 otherwise; only ASCII passwords are known to interoperate.
    """
    try:
        raw = password.encode("latin-1")
    except UnicodeEncodeError:
        raw = password.encode("utf-8")
    return raw[:CHALLENGE_BYTES].ljust(CHALLENGE_BYTES, b"\0")


def des_available() -> bool:
    """Whether :func:`des_encrypt_block` can work with the installed cryptography."""
    try:
        _triple_des()
    except DesUnavailable:
        return False
    return True


def _triple_des() -> type:
    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import (  # noqa: PLC0415
            TripleDES,  # where it is depends on the cryptography version
        )
    except ImportError:
        try:
            from cryptography.hazmat.primitives.ciphers.algorithms import (  # noqa: PLC0415 # type: ignore[attr-defined,no-redef,unused-ignore]
                TripleDES,
            )
        except ImportError as exc:
            raise DesUnavailable("cryptography provides no TripleDES cipher") from exc
    return TripleDES  # type: ignore[no-any-return,unused-ignore]


def des_encrypt_block(key: bytes, block: bytes) -> bytes:
    """Single-DES ECB encryption of one 8-byte block under an 8-byte key."""
    if len(key) != CHALLENGE_BYTES or len(block) != CHALLENGE_BYTES:
        raise ChallengeError("DES key and block must be 8 bytes each")
    algorithm = _triple_des()(key * 3)
    encryptor = Cipher(algorithm, modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def answer_challenge(challenge: str, password: str) -> str:
    """The ``PASE`` argument for a 24-digit challenge and a password."""
    block = parse_challenge(challenge)
    return bytes_to_octal(des_encrypt_block(des_key(password), block))


def new_challenge(random_block: bytes) -> str:
    """A challenge for a server to send, from 8 random bytes the caller supplies."""
    if len(random_block) != CHALLENGE_BYTES:
        raise ChallengeError("a challenge needs exactly 8 random bytes")
    return bytes_to_octal(random_block)


def check_answer(challenge: str, answer: str, password: str) -> bool:
    """Whether ``answer`` is the right response to ``challenge`` for ``password``.

    A malformed answer is simply wrong (False), never an exception; the
    comparison takes the same time wherever the first difference lies.
    """
    try:
        parse_challenge(answer)
    except ChallengeError:
        return False
    return hmac.compare_digest(answer_challenge(challenge, password), answer)
