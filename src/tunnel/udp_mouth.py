"""UDP mouths: datagrams from local senders carried to a relay on the gateway and back.

The thin asyncio layer around :class:`tunnel.udp_assoc.UdpCore`. A mouth is a UDP socket
on the host's mouth address, bound once; while a link is up it holds a *carrier* started
over an exec channel on that link (:func:`start_relay`):

- ``python3``: the relay program (``udp_relay.py``) sent as the command's input; every
  association's frames share its one channel;
- ``socat``: where python3 is missing, one exec channel per association
  (:class:`SocatCarrier`);
- neither: the forward is *unavailable*, with the reason, and drops what it receives;
  everything else runs on.

How an exec channel is made belongs to the link backend (an asyncssh session, or ``ssh``
through the master's control socket); here it is any :data:`OpenExec`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, cast

from tunnel.errors import LinkLost, TunnelError
from tunnel.exec import ExecChannel, OpenExec
from tunnel.mouths import bind_socket
from tunnel.state import RelayState, UdpForwardState
from tunnel.udp import (
    KIND_CLOSE,
    KIND_DATA,
    KIND_HELLO,
    KIND_OPEN,
    RELAY_PROGRAM,
    RELAY_VERSION,
    SOCAT_MAX_DATAGRAM,
    Frame,
    FrameDecoder,
    FramingError,
    RelayLimits,
    SocatConnected,
    SocatDatagram,
    SocatTranscript,
    SocatTransfer,
    UdpForward,
    python_relay_command,
    socat_command,
)
from tunnel.udp_assoc import Action, Address, ToRelay, UdpCore

log = logging.getLogger("tunnel.udp")

START_TIMEOUT_S = 15.0
"""How long a relay (or the socat probe) may take to answer before it counts as missing."""
REASON_MAX = 200
SSH_FAILED = 255
"""``ssh``'s own exit status for a failure of its own (no session): the link, not the
command. (A remote command's 255 would be mistaken for it; the relay never exits so.)"""


FrameSink = Callable[[Frame], None]


class Carrier(Protocol):
    """What a UDP mouth hands its frames to, whichever program runs on the gateway."""

    state: RelayState
    max_datagram: int | None

    def send(self, data: bytes) -> None: ...

    async def run(self, sink: FrameSink) -> str:
        """Deliver frames to ``sink`` until the carrier ends; return why it ended."""

    def close(self) -> None: ...


async def _stderr_text(channel: ExecChannel) -> str:
    """What the command said on stderr (until it closed, bounded), on one line."""
    data = b""
    with contextlib.suppress(TimeoutError, OSError, TunnelError):
        async with asyncio.timeout(2.0):
            while len(data) < 4096 and (more := await channel.read_stderr(4096)):
                data += more
    return " ".join(data.decode("utf-8", "replace").split())[:REASON_MAX]


class PythonCarrier:
    """The relay program on one channel; every association's frames share it."""

    state = RelayState.PYTHON
    max_datagram: int | None = None

    def __init__(self, channel: ExecChannel, decoder: FrameDecoder, early: list[Frame]) -> None:
        self.channel = channel
        self._decoder = decoder
        self._early = early
        self._outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._writing = False

    def send(self, data: bytes) -> None:
        """Straight onto the channel when nothing waits before it (no task switch per
        datagram); else after what waits, by the writer task, with flow control."""
        if not self._writing and self._outgoing.empty() and self.channel.write_nowait(data):
            return
        self._outgoing.put_nowait(data)

    async def _write(self) -> None:
        while (data := await self._outgoing.get()) is not None:
            chunks = [data]
            done = False
            while not self._outgoing.empty():
                more = self._outgoing.get_nowait()
                if more is None:
                    done = True
                    break
                chunks.append(more)
            self._writing = True
            try:
                await self.channel.write(b"".join(chunks))
            finally:
                self._writing = False
            if done:
                return

    async def run(self, sink: FrameSink) -> str:
        writer = asyncio.create_task(self._write())
        try:
            for frame in self._early:
                sink(frame)
            while data := await self.channel.read(65536):
                for frame in self._decoder.feed(data):
                    sink(frame)
                if writer.done():
                    break
            return (await _stderr_text(self.channel)) or "relay ended"
        except FramingError as exc:
            return str(exc)
        except (OSError, TunnelError) as exc:
            return f"relay channel: {exc}"
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, TunnelError):
                await writer
            await end(self.channel)

    def close(self) -> None:
        self._outgoing.put_nowait(None)
        self.channel.write_eof()


