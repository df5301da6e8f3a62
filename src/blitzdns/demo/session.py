"""The scripted BlitzMail client the demo plays through the stub and the tunnel.

What a real client does first: resolve the DND host, read its ``220`` greeting, ``LOOKUP``
the user's ``NAME UID BLITZSERV``, resolve the server DND names, then ``VERS`` and ``NOOP``
there. Two users on two reindeer servers run at once: every mail server gets its own
mouth, which the one-tunnel classic recipe could not offer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from blitzdns import lookup
from blitzdns.blitzmail import dnd, probes
from blitzdns.blitzmail.fakes import DEMO_RECORDS, DndRecord
from blitzdns.blitzmail.notify import NotifyClient, PostRefused, post_notice
from blitzdns.config import Config


@dataclass
class SessionLog:
    """Transcript lines, printed per user in order even though users run at once."""

    say: Callable[[str], None]
    lines: dict[str, list[str]] = field(default_factory=dict)

    def add(self, user: str, line: str) -> None:
        self.lines.setdefault(user, []).append(line)

    def flush(self) -> None:
        for user, lines in self.lines.items():
            self.say(f"-- user {user!r}")
            for line in lines:
                self.say(f"   {line}")
        self.lines.clear()


NOTICE_TEXT = b"New mail from Demo Reindeer: Reindeer games tonight"
"""The demo's new-mail notice (a cleartext marker on the wire)."""


def secrets_of(records: Sequence[DndRecord], users: Sequence[str]) -> list[str]:
    """The cleartext a wire must not show: keys, commands, the looked-up field values, and
    the Notify registration and notice."""
    found = [r for r in records if r.nickname in users]
    values = [v for r in found for v in (r.name, str(r.uid), r.blitzserv)]
    notify = ["NR02", NOTICE_TEXT.decode()]
    return [*users, "LOOKUP", "BLITZSERV", "VERS blitzdns-demo", *values, *notify]


async def resolve(log: SessionLog, user: str, stub: tuple[str, int], name: str) -> str:
    """A and AAAA through the stub, as a client's resolver would ask; the A address.

    No address is :class:`~blitzdns.lookup.LookupFailed`: an empty host would make the
    next connect go to a default address instead of failing.
    """
    a = await lookup.query(stub, name, "A")
    aaaa = await lookup.query(stub, name, "AAAA")
    addresses = a.addresses()
    log.add(
        user,
        f"resolve {name} → {addresses[0] if addresses else a.rcode} "
        f"(answer echoes {a.question!r}); AAAA → {', '.join(aaaa.addresses()) or 'none'}",
    )
    if not addresses:
        raise lookup.LookupFailed(f"the stub gave no address for {name} ({a.rcode})")
    return addresses[0]


async def user_session(log: SessionLog, user: str, stub: tuple[str, int], config: Config) -> bool:
    """One user's first steps; True when every step answered as a real server would.

    One DND connection, as a client makes it: the ``220`` greeting, then ``LOOKUP``.
    """
    dnd_port = config.services["dnd"].port
    mail_port = config.services["mail"].port
    mouth = await resolve(log, user, stub, "DND.Dartmouth.EDU.")
    async with dnd.dnd_session(mouth, dnd_port, timeout=5) as client:
        log.add(user, f"connect {mouth}:{dnd_port} → {client.greeting}")
        record = await client.lookup_unique(user, dnd.BLITZSERV_FIELDS)
    account = dnd.account_from_record(record)
    log.add(
        user,
        f"LOOKUP {user},NAME UID BLITZSERV → {account.name!r}, {account.uid}, "
        f"{account.blitzserv_raw!r}",
    )
    server_name = account.blitzserv_raw.split("@", 1)[0]
    server_mouth = await resolve(log, user, stub, server_name)
    replies = await probes.converse_blitzserv(
        server_mouth, mail_port, ["VERS blitzdns-demo", "NOOP"], timeout=5
    )
    for command, reply in replies:
        log.add(user, f"{command} → {int(reply.warning)}{reply.code:02d} {reply.text}")
    expected = next((h.mouth for h in config.hosts if account.blitzserv in h.names), None)
    return str(expected) == server_mouth and all(r.code == 10 for _, r in replies)


async def client_session(
    log: SessionLog, *, stub: tuple[str, int], config: Config, users: Sequence[str]
) -> bool:
    """All users at once; the transcript is printed user by user."""
    try:
        results = await asyncio.gather(*(user_session(log, u, stub, config) for u in users))
    except (lookup.LookupFailed, dnd.DndError, probes.ProbeError) as exc:
        log.flush()
        log.say(f"✗ {exc}")
        return False
    log.flush()
    return all(results)


async def notify_session(
    log: SessionLog, *, stub: tuple[str, int], config: Config, user: str
) -> bool:
    """Register for new-mail notices at the Notify host's UDP mouth, post a notice on its
    TCP side (as the mail server would), and take the notice when it comes back over UDP:
    the whole ATP exchange (NR02 → response → release; NOTI → response → release)."""
    name = "notify"
    try:
        mouth = await resolve(log, name, stub, "notify.dartmouth.edu")
        account = next(r for r in DEMO_RECORDS if r.nickname == user)
        assert account.password is not None
        udp_port = config.services["notify"].port
        tcp_port = config.services["dartnotify"].port
        async with NotifyClient() as client, asyncio.timeout(15):
            await client.register((mouth, udp_port), account.uid)
            log.add(name, f"NR02 #{account.uid} → {mouth}:{udp_port} (UDP) → registered")
            replies = await post_notice(
                (mouth, tcp_port), f"#{account.uid}", account.password, account.uid, NOTICE_TEXT
            )
            log.add(name, f"NOTIFY {len(NOTICE_TEXT)},{account.uid},1,1,0 → {replies[-2]}")
            notice = await client.next_notice()
            log.add(name, f"NOTI ← {notice.text.decode(errors='replace')!r} (answered)")
            await client.wait_released()
            log.add(name, "release ← the server got the answer")
    except (lookup.LookupFailed, OSError, TimeoutError, PostRefused) as exc:
        log.flush()
        log.say(f"✗ Notify: {exc or type(exc).__name__}")
        return False
    log.flush()
    return notice.text == NOTICE_TEXT
