"""The small parts of roaming that read bytes: /proc's TCP table and the mux probe."""

from __future__ import annotations

import struct
import sys

import pytest

from tunnel.backends.openssh.mux import MUX_C_OPEN_FWD, PORT_STREAMLOCAL, probe_packet
from tunnel.backends.openssh.procnet import established_path, parse_address

LITTLE = sys.byteorder == "little"

TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1
   1: 02015B0A:A1B2 02095B0A:0016 06 00000000:00000000 00:00000000 00000000     0        0 222 1
   2: 02015B0A:C3D4 02095B0A:0016 01 00000000:00000000 00:00000000 00000000     0        0 333 1
"""


@pytest.mark.skipif(not LITTLE, reason="the table's hex is written as a little-endian host")
def test_the_established_connection_of_the_listed_socket() -> None:
    assert established_path(TABLE, {"333"}) == ("10.91.1.2", "10.91.9.2")
    assert established_path(TABLE, {"222"}) is None  # TIME_WAIT, not established
    assert established_path(TABLE, {"999"}) is None


@pytest.mark.skipif(not LITTLE, reason="the table's hex is written as a little-endian host")
def test_ipv6_and_mapped_addresses() -> None:
    assert parse_address("00000000000000000000000001000000:0016") == "::1"
    assert parse_address("0000000000000000FFFF00000201A8C0:0016") == "192.168.1.2"


def test_probe_packet_asks_for_a_unix_socket_forward_that_cannot_exist() -> None:
    first, second = probe_packet(7), probe_packet(8)
    body = first[4:]
    kind, request_id, forward_type = struct.unpack_from(">III", body)
    assert (kind, request_id, forward_type) == (MUX_C_OPEN_FWD, 7, 2)
    (length,) = struct.unpack_from(">I", body, 12)
    path = body[16 : 16 + length].decode()
    assert path.startswith("/dev/null/")
    assert struct.unpack_from(">I", body, 16 + length)[0] == PORT_STREAMLOCAL
    assert first != second  # a new path each time: the master would answer a known one itself
