"""asyncssh without its file-transfer modules (``asyncssh.sftp``, ``asyncssh.scp``) and
three server-side or subprocess ones (:data:`LEFT_OUT`) in ``blitzdns run``.

asyncssh imports every module of its own at its import, so a client that only forwards
ports keeps an SFTP client and server (8,300 lines) and scp: ~0.8 MB of the idle daemon's
RSS (bench/daemon_bench.py) and 2.7% of its start's instructions (callgrind, the import
set at -OO: 766 → 746 M). Neither is on a forwarding client's path: they serve
``start_sftp_client()``, ``scp()`` and a server's subsystems, none of which the tunnel
calls.

While :func:`start` is in force (``run``'s start, :func:`blitzdns.entry.main`, until
:func:`finish` when the link's code is loaded), importing either module gives a
placeholder module: each name asyncssh takes from it is a placeholder class (an
``Exception`` subclass, so that an ``except`` naming it simply never matches and
``isinstance`` is false: no such object can exist). Making one or calling one raises
:class:`NotLoaded`, reading an attribute of one ``AttributeError``, each naming the
module: loud, never a quietly different behaviour. asyncssh's modules may take only the
names known to be off the client's path (:data:`TAKEN`; its package re-exports any):
another version that takes another name, or that does not import with the placeholders,
is imported again in full by :mod:`tunnel.sshlib`, with a warning. Other processes (the
CLI, the demo's gateway, tests run in-process) never start this and get asyncssh whole.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import Any, NoReturn

#: The modules replaced while :func:`start` is in force (scp imports sftp). Besides the
#: file transfers, three that only an SSH server or a local subprocess bridge uses: the
#: server's line editor (``editor``: a server channel's echo and history), the server
#: callbacks' base class (``server``: ``SSHServer``) and ``create_subprocess``'s pipes
#: (``subprocess``); the tunnel's remote commands go through ``create_process``
#: (``asyncssh.process``, kept whole). −10 M instructions of the start (callgrind, -1.3 %).
LEFT_OUT = (
    "asyncssh.sftp",
    "asyncssh.scp",
    "asyncssh.editor",
    "asyncssh.server",
    "asyncssh.subprocess",
)


class NotLoaded(RuntimeError):
    """A name from a module ``blitzdns run`` leaves out was used."""


class _Absent(type):
    """The type of a placeholder class: it cannot be made, called or looked into."""

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise NotLoaded(f"{cls.__module__}.{cls.__qualname__}: {cls.__module__} is not loaded")

    def __getattr__(cls, name: str) -> NoReturn:
        raise AttributeError(
            f"{cls.__module__}.{cls.__qualname__}.{name}: {cls.__module__} is not loaded"
        )


#: The names asyncssh's other modules take from the left-out ones (asyncssh 2.14–2.24:
#: connection.py, channel.py and stream.py; the package's ``__init__`` re-exports any
#: name). A name not here means a version that uses these modules otherwise: the import
#: then fails and asyncssh is imported in full (:mod:`tunnel.sshlib`).
TAKEN = frozenset(
    {"MIN_SFTP_VERSION", "SFTPClient", "SFTPServer", "start_sftp_client", "run_sftp_server"}
    | {"run_scp_server"}
    | {"SSHLineEditorChannel", "SSHLineEditorSession"}
    | {"SSHServer"}
    | {"SSHSubprocessTransport", "SSHSubprocessProtocol", "SubprocessFactory"}
    | {"SSHSubprocessWritePipe"}
)


class Placeholder(types.ModuleType):
    """A module left out: a name asked for is a placeholder class, made when first asked,
    if the package re-exports it or it is one of :data:`TAKEN`."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        asking = sys._getframe(1).f_globals.get("__name__")
        if asking not in ("asyncssh", *LEFT_OUT) and name not in TAKEN:
            raise AttributeError(f"{asking} takes {name} from {self.__name__}, left out")
        made = _Absent(name, (Exception,), {"__module__": self.__name__, "__qualname__": name})
        setattr(self, name, made)
        return made


class _Finder:
    """The meta path finder and loader of the placeholders."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        # A loader by its methods: importlib.abc's base class would load importlib.resources.
        return importlib.machinery.ModuleSpec(fullname, self)  # type: ignore[arg-type]

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return Placeholder(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


_in_force: list[_Finder] = []
"""The finder while :func:`start` is in force (at most one)."""


def start(names: tuple[str, ...] = LEFT_OUT) -> None:
    """Until :func:`finish`, importing one of ``names`` gives a :class:`Placeholder`."""
    finish()
    _in_force.append(_Finder(names))
    sys.meta_path.insert(0, _in_force[0])


def in_force() -> bool:
    return bool(_in_force)


def finish() -> None:
    """Imports find the real modules again (the placeholders already given stay)."""
    while _in_force:
        finder = _in_force.pop()
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)


def left_out(module: str) -> bool:
    """Whether ``module`` is loaded as a placeholder."""
    return isinstance(sys.modules.get(module), Placeholder)


def give_up(package: str) -> None:
    """Stop, and forget ``package`` (all its modules, placeholders included), so that it
    can be imported again in full."""
    finish()
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]
