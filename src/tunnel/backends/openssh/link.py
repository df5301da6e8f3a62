"""The ``openssh`` link: flows handed to an ``ssh -M`` master, which carries the bytes.

Each flow's socket goes to the master over its control socket with the multiplexing
protocol (:mod:`.mux`): ``MUX_C_NEW_STDIO_FWD`` (what ``ssh -W host:port`` sends) with the
socket passed twice (as stdin and stdout) by ``SCM_RIGHTS`` (:mod:`.fdpass`), on a spare
mux connection (:mod:`.pool`). The master then copies between that socket and a
``direct-tcpip`` channel in C; no Python touches the data. The mux connection stays open
for the channel's lifetime: the master closes it when the channel ends, and closing it
from our side ends the channel. Bytes are read from the kernel's counters of our copy of
the client socket (:mod:`.tcpinfo`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select

from tunnel.backends.openssh.command import exec_argv
from tunnel.backends.openssh.fdpass import send_request_and_fd
from tunnel.backends.openssh.master import Master, start_master
from tunnel.backends.openssh.mux import (
    MuxError,
    check_hello,
    check_opened,
    probe_packet,
    stdio_fwd_packet,
)
from tunnel.backends.openssh.pool import MuxChannel, SparePool
from tunnel.backends.openssh.procnet import tcp_path
from tunnel.backends.openssh.tcpinfo import tcp_traffic, untouched
from tunnel.errors import LinkLost, TunnelError
from tunnel.exec import SubprocessExec
from tunnel.forwards import Gateway
from tunnel.link import Flow, before_cut_close
from tunnel.options import TunnelOptions

log = logging.getLogger("tunnel.openssh")

READ_MAX = 65536
"""What one read of a mux connection asks for (the master sends 28 bytes per session)."""


class MuxSession:
    """One handed-over flow: its mux connection, open while the channel lives.

    ``stage`` 0 waits for the master's hello, 1 for ``MUX_S_SESSION_OPENED``, 2 for the
    end of the stream (the master closes the mux connection when the channel ends).
    The flow's socket is our copy of the client socket, kept so that the kernel's counters
    can be read (:func:`tcp_traffic`) while the connection lives and when it ends. The
    master has two copies of its own and closes them when the channel ends, just before it
    hangs up the mux connection; ours is closed on that hang-up, so the client sees the
    end at once.
    """

    __slots__ = ("channel", "flow", "request_id", "stage")

    def __init__(self, channel: MuxChannel, flow: Flow, request_id: int | None) -> None:
        self.channel = channel
        self.flow = flow
        self.request_id = request_id or 0
        self.stage = 2 if request_id is None else 0


class MuxLink:
    """One running ``ssh -M`` master whose control socket answered: the link is up
    (:class:`tunnel.link.Link`).

    Handed-over flows (:class:`MuxSession`) are watched for their end only: a private
    epoll set, which the event loop sees as one descriptor, reports when the master hangs up
    a mux connection (``EPOLLRDHUP``), so the master's hello and reply, which arrive while
    the channel is being opened, wake nobody. They are read at that hang-up: the master
    closes the mux connection right after a refusal too (the failed channel is freed, and
    with it its control connection: ``mux_master_session_cleanup_cb``), so a refused flow is
    cut then, with a reset. (Without epoll, each mux connection is watched by the loop
    directly.)
    """

    def __init__(self, master: Master) -> None:
        self.master = master
        self.control_dir = master.control_dir
        self.control_path = master.control_path
        self.gateway = master.label
        self._request_id = 0
        # Made in the loop that runs the link (open_mux_link); kept, since on Python 3.11
        # asyncio.get_running_loop() is a getpid() system call, per connection here.
        self._loop = asyncio.get_running_loop()
        self.spares = SparePool(self.control_path, self._loop)
        self._sessions: dict[int, MuxSession] = {}
        self._hangups = select.epoll() if hasattr(select, "epoll") else None
        self._watching = False
        self._reaping = False
        self._closed = False

    @property
    def pid(self) -> int:
        return self.master.pid

    async def wait_closed(self) -> TunnelError:
        """Wait until the master exits; return why, as a :class:`LinkLost`. Its sessions
        end, and its spare mux connections and watch set are closed."""
        why = await self.master.wait_exit()
        self.close()
        return LinkLost(f"link to {self.gateway} lost: {why}")

    def _next_request_id(self) -> int:
        self._request_id = (self._request_id + 1) & 0xFFFFFFFF
        return self._request_id

    def carry(self, flow: Flow) -> None:
        """Hand the flow to the master now on a spare mux connection, else (the master's
        backlog full) open it in a task on a fresh one. A master that is going (dead, its
        exit not yet seen by the supervisor) never got the socket: the flow is given back
        to its mouth, which holds it for the next link (:meth:`Flow.give_back`)."""
        # Non-blocking before the master gets it: ssh makes a blocking stdio descriptor
        # non-blocking itself (and blocking again at the channel's end), two system calls
        # more in the master per connection, one of them before the channel opens.
        flow.sock.setblocking(False)
        if self.hand_off(flow):
            return
        if self._closed or self.master.going():
            flow.give_back(self)
            return
        flow.task = asyncio.get_running_loop().create_task(self._carry_slowly(flow))

    async def _carry_slowly(self, flow: Flow) -> None:
        forward = flow.forward
        try:
            channel = await self.open_stdio_fwd(
                flow.sock.fileno(), forward.target_host, forward.target_port
            )
            self.adopt(channel, flow)
        except (OSError, TunnelError) as exc:
            flow.task = None
            flow.cut(f"forward to {forward.target_host}:{forward.target_port} failed: {exc}")
            return
        flow.task = None

    def hand_off(self, flow: Flow) -> bool:
        """Send ``MUX_C_NEW_STDIO_FWD`` and the flow's descriptor (twice) now, on a spare
        connection, and watch the session. False when that cannot be done without
        waiting: use :meth:`open_stdio_fwd` and :meth:`adopt` instead."""
        channel = self.spares.take() if not self._closed else None
        if channel is None:
            return False
        forward = flow.forward
        rid = self._next_request_id()
        request = stdio_fwd_packet(rid, forward.target_host, forward.target_port)
        try:
            send_request_and_fd(channel.sock, request, flow.sock.fileno())
        except OSError:
            channel.close()
            return False
        # Watched after the send, which is what the connection waits for: the master may
        # take over this CPU at once (the send wakes it "sync"), and the watch can wait.
        # Nothing can hang up unseen meanwhile (EPOLLRDHUP is level-triggered).
        self._watch(MuxSession(channel, flow, rid))
        return True

    def adopt(self, channel: MuxChannel, flow: Flow) -> None:
        """Watch a flow opened with :meth:`open_stdio_fwd` until its channel ends;
        :class:`MuxError` (``channel`` closed) if the link closed meanwhile."""
        if self._closed:
            channel.close()
            raise MuxError("the link closed while the channel was being opened")
        self._watch(MuxSession(channel, flow, None))

    def _watch(self, session: MuxSession) -> MuxSession:
        fd = session.channel.sock.fileno()
        self._sessions[fd] = session
        flow = session.flow
        flow.stop = lambda why: self.end(session, why)
        flow.meter = lambda: tcp_traffic(flow.sock)
        loop = self._loop
        if self._hangups is None:
            loop.add_reader(fd, self._read_one, session)
            return session
        self._hangups.register(fd, select.EPOLLRDHUP)
        if not self._watching:
            self._watching = True
            loop.add_reader(self._hangups.fileno(), self._hung_up)
        return session

    def _hung_up(self) -> None:
        """The watch set is readable: its ends are read in the loop's next step, not now.
        A master hangs up a flow's mux connection when the flow is already over for the
        client, and the client's next connection often arrives in the same wake-up: its
        accept and hand-off, which a client waits for, go first (the ends wait a few
        microseconds). Level-triggered, so the loop may call this again meanwhile."""
        if not self._reaping:
            self._reaping = True
            self._loop.call_soon(self._reap)

    def _reap(self) -> None:
        self._reaping = False
        if self._closed or self._hangups is None:
            return
        judged = False
        verdict: str | None = None
        for fd, _ in self._hangups.poll(0):
            session = self._sessions.get(fd)
            if session is not None:
                self._service(session, hung_up=True)
                if not judged:
                    judged, verdict = True, self._why_hung_up()
                self.end(session, verdict)

    def _why_hung_up(self) -> str | None:
        """Why the master hung up mux connections: ``None`` when it is alive (so each
        channel ended in order), else the cut. A going master lets go of its control
        listener before it hangs up any mux connection, so asking after the hang-ups were
        seen tells the two apart (:meth:`Master.going`, :class:`.master.ExitWatch`)."""
        if self._closed or self.master.going():
            return "link lost; connection cut"
        return None

    def _read_one(self, session: MuxSession) -> None:
        """Without epoll: the loop watches each mux connection itself."""
        if self._service(session):
            self.end(session, self._why_hung_up())

    def _service(self, session: MuxSession, hung_up: bool = False) -> bool:
        """Read what the master sent on a session: hello, reply, then the end. True when
        the master hung up after the channel opened (the caller judges why). ``hung_up``:
        epoll saw the master's end of it, so a read shorter than asked took all there was
        and the end needs no read of its own."""
        channel = session.channel
        while channel.sock.fileno() >= 0:
            try:
                data = channel.sock.recv(READ_MAX)
            except BlockingIOError:
                return False
            except OSError:
                data = b""
            if data and session.stage < 2:
                channel.buffer += data
                try:
                    while session.stage < 2 and (body := channel.take_packet()) is not None:
                        if session.stage == 0:
                            check_hello(body)
                        else:
                            check_opened(body, session.request_id)
                        session.stage += 1
                except MuxError as exc:
                    self.end(session, str(exc))
                    return False
            if not data or (hung_up and len(data) < READ_MAX):
                if session.stage < 2:
                    self.unanswered(session)
                    return False
                return True
        return False

    def unanswered(self, session: MuxSession) -> None:
        """The master hung up before its reply (``MUX_S_SESSION_OPENED``, sent once the
        gateway confirmed the channel). A going master never opened the channel, and if
        the client's socket shows that no one read or wrote a byte of it
        (:func:`untouched`; the master closed its copies as it went), the flow is given
        back for the next link, as the asyncssh backend gives back a flow whose OPEN went
        unanswered; otherwise it is cut."""
        flow = session.flow
        if self._why_hung_up() is None or not untouched(flow.sock):
            self.end(session, "master closed the mux connection before its reply")
            return
        fd = session.channel.sock.fileno()
        if self._sessions.pop(fd, None) is None:
            return
        if self._hangups is None:
            asyncio.get_running_loop().remove_reader(fd)
        session.channel.close()
        flow.give_back(self)

    def end(self, session: MuxSession, cut: str | None) -> None:
        """Close ``session``'s mux connection (ending its channel) and our copy of the
        client, and report the flow's end, with the bytes the kernel counted. (With epoll,
        closing the mux connection, its one descriptor, takes it out of the watch set.)"""
        fd = session.channel.sock.fileno()
        if fd < 0 or self._sessions.pop(fd, None) is None:
            return
        if self._hangups is None:
            asyncio.get_running_loop().remove_reader(fd)
        flow = session.flow
        traffic = tcp_traffic(flow.sock)
        if cut is not None:
            before_cut_close(flow.sock)
        flow.sock.close()
        session.channel.close()
        flow.finish(cut, traffic)

    async def open_stdio_fwd(self, fd: int, host: str, port: int) -> MuxChannel:
        """Hand ``fd`` to the master for a channel to ``host:port``; the returned mux
        connection must stay open while the channel lives. :class:`MuxError` / OSError."""
        if self._closed:
            raise MuxError("the link is closing")
        rid = self._next_request_id()
        channel = await MuxChannel.connect(self.control_path, stdio_fwd_packet(rid, host, port), fd)
        try:
            check_opened(await channel.read_packet(), rid)
        except BaseException:
            channel.close()
            raise
        return channel

    def path(self) -> tuple[str, str] | None:
        """Where the master's connection runs (Linux ``/proc``), if it is a TCP socket."""
        return tcp_path(self.master.pid)

    async def probe(self, timeout_s: float) -> bool:
        """A request only the gateway can answer (:func:`probe_packet`), on its own mux
        connection: True when any answer came within ``timeout_s``."""
        if self._closed:
            return False
        channel: MuxChannel | None = None
        try:
            async with asyncio.timeout(timeout_s):
                channel = await MuxChannel.connect(
                    self.control_path, probe_packet(self._next_request_id())
                )
                return await channel.read_packet() is not None
        except (TimeoutError, OSError, MuxError):
            return False
        finally:
            if channel is not None:
                channel.close()

    def close(self) -> None:
        """Cut every flow, and ask the master to exit (SIGTERM)."""
        self._closed = True
        self.spares.close()
        for session in list(self._sessions.values()):
            self.end(session, "link closed; connection cut")
        if self._hangups is not None:
            if self._watching:
                self._watching = False
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().remove_reader(self._hangups.fileno())
            self._hangups.close()
        self.master.terminate()

    async def open_exec(self, command: str) -> SubprocessExec:
        """``ssh`` running ``command`` through the master's control socket."""
        argv = exec_argv(self.master.ssh_binary, self.control_path, self.gateway)
        try:
            return await SubprocessExec.start(argv, command)
        except OSError as exc:
            raise LinkLost(f"cannot run {argv[0]}: {exc}") from None

    async def aclose(self, grace_s: float) -> None:
        """Stop the master, SIGKILL it after ``grace_s``, reap it, remove the private dir."""
        self.close()
        await self.master.stop(grace_s)


async def open_mux_link(gateway: Gateway, options: TunnelOptions) -> MuxLink:
    """Start a master for ``gateway`` (:func:`start_master`) and fill its spare pool."""
    link = MuxLink(await start_master(gateway, options))
    link.spares.refill()
    log.debug("link up to %s (ssh master pid %d)", link.gateway, link.pid)
    return link
