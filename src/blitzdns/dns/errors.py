"""Errors of the DNS half that the shared tree (:mod:`blitzdns.errors`) does not name.

::

    BlitzdnsError
    └── NoUpstreams     exit 1: nothing to forward to; the message says to pass --upstream

and :class:`Malformed`, which never leaves the resolver (it becomes a FORMERR or SERVFAIL).
"""

from __future__ import annotations

from blitzdns.errors import BlitzdnsError


class NoUpstreams(BlitzdnsError):
    """No upstream resolver was given and none could be found on this system."""


class Malformed(ValueError):
    """A message's header is readable but the rest is not (answered with FORMERR).

    Raised by :mod:`blitzdns.dns.wire`; defined here so that the engine can catch it without
    loading that module and dnslib, which only the slow path needs."""
