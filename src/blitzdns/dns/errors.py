"""Errors of the DNS half that the shared tree (:mod:`blitzdns.errors`) does not name.

::

    BlitzdnsError
    └── NoUpstreams     exit 1: nothing to forward to; the message says to pass --upstream
"""

from __future__ import annotations

from blitzdns.errors import BlitzdnsError


class NoUpstreams(BlitzdnsError):
    """No upstream resolver was given and none could be found on this system."""
