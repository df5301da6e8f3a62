"""The daemon's side of the guard: install at start, refresh on TTL and location change, and
watch the resolver config.

``run`` with ``[guard] enabled = true`` resolves the protected names through the upstreams
and installs the guard (recorded, like ``blitzdns guard install --apply``) while it is
still root, before the privilege drop. Afterwards it re-resolves when the shortest TTL
runs out (and at once on a reload or location change; after ``MIN_REFRESH_S`` when a
name's lookup failed, since an unresolved name is not refused), keeps the union of the addresses
seen within ``[guard] keep_s`` (:class:`~blitzdns.system.guard.AddressBook`), and hands
changed rules to the :mod:`~blitzdns.warden` (in process while root, else the root
helper). The rules stay when the daemon stops: fail closed.

The resolver watch runs whenever a resolver config is installed: every ``[guard]
watch_s`` seconds, and at once when inotify reports a change in a watched directory, the
warden compares the recorded files with what blitzdns wrote and puts back what changed;
each revert is logged (naming what changed) and counted for ``status`` and ``check``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from blitzdns.config import Config, Endpoint
from blitzdns.errors import BlitzdnsError
from blitzdns.guard_refresh import RETRY_TTL_S, resolve_all
from blitzdns.system import guard_apply, record
from blitzdns.system.guard import AddressBook, GuardRules, build_guard_plan, guard_rules
from blitzdns.system.guard_apply import detect_guard_target
from blitzdns.system.inotify import DirectoryWatch
from blitzdns.warden import Warden, rules_to_json, spawn

if TYPE_CHECKING:  # the status contract: loaded with the first status request, not here
    from blitzdns.snapshot import GuardStatus

log = logging.getLogger("blitzdns.guard")

#: Bounds of the refresh interval (the records' TTL decides in between).
MIN_REFRESH_S = 5.0
MAX_REFRESH_S = 600.0
#: How long the first resolution may hold up ``run``'s start.
START_RESOLVE_S = 3.0


class WardenLink(Protocol):
    """The privileged operations, in this process or in the root helper."""

    async def guard(self, target: str, rules: GuardRules) -> int: ...
    async def watch(self) -> list[dict[str, Any]]: ...
    async def paths(self) -> list[str]: ...
    async def close(self) -> None: ...


class InProcess:
    """The warden in the daemon's own process (it kept root, or needs none under --root)."""

    def __init__(self, warden: Warden):
        self.warden = warden

    async def guard(self, target: str, rules: GuardRules) -> int:
        return await asyncio.to_thread(self.warden.load_guard, target, rules)

    async def watch(self) -> list[dict[str, Any]]:
        drifts = await asyncio.to_thread(self.warden.check_resolver)
        return [
            {"path": d.path, "change": d.change, "restored": d.restored, "error": d.error}
            for d in drifts
        ]

    async def paths(self) -> list[str]:
        return await asyncio.to_thread(self.warden.watched_paths)

    async def close(self) -> None:
        return None


