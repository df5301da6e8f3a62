"""asyncssh, imported once, cheaply: every module of the project takes it from here
(``from tunnel.sshlib import asyncssh``) so that the first import is this one.

Importing asyncssh looks for optional C libraries (liboqs, nettle) with
``ctypes.util.find_library``, which on Linux spawns up to 11 processes:
:func:`tunnel.libfind.cheap_find_library` answers the same lookups from one ``ldconfig
-p`` listing instead (the reason and the figures: :mod:`tunnel.libfind`). asyncssh finds
the same libraries, so it offers the same algorithms.
"""

from tunnel.libfind import cheap_find_library

with cheap_find_library():
    import asyncssh

__all__ = ["asyncssh"]
