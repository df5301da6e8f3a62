#!/usr/bin/env python3
"""The floor of the openssh backend's round trip: what a hand-off to an ``ssh -M`` master
costs with nothing else around it, beside ``ssh -L`` and the real forwarder.

Three forwarders to the same echo target through the same sshd, in one run, taking turns
in batches of 50 sequential round trips (connect, send a line, read it back, close):

* ``ssh -L`` (the peer);
* ``floor``: a forked process, a blocking epoll loop in Python, with an ``ssh -M`` master
  of its own: accept, pop a mux connection opened and helloed ahead (PROTOCOL.mux §1), send
  ``MUX_C_NEW_STDIO_FWD`` and the socket twice in one ``sendmmsg`` (the backend's own
  code), close our copy at once, top the spares up after hang-ups; no counters, no reset
  when the master dies: a lower bound for any front that hands connections to the master;
* ``floor-naive``: the same, but topping the spares up right after each hand-off and
  waiting for the master's hello each time (this script's first version, which gave
  "~1.5x"). Suspected of putting the master's accept and hello of a spare on every
  connection's path; measured, it is not slower than ``floor`` (session 8: 1.33x vs
  1.41x, 1.41x vs 1.45x, loaded machine): topping up at the hang-ups lands the master's
  accepts in the next connection's exchange instead (bench/notes/mux.md);
* ``floor-c``: ``floor`` with no Python at all (bench/mux_floor.c, compiled with ``cc`` at
  the start; left out where there is none): the cost of the hand-off itself, whatever the
  front is written in (session 9: 1.22x where the backend was 1.36x, bench/notes/mux.md);
* ``tunnel-mux``: this package with ``backend="openssh"`` (uvloop).

``floor-naive`` runs only with ``--naive``. Prints p50 and the ratio to ``ssh -L``. Needs
root (its own sshd, as tunnel_bench.py).
Usage: ``python bench/mux_floor.py [--round-trips 2000] [--naive]``.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
import tunnel_bench as tb  # noqa: E402
from roundtrip_ab import bench_lock  # noqa: E402
from tunnel.backends.openssh.fdpass import send_request_and_fd  # noqa: E402
from tunnel.backends.openssh.mux import HELLO, stdio_fwd_packet  # noqa: E402

SPARES = 8


def floor_front(listener: socket.socket, control: str, target_port: int, naive: bool) -> None:
    """The minimal front (runs until killed). ``naive``: the pool is topped up right after
    each hand-off, each spare waiting for the master's hello (this script's first version:
    the master then accepts the spare and answers its hello just when it should be opening
    the channel, on every connection); else (the default) as the backend does: spares are
    topped up after the hang-ups are handled, and the master's hello is never waited for."""
    spares: list[socket.socket] = []
    pending: dict[int, socket.socket] = {}
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    request_id = 0

    def top_up() -> None:
        while len(spares) < SPARES:
            spare = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            spare.connect(control)
            spare.sendall(HELLO)
            if naive:
                spare.recv(64)  # the master's hello
            spare.setblocking(False)
            spares.append(spare)

    top_up()
    while True:
        if naive:
            top_up()
        ended = False
        for fd, _ in poller.poll(1.0):
            if fd == listener.fileno():
                conn, _ = listener.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.setblocking(False)
                spare = spares.pop(0)
                request_id += 1
                request = stdio_fwd_packet(request_id, "127.0.0.1", target_port)
                send_request_and_fd(spare, request, conn.fileno())
                conn.close()
                pending[spare.fileno()] = spare
                poller.register(spare.fileno(), select.EPOLLRDHUP)
            else:
                poller.unregister(fd)
                pending.pop(fd).close()
                ended = True
        if ended and not naive:
            top_up()