class SocatCarrier:
    """The fallback: one ``socat`` exec channel per association.

    Frames from the local side are interpreted here: ``O`` starts the association's socat,
    ``D`` queues a datagram (sent one at a time, each released by socat's ``>`` transfer
    line, so that every pipe read on the gateway is one datagram), ``C`` ends its channel.
    socat's own log turns back into ``O``, ``D`` and ``C`` frames for the local side.
    """

    state = RelayState.SOCAT
    max_datagram: int | None = SOCAT_MAX_DATAGRAM

    def __init__(self, open_exec: OpenExec, target: tuple[str, int], limits: RelayLimits) -> None:
        self._open_exec = open_exec
        self._target = target
        self._limits = limits
        self._sink: FrameSink | None = None
        self._associations: dict[int, asyncio.Task[None]] = {}
        self._queues: dict[int, asyncio.Queue[bytes | None]] = {}
        self._decoder = FrameDecoder()
        self._ended = asyncio.Event()

    def send(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            association = frame.association
            if frame.kind == KIND_OPEN and association not in self._associations:
                self._queues[association] = asyncio.Queue()
                self._associations[association] = asyncio.create_task(self._carry(association))
            elif frame.kind == KIND_DATA and association in self._queues:
                self._queues[association].put_nowait(frame.payload)
            elif frame.kind == KIND_CLOSE and association in self._queues:
                self._queues[association].put_nowait(None)

    async def _carry(self, association: int) -> None:
        sink = self._sink
        assert sink is not None
        reason = "socat ended"
        channel: ExecChannel | None = None
        try:
            command = socat_command(self._target[0], self._target[1], self._limits)
            channel = await self._open_exec(command)
            transcript = SocatTranscript()
            ups = asyncio.Event()
            up_count = 0

            def handle(events: list[object]) -> None:
                nonlocal up_count
                for event in events:
                    if isinstance(event, SocatConnected):
                        text = f"{event.address} {event.port}".encode()
                        sink(Frame(KIND_OPEN, association, text))
                    elif isinstance(event, SocatDatagram):
                        sink(Frame(KIND_DATA, association, event.payload))
                    elif isinstance(event, SocatTransfer):
                        up_count += 1
                        ups.set()

            async def pump(read: Callable[[int], Awaitable[bytes]], log_side: bool) -> None:
                feed = transcript.feed_log if log_side else transcript.feed_output
                while data := await read(65536):
                    handle(list(feed(data)))

            pumps = [
                asyncio.create_task(pump(channel.read, False)),
                asyncio.create_task(pump(channel.read_stderr, True)),
            ]
            queue = self._queues[association]
            try:
                while (datagram := await queue.get()) is not None:
                    expected = up_count + 1
                    ups.clear()
                    await channel.write(datagram)
                    while up_count < expected and not all(p.done() for p in pumps):
                        await ups.wait()
                        ups.clear()
                    if all(p.done() for p in pumps):
                        break
                channel.write_eof()
                async with asyncio.timeout(START_TIMEOUT_S):
                    await asyncio.gather(*pumps)
            finally:
                for task in pumps:
                    task.cancel()
        except (OSError, TunnelError, TimeoutError) as exc:
            reason = f"socat: {exc}"
        finally:
            try:
                if channel is not None:
                    await end(channel)
            finally:
                self._associations.pop(association, None)
                self._queues.pop(association, None)
                sink(Frame(KIND_CLOSE, association, reason.encode()))

    async def run(self, sink: FrameSink) -> str:
        self._sink = sink
        try:
            await self._ended.wait()
            return "closed"
        finally:
            tasks = list(self._associations.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        for queue in self._queues.values():
            queue.put_nowait(None)
        self._ended.set()


@dataclass(frozen=True)
class Unavailable:
    """Neither relay could start; ``reason`` names what each attempt said."""

    reason: str


async def start_relay(
    open_exec: OpenExec, target: tuple[str, int], limits: RelayLimits
) -> Carrier | Unavailable:
    """Start the python3 relay on the gateway, else check for socat; say why neither.

    A link that fails meanwhile is not a missing program: :class:`LinkLost` is raised
    (an exec channel refused, or ``ssh`` through the master exiting with status 255)."""
    python_reason = await _python_attempt(open_exec, target, limits)
    if not isinstance(python_reason, str):
        return python_reason
    socat_reason = await _socat_probe(open_exec)
    if socat_reason is None:
        return SocatCarrier(open_exec, target, limits)
    return Unavailable(f"python3: {python_reason}; socat: {socat_reason}")


async def _python_attempt(
    open_exec: OpenExec, target: tuple[str, int], limits: RelayLimits
) -> PythonCarrier | str:
    """The relay, started and greeting; else why not (a string)."""
    channel = await open_exec(python_relay_command(target[0], target[1], limits))
    try:
        await channel.write(RELAY_PROGRAM)
        decoder = FrameDecoder()
        async with asyncio.timeout(START_TIMEOUT_S):
            frames: list[Frame] = []
            while not frames:
                data = await channel.read(65536)
                if not data:
                    break
                frames = decoder.feed(data)
        if frames and frames[0].kind == KIND_HELLO:
            hello = frames[0].text.split()
            if hello[:2] == ["blitzdns-udp-relay", str(RELAY_VERSION)]:
                log.info("udp relay started: %s", frames[0].text)
                return PythonCarrier(channel, decoder, frames[1:])
            reason = f"relay speaks another version ({frames[0].text})"
        elif frames:
            reason = "relay did not say hello"
        else:
            said = await _stderr_text(channel)
            status = await _status(channel)
            if status == SSH_FAILED:
                raise LinkLost(f"ssh could not run the relay: {said or 'exit status 255'}")
            reason = said or f"exit status {status}"
    except TimeoutError:
        reason = f"no answer within {START_TIMEOUT_S:g} s"
    except FramingError as exc:
        reason = str(exc)
    except OSError as exc:
        reason = str(exc) or type(exc).__name__
    except BaseException:
        await end(channel)
        raise
    await end(channel)
    return reason


async def end(channel: ExecChannel) -> None:
    """Close a channel and wait (bounded) until its command ended, so that nothing of it
    stays behind. A cancellation meanwhile is passed on at once (the caller was stopped:
    swallowed, it let a stopped relay start again); the wait, shielded, goes on without
    it."""
    channel.close()
    with contextlib.suppress(TimeoutError, OSError, TunnelError):
        await asyncio.shield(_status(channel))


async def _status(channel: ExecChannel) -> int | None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(START_TIMEOUT_S):
            return await channel.wait()
    return None


async def _socat_probe(open_exec: OpenExec) -> str | None:
    """None when ``socat -V`` answers as socat; otherwise why not."""
    channel = await open_exec("socat -V")
    try:
        channel.write_eof()
        async with asyncio.timeout(START_TIMEOUT_S):
            output = b""
            while data := await channel.read(65536):
                output += data
        said = await _stderr_text(channel)
        status = await _status(channel)
        if status == SSH_FAILED:
            raise LinkLost(f"ssh could not run socat: {said or 'exit status 255'}")
        if said and status != 0:
            return said
        if status == 0 and b"socat version" in output:
            return None
        return f"exit status {status}"
    except TimeoutError:
        return f"no answer within {START_TIMEOUT_S:g} s"
    except OSError as exc:
        return str(exc) or type(exc).__name__
    finally:
        await end(channel)


_WITHOUT_RELAY = {
    RelayState.STARTING: "relay starting",
    RelayState.UNAVAILABLE: "relay unavailable",
}
"""How a datagram dropped for want of a relay is counted, by the relay's state."""

RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits before starting a relay again that ended while the link stayed up."""


def bind_udp_socket(host: str, port: int) -> socket.socket:
    """A UDP socket bound to ``host:port``, or :class:`MouthBindError` saying why not."""
    return bind_socket(host, port, udp=True)


class UdpMouth(asyncio.DatagramProtocol):
    """One UDP forward: its socket on the mouth address, its associations, its relay.

    :meth:`bind` before dropping privileges; :meth:`attach` with the link's exec opener
    each time a link comes up, :meth:`detach` when it goes.
    """

    def __init__(self, forward: UdpForward) -> None:
        self.forward = forward
        self.core = UdpCore(forward.limits, forward.step)
        self.relay = RelayState.DOWN
        self.reason = "no link"
        self.rejected = 0
        self.changed = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self._carrier: Carrier | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._ending: set[asyncio.Task[None]] = set()
        self._open_exec: OpenExec | None = None
        self._expiry: asyncio.Task[None] | None = None

    @property
    def address(self) -> Address:
        assert self._transport is not None, "not bound"
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def bind(self, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        if sock is None:
            sock = bind_udp_socket(self.forward.mouth_host, self.forward.mouth_port)
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._expiry = asyncio.create_task(self._expire())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def state(self) -> UdpForwardState:
        counters = self.core.counters
        return UdpForwardState(
            self.forward,
            self.relay,
            self.reason,
            self.core.associations,
            counters.associations_total,
            counters.datagrams_out,
            counters.bytes_out,
            counters.datagrams_in,
            counters.bytes_in,
            dict(counters.dropped),
            self.rejected,
        )

    # -- the link ---------------------------------------------------------------------

    def attach(self, open_exec: OpenExec) -> None:
        """A link is up: start the relay on it (again, after a relink)."""
        self._stop_relay()
        self._open_exec = open_exec
        self._relay_task = asyncio.create_task(self._keep_relay(open_exec))

    def drop_link(self, reason: str = "no link") -> None:
        """The link is gone: its relay with it; datagrams are dropped until the next one.
        The relay's channel is ended in the background (:meth:`settle` waits for it)."""
        self._open_exec = None
        self._stop_relay()
        self._set(RelayState.DOWN, reason)

    async def detach(self, reason: str = "no link") -> None:
        """:meth:`drop_link`, and wait until the relay's channel has ended."""
        self.drop_link(reason)
        await self.settle()

    async def settle(self) -> None:
        """Wait until every relay this mouth stopped has ended (its channel closed)."""
        while self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)

    def retarget(self, forward: UdpForward) -> None:
        """Same mouth, new target, limits or step: the associations start over, and the
        relay too when a link is up."""
        self.forward = forward
        self.core = UdpCore(forward.limits, forward.step)
        if self._open_exec is not None:
            self.attach(self._open_exec)

    def _stop_relay(self) -> None:
        task, self._relay_task = self._relay_task, None
        if self._carrier is not None:
            self._carrier.close()
            self._carrier = None
        self.core.relay_gone()
        if task is not None:
            task.cancel()
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    async def _keep_relay(self, open_exec: OpenExec) -> None:
        failures = 0
        while True:
            self._set(RelayState.STARTING, "")
            try:
                started = await start_relay(
                    open_exec,
                    (self.forward.target_host, self.forward.target_port),
                    self.forward.limits,
                )
            except TunnelError as exc:  # the link failed under the start: it is not up
                self._set(RelayState.DOWN, str(exc))
                return
            if isinstance(started, Unavailable):
                log.warning("UDP forward %s unavailable: %s", self.forward, started.reason)
                self._set(RelayState.UNAVAILABLE, started.reason)
                return
            self._carrier = started
            self.core.relay_started(started.max_datagram)
            self._set(started.state, "")
            why = await started.run(self._from_relay)
            if self._relay_task is not asyncio.current_task():
                return  # stopped as it ended (the stop can land where the relay's own
                # clean-up waits): the mouth, its carrier and its state are no longer ours
            self._carrier = None
            self.core.relay_gone()
            log.warning("UDP forward %s: relay ended (%s); starting it again", self.forward, why)
            self._set(RelayState.DOWN, why)
            await asyncio.sleep(RESTART_DELAYS_S[min(failures, len(RESTART_DELAYS_S) - 1)])
            failures += 1

    def _set(self, relay: RelayState, reason: str) -> None:
        self.relay = relay
        self.reason = reason
        self.core.without_relay = _WITHOUT_RELAY.get(relay, "no link")
        self.changed.set()

    # -- datagrams ----------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        sender = (str(addr[0]), int(addr[1]))
        if not self.forward.admits(ipaddress.ip_address(sender[0])):
            self.rejected += 1
            return
        self._apply(self.core.from_client(sender, data, _now()))

    def _from_relay(self, frame: Frame) -> None:
        self._apply(self.core.from_relay(frame, _now()))

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ToRelay):
                if self._carrier is not None:
                    self._carrier.send(action.data)
            elif self._transport is not None:
                self._transport.sendto(action.datagram, action.address)
        if actions:
            self.changed.set()

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(min(self.forward.limits.idle_s / 4, 5.0))
            self._apply(self.core.expire(_now()))

    async def close(self) -> None:
        await self.detach("closed")
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def _now() -> float:
    return asyncio.get_running_loop().time()