class Helper:
    """The root helper over its socketpair: one JSON line each way, one request at a time."""

    def __init__(self, sock: socket.socket, pid: int):
        self.sock = sock
        self.pid = pid
        self._lock = asyncio.Lock()
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def _ask(self, request: dict[str, Any]) -> Any:
        """The helper's answer; :class:`BlitzdnsError` for every way it can fail to give one.

        A helper that died shows as a reset or a broken pipe (OSError): the refresh and
        watch loops must see it as the typed error they handle, or they would end silently.
        """
        try:
            async with self._lock:
                if self._streams is None:
                    self._streams = await asyncio.open_connection(sock=self.sock)
                reader, writer = self._streams
                writer.write(json.dumps(request).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            reply = json.loads(line) if line else None
        except (OSError, ValueError) as exc:
            raise BlitzdnsError(f"the guard's root helper is gone ({exc})") from None
        if not isinstance(reply, dict):
            raise BlitzdnsError("the guard's root helper has exited")
        if not reply.get("ok"):
            raise BlitzdnsError(f"the guard's root helper refused: {reply.get('error')}")
        return reply.get("result")

    async def guard(self, target: str, rules: GuardRules) -> int:
        return int(
            await self._ask({"cmd": "guard", "target": target, "rules": rules_to_json(rules)})
        )

    async def watch(self) -> list[dict[str, Any]]:
        result = await self._ask({"cmd": "watch"})
        return list(result) if isinstance(result, list) else []

    async def paths(self) -> list[str]:
        result = await self._ask({"cmd": "paths"})
        return [str(p) for p in result] if isinstance(result, list) else []

    async def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
        else:
            self.sock.close()


class GuardService:
    """Refresh loop and resolver watch; :meth:`to_dict` is the ``guard`` part of status."""

    def __init__(
        self,
        config: Config,
        upstreams: Sequence[Endpoint],
        warden: WardenLink,
        *,
        root: Path = Path("/"),
        target: str = "nftables",
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.upstreams = tuple(upstreams)
        self.warden = warden
        self.root = root
        self.target = target
        self.clock = clock
        self.book = AddressBook()
        self.rules: GuardRules | None = None
        self.installed = False
        self.refreshed: float | None = None
        self.next_refresh: float | None = None
        self.last_error: str | None = None
        self.reverted = 0
        self.last_revert: float | None = None
        self.last_change: str | None = None
        self.watch_error: str | None = None
        self.watched: list[str] = []
        self._wake_refresh = asyncio.Event()
        self._wake_watch = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._inotify: Any = None

    @property
    def enabled(self) -> bool:
        return self.config.guard.enabled

    # ------------------------------------------------------------------ start (root)

    async def install_at_start(self, sudo_hint: str = "blitzdns run") -> None:
        """Resolve (within ``START_RESOLVE_S``) and install the guard, recorded, as root."""
        rules = await self._resolve_rules(timeout=START_RESOLVE_S)
        plan = build_guard_plan(self.target, rules)
        await asyncio.to_thread(
            guard_apply.install, plan, self.root, apply=True, sudo_hint=sudo_hint
        )
        self.rules = rules
        self.installed = True
        self.refreshed = self.clock()
        log.info(
            "guard installed (%s): %d real addresses refused%s",
            self.target,
            rules.address_count,
            f"; not yet resolved: {', '.join(rules.unresolved)}" if rules.unresolved else "",
        )

    def start(self) -> None:
        """Start the refresh loop (when enabled) and the resolver watch."""
        if self.enabled and self.target == "nftables":
            self._tasks.append(asyncio.create_task(self._refresh_loop(), name="guard-refresh"))
        self._tasks.append(asyncio.create_task(self._watch_loop(), name="resolver-watch"))

    def update(self, config: Config, upstreams: Sequence[Endpoint]) -> None:
        """A reload or location change: resolve again now."""
        self.config = config
        self.upstreams = tuple(upstreams)
        self._wake_refresh.set()

    async def close(self) -> None:
        """Stop the loops; the rules stay in force (fail closed)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        await self.warden.close()

    # ------------------------------------------------------------------ refresh

    async def _resolve_rules(self, timeout: float = 2.0) -> GuardRules:
        config = self.config
        now = self.clock()
        try:
            resolved = await asyncio.wait_for(
                resolve_all(config, self.upstreams, timeout=min(timeout, 2.0)), timeout + 1
            )
        except TimeoutError:
            resolved = {}
            self.last_error = "the upstreams did not answer in time"
        book = self.book
        ttls: list[int] = []
        errors: list[str] = []
        for found in resolved.values():
            if found.addresses:
                book = book.add(
                    found.host, found.addresses, now=now, ttl=found.ttl, keep_s=config.guard.keep_s
                )
                ttls.append(found.ttl)
            errors += found.errors
        self.book = book.expire(now, hosts=[h.key for h in config.hosts])
        if resolved:
            self.last_error = "; ".join(errors[:2]) or None
        # A name whose lookup failed has no address to refuse: asked again soon.
        missed = not resolved or any(r.errors and not r.addresses for r in resolved.values())
        wait = MIN_REFRESH_S if missed else min(ttls, default=RETRY_TTL_S)
        self.next_refresh = now + min(max(wait, MIN_REFRESH_S), MAX_REFRESH_S)
        return guard_rules(config, self.book.addresses(), config.guard.everywhere)

    async def refresh(self) -> None:
        """Resolve again; hand the warden the rules when they changed."""
        rules = await self._resolve_rules()
        if rules != self.rules:
            count = await self.warden.guard(self.target, rules)
            log.info("guard refreshed: %d real addresses refused", count)
            self.rules = rules
        self.refreshed = self.clock()

    async def _refresh_loop(self) -> None:
        while True:
            wait = max((self.next_refresh or 0) - self.clock(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_refresh.wait(), wait)
            self._wake_refresh.clear()
            try:
                await self.refresh()
            except BlitzdnsError as exc:
                self.last_error = str(exc)
                log.error("guard refresh failed (the rules in force stay): %s", exc)
                self.next_refresh = self.clock() + MIN_REFRESH_S

    # ------------------------------------------------------------------ resolver watch

    async def check_once(self) -> None:
        for drift in await self.warden.watch():
            what = f"{drift['change']} {drift['path']}"
            if drift.get("restored"):
                self.reverted += 1
                self.last_revert = self.clock()
                self.last_change = what
                self.watch_error = None
                log.warning(
                    "resolver config changed (%s); put back what blitzdns installed "
                    "(reverted %d times)",
                    what,
                    self.reverted,
                )
            else:
                self.watch_error = f"{what}: {drift.get('error')}"
                log.warning(
                    "resolver config changed (%s) and was not put back: %s",
                    what,
                    drift.get("error"),
                )

    async def _watch_loop(self) -> None:
        while True:
            try:
                paths = await self.warden.paths()
                if paths != self.watched:
                    self.watched = paths
                    self._watch_directories(DirectoryWatch, paths)
                await self.check_once()
            except BlitzdnsError as exc:
                self.watch_error = str(exc)
            self._wake_watch.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_watch.wait(), self.config.guard.watch_s)

    def _watch_directories(self, factory: Any, paths: Sequence[str]) -> None:
        if self._inotify is not None:
            self._inotify.close()
        directories = {self.root / Path(p).parent.relative_to("/") for p in paths}
        self._inotify = factory.start(sorted(directories), self._wake_watch.set)

    # ------------------------------------------------------------------ status

    def probe(self) -> list[Any] | None:
        """One protected (address, port) the guard refuses, for ``check`` to try."""
        if self.rules is None:
            return None
        for block in self.rules.blocks:
            if block.proto == "tcp" and block.addresses:
                return [block.host, str(block.addresses[0]), block.ports[0]]
        return None

    def to_dict(self) -> GuardStatus:
        return {
            "enabled": self.enabled,
            "target": self.target if self.enabled else None,
            "installed": self.installed,
            "addresses": self.rules.address_count if self.rules else 0,
            "unresolved": list(self.rules.unresolved) if self.rules else [],
            "refreshed": self.refreshed,
            "next_refresh": self.next_refresh if self.enabled else None,
            "last_error": self.last_error,
            "probe": self.probe(),
            "watch": {
                "files": list(self.watched),
                "interval_s": self.config.guard.watch_s,
                "reverted": self.reverted,
                "last": self.last_revert,
                "last_change": self.last_change,
                "last_error": self.watch_error,
            },
        }


async def start_guard(
    config: Config, upstreams: Sequence[Endpoint], root: Path, *, dropping: bool
) -> GuardService | None:
    """What ``run`` starts before the privilege drop: the guard installed (when enabled) and
    the warden for later (the root helper when the daemon is about to drop root). None when
    there is nothing to guard or watch."""
    if not config.guard.enabled and not record.resolver_installed(root):
        return None
    link: WardenLink
    if dropping:
        helper = Helper(*spawn(root))
        # Its first answer comes after its own check_resolver (blitzdns.warden.main): the
        # installed bytes are taken before the daemon goes on, as in-process below. Not
        # waiting, a daemon that starts fast (nothing else to load before the drop) could
        # see a rewrite the helper never saw the original of.
        try:
            await helper.paths()
        except BaseException:
            await helper.close()
            raise
        link = helper
    else:
        warden = Warden(root)
        await asyncio.to_thread(warden.check_resolver)
        link = InProcess(warden)
    target = config.guard.target
    if target == "auto":
        target = detect_guard_target()
    service = GuardService(config, upstreams, link, root=root, target=target)
    if config.guard.enabled:
        try:
            await service.install_at_start()
        except BaseException:
            await link.close()
            raise
    return service