def start_master(lab: tb.Lab, control: str) -> subprocess.Popen[bytes]:
    config = lab.ssh_config(tb.CIPHERS[0])
    command = ["ssh", "-F", str(config), "-N", "-M", "-S", control, "-p", str(lab.sshd_port)]
    command += ["-i", str(lab.key), "-o", f"UserKnownHostsFile={lab.known_hosts}"]
    command += ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "root@127.0.0.1"]
    master = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(control):
        if time.monotonic() > deadline or master.poll() is not None:
            raise RuntimeError("the ssh master did not come up")
        time.sleep(0.02)
    return master


def compile_floor_c(tmp: str) -> str | None:
    """bench/mux_floor.c built into ``tmp``; ``None`` without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    binary = os.path.join(tmp, "mux_floor_c")
    subprocess.run([cc, "-O2", "-o", binary, str(HERE / "mux_floor.c")], check=True)
    return binary


def start_floor_c(
    binary: str, lab: tb.Lab, control: str
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], int]:
    """The C front with a master of its own: (master, front, port)."""
    master = start_master(lab, control)
    listener = socket.socket()
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited, as ours
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    fd = listener.fileno()
    argv = [binary, str(fd), control, str(lab.echo_port)]
    front = subprocess.Popen(argv, pass_fds=[fd])
    port = listener.getsockname()[1]
    listener.close()
    return master, front, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--naive", action="store_true", help="run floor-naive too")
    args = parser.parse_args()
    batches = max(1, min(args.round_trips, 10000) // tb.RT_BATCH)
    with tb.lab() as lab, tempfile.TemporaryDirectory() as tmp:
        masters = {}
        procs = []
        c_fronts: list[subprocess.Popen[bytes]] = []
        fronts: list[int] = []
        try:
            ports = {}
            for kind in ("openssh", "tunnel-mux+uvloop"):
                mouths = (tb.free_port(), tb.free_port())
                procs.append(tb.start_forwarder(kind, lab, tb.CIPHERS[0], mouths))
                ports["ssh -L" if kind == "openssh" else "tunnel-mux"] = mouths[1]
            floors = [("floor", False)] + ([("floor-naive", True)] if args.naive else [])
            for name, naive in floors:
                control = os.path.join(tmp, f"ctl-{name}")
                masters[name] = start_master(lab, control)
                listener = socket.socket()
                listener.bind(("127.0.0.1", 0))
                listener.listen(128)
                ports[name] = listener.getsockname()[1]
                front = os.fork()
                if front == 0:
                    try:
                        floor_front(listener, control, lab.echo_port, naive)
                    finally:
                        os._exit(0)
                fronts.append(front)
                listener.close()
            binary = compile_floor_c(tmp)
            if binary is not None:
                control = os.path.join(tmp, "ctl-floor-c")
                masters["floor-c"], c_front, ports["floor-c"] = start_floor_c(binary, lab, control)
                c_fronts.append(c_front)
            for port in ports.values():
                tb.round_trips(port, tb.RT_BATCH, 20)
            times: dict[str, list[float]] = {name: [] for name in ports}
            names = list(ports)
            with bench_lock():  # the measuring only, waited for in the kernel
                load = os.getloadavg()[0]
                for batch in range(batches):
                    shift = batch % len(names)
                    for name in names[shift:] + names[:shift]:
                        times[name] += tb.round_trips(ports[name], tb.RT_BATCH, 60)
            peer = statistics.median(times["ssh -L"])
            print(f"{len(times['ssh -L'])} round trips each, load {load:.2f} → ", end="")
            print(f"{os.getloadavg()[0]:.2f}")
            for name in names:
                p50 = statistics.median(times[name])
                print(f"  {name:<11} p50 {p50:.3f} ms  {p50 / peer:.3f}x")
        finally:
            for c_front in c_fronts:
                c_front.kill()
                c_front.wait()
            for front in fronts:
                os.kill(front, signal.SIGKILL)
                os.waitpid(front, 0)
            for proc in procs:
                tb.stop(proc)
            for master in masters.values():
                master.terminate()
                master.wait()


if __name__ == "__main__":
    main()
