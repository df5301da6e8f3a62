"""The DNS protocol's numbers, in one place: types, classes, RCODEs, header flags, sizes.

Every module of the resolver takes its protocol constants from here, so a number is
written once, beside the RFC section that defines it. Byte-level code reads the header
one byte at a time, so the flags come in two spellings: as bits of the 16-bit flags
word (``QR``), and as bits of the byte they live in (``QR_BYTE2`` for ``packet[2]``).
"""

from __future__ import annotations

import struct

# Record types (RFC 1035 §3.2.2, RFC 3596 §2.1, RFC 6672 §2.1, RFC 6891 §6.1.1).
A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV = 1, 2, 5, 6, 12, 15, 16, 28, 33
DNAME, OPT, HTTPS, ANY = 39, 41, 65, 255
#: Type names as ``dig`` and the ``check`` command write them.
TYPE_NAMES = {
    "A": A,
    "NS": NS,
    "CNAME": CNAME,
    "SOA": SOA,
    "PTR": PTR,
    "MX": MX,
    "TXT": TXT,
    "AAAA": AAAA,
    "SRV": SRV,
    "HTTPS": HTTPS,
    "ANY": ANY,
}
# Classes (RFC 1035 §3.2.4 / §3.2.5).
CLASS_IN, CLASS_ANY = 1, 255

# RCODEs (RFC 1035 §4.1.1).
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
#: RFC 6891 §6.1.3: extended RCODE 16 (upper 8 bits 1, header RCODE 0).
BADVERS = 16
RCODE_NAMES = {
    NOERROR: "NOERROR",
    FORMERR: "FORMERR",
    SERVFAIL: "SERVFAIL",
    NXDOMAIN: "NXDOMAIN",
    NOTIMP: "NOTIMP",
    REFUSED: "REFUSED",
    BADVERS: "BADVERS",
}

# Header flags as bits of the flags word (RFC 1035 §4.1.1, RFC 4035 §3.2).
QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
RCODE_MASK = 0x000F
#: Flags copied from a query into our reply: RD and CD (RFC 1035 §4.1.1, RFC 4035 §3.2.2).
ECHOED_FLAGS = RD | CD
#: Flags of a client's query passed on upstream: RD, AD and CD (RFC 6840 §5.7).
FORWARDED_FLAGS = RD | AD | CD
# The same flags as bits of the header's third byte (``packet[2]``).
QR_BYTE2, TC_BYTE2, RD_BYTE2 = QR >> 8, TC >> 8, RD >> 8
#: QR and OPCODE: a plain query has them all zero (then only AA, TC, RD may be set).
QR_OPCODE_BYTE2 = 0xF8
# In the fourth byte (``packet[3]``): CD, and the header RCODE.
CD_BYTE3 = CD
RCODE_BYTE3 = RCODE_MASK
#: The DO bit (RFC 3225) in the OPT record's TTL field, as bit 7 of its third byte.
DO_BYTE = 0x80

# Sizes (RFC 1035 §2.3.4, §4.1.1, §4.2.1; RFC 6891 §6.2.5).
HEADER_SIZE = 12
MAX_LABEL = 63
MAX_NAME = 255
#: A UDP reply to a client without EDNS fits in 512 bytes.
PLAIN_UDP_LIMIT = 512
#: OPT records in our own replies: 1232-byte payload (the DNS Flag Day 2020 value).
OUR_PAYLOAD = 1232
MAX_MESSAGE = 65535

# Message sections (RFC 1035 §4.1), numbered as their counts follow QDCOUNT.
ANSWER, AUTHORITY, ADDITIONAL = 1, 2, 3

# Wire fragments the byte-level code compares against.
CLASS_IN_WIRE = CLASS_IN.to_bytes(2, "big")
#: QDCOUNT 1, ANCOUNT 0, NSCOUNT 0: the counts of every query we answer from bytes.
ONE_QUESTION_COUNTS = b"\x00\x01\x00\x00\x00\x00"
#: The start of an OPT record: root owner name, TYPE 41 (RFC 6891 §6.1.2).
OPT_HEAD = b"\x00" + OPT.to_bytes(2, "big")
#: Our OPT record, without and with DO.
OPT_PLAIN = OPT_HEAD + struct.pack(">HBBHH", OUR_PAYLOAD, 0, 0, 0x0000, 0)
OPT_DO = OPT_HEAD + struct.pack(">HBBHH", OUR_PAYLOAD, 0, 0, DO_BYTE << 8, 0)
