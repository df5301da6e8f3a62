"""Protected names first, in the kernel: a UDP listener as two sockets and a steering program.

Under a flood of forwarded names the one UDP socket's receive queue fills, and the kernel
drops whatever arrives next — the protected names' queries with the rest — before the
resolver ever sees them. No reading order in the process can win that back. So each UDP
listener is an ``SO_REUSEPORT`` group of two sockets bound to the same address: index 0,
the *general* socket, and index 1, the *priority* socket. A classic BPF program attached
to the group (``SO_ATTACH_REUSEPORT_CBPF``, Linux 4.5+) picks the socket for each
datagram: 1 when the question name is exactly a protected name (letters compared
case-insensitively, RFC 4343), else 0. The priority socket's queue then only ever holds
protected queries, and the event loop reads every ready socket each iteration, a bounded
number of datagrams from each (asyncio's selector loop one, uvloop's libuv up to 32), so
a protected query waits behind a few flood packets at most, never behind a full queue.
Both sockets run the same handler: steering is only a priority hint, and a query on
either socket is answered exactly as before.

What the kernel does (``net/core/sock_reuseport.c``, ``net/ipv4/udp.c``,
``net/ipv6/udp.c``): for UDP the program runs with the packet's data pulled past the UDP
header, so absolute offset 0 is the first byte of the DNS header and the question name
starts at 12. Its return value indexes the group's socket array in bind order; a value
past the end falls back to the hash choice among all members. A load past the packet's
end ends the program with 0 (the general socket). The program returns 0 or 1 only, so a
socket that some other process of the same user joins to the group later gets nothing;
one that had joined before ours (between the probe bind in the server and ours, a
window of microseconds) would take index 0 — the same user can do worse to us anyway.

:func:`program` is pure (names in, instructions out); :func:`attach` and
:func:`bind_group` are the socket edge. TCP is not steered: its queries arrive on
connections of their own.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import sys
from collections.abc import Iterable

from blitzdns.dns.rfc import HEADER_SIZE
from blitzdns.dns.table import Name, to_wire

#: ``SO_ATTACH_REUSEPORT_CBPF`` (asm-generic/socket.h; Python's socket module lacks it).
SO_ATTACH_REUSEPORT_CBPF = 51
#: The kernel's limit on a classic BPF program (``BPF_MAXINSNS``).
MAX_INSTRUCTIONS = 4096
#: The smallest budget :func:`fitting_program` tries before it gives up cutting.
_SMALLEST_BUDGET = 64
GENERAL, PRIORITY = 0, 1

# Classic BPF opcodes (linux/bpf_common.h).
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS = 0x20, 0x28, 0x30
_ALU_AND_K, _ALU_OR_K = 0x54, 0x44
_JEQ_K = 0x15
_RET_K = 0x06
#: Byte 2 of the header: QR and OPCODE (RFC 1035 §4.1.1); steered only when both are 0.
_QR_OPCODE = 0xF8

#: One ``struct sock_filter``: code, jt, jf, k.
Instruction = tuple[int, int, int, int]
_SOCK_FILTER = struct.Struct("=HBBI")


def program(
    names: Iterable[Name], budget: int = MAX_INSTRUCTIONS
) -> tuple[tuple[Instruction, ...], int]:
    """The steering program for ``names`` (lower case), and how many names it left out.

    Per name, one block compares the question name in 4-, 2- and 1-byte loads against
    its wire form; a letter's 0x20 bit is ORed into both sides so its case does not
    count, every other byte (length bytes included) must be equal. A mismatch jumps to
    the next block, a full match returns 1; the root byte ends the name, so a longer name
    never matches a shorter one. Names past ``budget`` instructions are left out
    (shortest first are kept); they are still answered locally, from the general socket.
    """
    code: list[Instruction] = [
        (_LD_B_ABS, 0, 0, 2),
        (_ALU_AND_K, 0, 0, _QR_OPCODE),
        (_JEQ_K, 1, 0, 0),
        (_RET_K, 0, 0, GENERAL),
    ]
    # Shortest first, then in byte order: two stable sorts, with no key tuple per name
    # (the set and the tuples were most of a 4.7 MB peak at 10,000 protected hosts).
    ordered = sorted(map(to_wire, names))
    ordered.sort(key=len)
    left_out = 0
    previous = None
    for wire in ordered:
        if wire == previous:  # the same name twice (equal wire names sort together)
            continue
        previous = wire
        # A block is at least a load and a compare per chunk and its return: a name whose
        # shortest block cannot fit is left out unbuilt (10,000 protected hosts built
        # ~20,000 blocks per budget tried, 1.4 s and a 4.7 MB peak, to keep ~200).
        size = len(wire)
        if len(code) + 2 * (size // 4 + (size % 4 + 1) // 2) + 2 > budget:
            left_out += 1
            continue
        block = _block(wire)
        if len(code) + len(block) + 1 > budget:
            left_out += 1
            continue
        code += block
    code.append((_RET_K, 0, 0, GENERAL))
    return tuple(code), left_out


def fitting_program(names: Iterable[Name]) -> tuple[tuple[Instruction, ...], int]:
    """:func:`program`, cut to what this kernel takes (Linux; elsewhere :func:`program`).

    The kernel stores a reuseport program translated to eBPF, several instructions per
    classic one, and refuses it with ENOMEM when that is larger than
    ``net.core.optmem_max`` (``sk_reuseport_attach_filter``): with 128 KiB about 3,000
    classic instructions pass, far fewer with an older kernel's 20 KiB, so a table well
    inside :data:`MAX_INSTRUCTIONS` could lose steering altogether. The budget shrinks
    by a quarter until a throwaway socket of the group's kind takes the program.
    """
    names = tuple(names)
    budget = MAX_INSTRUCTIONS
    while True:
        code, left_out = program(names, budget)
        if not sys.platform.startswith("linux") or budget <= _SMALLEST_BUDGET:
            return code, left_out
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                attach(probe, code)
        except OSError as exc:
            if exc.errno != errno.ENOMEM:
                return code, left_out  # not the size: the real attach reports it
        else:
            return code, left_out
        budget = budget * 3 // 4


def _block(wire: bytes) -> list[Instruction]:
    """Compare the name at offset 12 with ``wire``; fall through to the next block if not."""
    chunks: list[tuple[int, int, int]] = []
    offset = 0
    while offset < len(wire):
        size = next(s for s in (4, 2, 1) if offset + s <= len(wire))
        chunks.append((offset, size, {4: _LD_W_ABS, 2: _LD_H_ABS, 1: _LD_B_ABS}[size]))
        offset += size
    body: list[tuple[int, int, int]] = []  # (code, k, is_jump)
    for offset, size, load in chunks:
        part = wire[offset : offset + size]
        mask = int.from_bytes(bytes(0x20 if 0x61 <= b <= 0x7A else 0 for b in part), "big")
        body.append((load, HEADER_SIZE + offset, 0))
        if mask:
            body.append((_ALU_OR_K, mask, 0))
        body.append((_JEQ_K, int.from_bytes(part, "big") | mask, 1))
    block: list[Instruction] = []
    length = len(body) + 1  # and the return at the end
    for index, (op, k, is_jump) in enumerate(body):
        block.append((op, 0, length - index - 1 if is_jump else 0, k))
    block.append((_RET_K, 0, 0, PRIORITY))
    return block


def attach(sock: socket.socket, code: Iterable[Instruction]) -> None:
    """Attach ``code`` to ``sock``'s reuseport group (replacing any program); OSError if refused."""
    packed = b"".join(_SOCK_FILTER.pack(*instruction) for instruction in code)
    buffer = ctypes.create_string_buffer(packed, len(packed))
    fprog = struct.pack("@HP", len(packed) // _SOCK_FILTER.size, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def bind_group(
    family: socket.AddressFamily, address: tuple[str, int], code: Iterable[Instruction]
) -> tuple[socket.socket, socket.socket]:
    """The general and priority UDP sockets on ``address``, the program attached.

    OSError from the binds or the attach (the caller falls back to one socket); nothing
    stays open then.
    """
    group: list[socket.socket] = []
    try:
        for _ in (GENERAL, PRIORITY):  # bind order is the index the program returns
            sock = socket.socket(family, socket.SOCK_DGRAM)
            group.append(sock)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.setblocking(False)
            address = (address[0], sock.getsockname()[1])  # port 0: the one picked
        attach(group[GENERAL], code)
    except BaseException:
        for sock in group:
            sock.close()
        raise
    return group[GENERAL], group[PRIORITY]
