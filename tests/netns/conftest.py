"""Fixtures for the network-namespace tests: the lab, its real peers, and blitzdns itself.

Everything here skips (with the reason) unless we are root with ``ip``, ``tcpdump``,
``sshd``, ``ssh-keygen`` and ``dig`` at hand. The namespaces are deleted and every
process started in them is killed at teardown, whether the tests passed or not.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .lab import (
    CLIENT_LINK,
    Blitzdns,
    Capture,
    FakeServers,
    Lab,
    Sshd,
    SshKeys,
    config_text,
    missing_prerequisite,
    stop_process,
)

MakeBlitzdns = Callable[..., Blitzdns]


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    built = Lab(str(os.getpid()), tmp_path_factory.mktemp("netns"))
    try:
        built.create()
        yield built
    finally:
        built.destroy()


@pytest.fixture(scope="session")
def ssh_keys(lab: Lab) -> SshKeys:
    return SshKeys.make(lab.root)


@pytest.fixture(scope="session")
def servers(lab: Lab) -> Iterator[FakeServers]:
    """The fake DND, dasher and prancer, reachable only from the gateway namespace."""
    fleet = FakeServers(lab["srv"], lab.root).start()
    yield fleet
    if fleet.proc is not None:
        stop_process(fleet.proc)


def _sshd(lab: Lab, keys: SshKeys, root: Path) -> Iterator[Sshd]:
    daemon = Sshd(lab["gw"], keys, root).start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def sshd(lab: Lab, ssh_keys: SshKeys, tmp_path: Path) -> Iterator[Sshd]:
    """A gateway for one test (the link-down test stops it)."""
    yield from _sshd(lab, ssh_keys, tmp_path)


@pytest.fixture(scope="module")
def module_sshd(
    lab: Lab, ssh_keys: SshKeys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sshd]:
    """A gateway shared by the tests of one module."""
    yield from _sshd(lab, ssh_keys, tmp_path_factory.mktemp("sshd"))


def _blitzdns_factory(lab: Lab, keys: SshKeys, root: Path, started: list[Blitzdns]) -> MakeBlitzdns:
    def make(
        sshd: Sshd | None = None,
        *,
        extra: str = "",
        wait_for_link_s: float = 2.0,
        hosts: tuple[str, ...] = ("dnd", "dasher", "prancer"),
    ) -> Blitzdns:
        daemon = Blitzdns(
            lab["client"],
            root,
            config_text(keys, root, wait_for_link_s=wait_for_link_s, extra=extra, hosts=hosts),
            sshd,
        )
        started.append(daemon)
        return daemon

    return make


@pytest.fixture
def make_blitzdns(lab: Lab, ssh_keys: SshKeys, tmp_path: Path) -> Iterator[MakeBlitzdns]:
    """Make an (unstarted) ``blitzdns run`` in the client namespace; stopped at teardown."""
    started: list[Blitzdns] = []
    yield _blitzdns_factory(lab, ssh_keys, tmp_path, started)
    for daemon in started:
        daemon.stop()


@pytest.fixture(scope="module")
def make_module_blitzdns(
    lab: Lab, ssh_keys: SshKeys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MakeBlitzdns]:
    started: list[Blitzdns] = []
    yield _blitzdns_factory(lab, ssh_keys, tmp_path_factory.mktemp("blitzdns"), started)
    for daemon in started:
        daemon.stop()


@pytest.fixture
def client_capture(lab: Lab, tmp_path: Path) -> Iterator[Capture]:
    """tcpdump on the client's link to the gateway: the test starts it; stopped here too."""
    capture = Capture(lab["client"], CLIENT_LINK, tmp_path / "client-link.pcap")
    yield capture
    capture.close()
