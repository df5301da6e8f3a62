"""`blitzdns run` at -OO (blitzdns.optlevel): the daemon without docstrings, the CLI with.

The daemon's modules load as at ``python -OO`` (in the one process) when it was started as
the script or ``-m blitzdns``, no level was chosen (``-O``, ``PYTHONOPTIMIZE``) and the
``.opt-2lines1.pyc`` files (``-OO``'s code with line-only location tables) can be kept; else
it goes on as it is.
"""

from __future__ import annotations

import ast
import importlib.util
import marshal
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from blitzdns import linetable, optlevel
from tests.peers import Sshd, free_port, wait_for

from .conftest import BLITZDNS, ChildRunner


def cached_env(prefix: Path) -> dict[str, str]:
    """This environment with bytecode written (under ``prefix``) and no level of its own."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONOPTIMIZE")
    }
    env["PYTHONPYCACHEPREFIX"] = str(prefix)
    return env


def test_level_2_only_where_the_user_chose_no_level() -> None:
    assert optlevel.wanted(0, {}, posix=True)
    assert not optlevel.wanted(1, {}, posix=True)  # python -O: the user's choice stands
    assert not optlevel.wanted(2, {}, posix=True)
    assert not optlevel.wanted(0, {"PYTHONOPTIMIZE": "0"}, posix=True)  # even 0
    assert not optlevel.wanted(0, {}, posix=False)


MODULE = '''"""The module's docstring."""
def f():
    """f's docstring."""
    assert False, "asserts are left out at -OO"
    return VALUE
VALUE = {value}
'''

PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from blitzdns import linetable, optlevel
print(optlevel.optimize_imports())
import probe_mod
try:
    value = probe_mod.f()
except AssertionError:
    value = "asserted"
print(probe_mod.__doc__, probe_mod.f.__doc__, value, probe_mod.__cached__, sep="|")
"""


def test_modules_imported_after_it_load_as_at_OO(tmp_path: Path) -> None:
    """In a fresh interpreter (no -O): a module imported after optimize_imports has no
    docstrings nor asserts, its code is python -OO's with line-only tables, kept as an
    .opt-2lines1.pyc (python -OO's own .opt-2.pyc left to it), a stale one is compiled
    again."""
    (tmp_path / "mods").mkdir()
    source = tmp_path / "mods" / "probe_mod.py"
    source.write_text(MODULE.format(value=1))
    prefix = tmp_path / "pycache"
    env = cached_env(prefix)

    def probe(*options: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, *options, "-c", PROBE, str(tmp_path / "mods")],
            capture_output=True, text=True, env=env, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout.splitlines()

    tag = f"{sys.implementation.cache_tag}.opt-{optlevel.CACHE_LEVEL}"
    cached = str(prefix) + str(source.with_name(f"probe_mod.{tag}.pyc"))
    oo_cached = cached.replace(f".opt-{optlevel.CACHE_LEVEL}.", ".opt-2.")
    assert probe() == ["True", f"None|None|1|{cached}"]
    assert Path(cached).exists()
    assert not list(prefix.rglob(f"probe_mod.{sys.implementation.cache_tag}.pyc"))  # no level 0
    written = Path(cached).read_bytes()
    assert probe() == ["True", f"None|None|1|{cached}"]  # loaded from it
    assert Path(cached).read_bytes() == written
    # python -OO's code with line-only tables; -OO's own file is its own.
    assert not Path(oo_cached).exists()
    assert probe("-OO")[1] == f"None|None|1|{oo_cached}"
    oo_code, ours = (marshal.loads(data[16:]) for data in (Path(oo_cached).read_bytes(), written))
    assert linetable.lines_only(oo_code) == ours  # code objects compare their tables too
    assert oo_code != ours  # -OO's has the columns
    assert Path(cached).read_bytes() == written
    # A changed source is compiled again (the file's mtime and size are checked).
    source.write_text(MODULE.format(value=22))
    assert probe() == ["True", f"None|None|22|{cached}"]
    # Not at -O, nor with PYTHONOPTIMIZE: the user's level stands.
    shown = probe("-O")
    assert shown[0] == "False" and shown[1].startswith("The module's docstring.|f's docstring.|")
    shown = probe("-B")  # nothing can be written, nothing is there: as it is
    assert shown[0] == "False" and shown[1].startswith(
        "The module's docstring.|f's docstring.|asserted|"
    )


def test_the_cache_tag_carries_the_line_tables_format() -> None:
    """Files written by an older rewriter (valid by their source's mtime and size) are
    never read as this one's: the tag names the format."""
    assert f"2lines{linetable.FORMAT}" == optlevel.CACHE_LEVEL
    name = importlib.util.cache_from_source("/x/m.py", optimization=optlevel.CACHE_LEVEL)
    assert name.endswith(f".opt-2lines{linetable.FORMAT}.pyc")


def test_the_older_levels_of_a_postponed_module_include_its_own_older_formats() -> None:
    """At a format bump a postponed module's older files (plain and postponed) are
    orphans too, and so is this format's plain file written before it was postponed."""
    plain = optlevel.older_levels(optlevel.CACHE_LEVEL)
    postponed = optlevel.older_levels(optlevel.POSTPONED_LEVEL)
    assert plain == optlevel.OLDER_LEVELS and "2lines" in plain
    assert optlevel.CACHE_LEVEL not in plain and optlevel.POSTPONED_LEVEL not in postponed
    assert set(postponed) == {*plain, *(f"{old}pep563" for old in plain), optlevel.CACHE_LEVEL}
    assert all(level.isalnum() for level in postponed)


def test_files_of_older_formats_go_when_this_one_is_written(tmp_path: Path) -> None:
    """A module's .opt-2lines.pyc (the tag before the format was in it; nothing reads it
    now) is removed once its file of this format is written; python -OO's is left alone."""
    (tmp_path / "mods").mkdir()
    source = tmp_path / "mods" / "probe_mod.py"
    source.write_text(MODULE.format(value=1))
    prefix = tmp_path / "pycache"
    tag = f"{sys.implementation.cache_tag}.opt-{optlevel.CACHE_LEVEL}"
    cached = Path(str(prefix) + str(source.with_name(f"probe_mod.{tag}.pyc")))
    cached.parent.mkdir(parents=True)
    older = [cached.with_name(cached.name.replace(optlevel.CACHE_LEVEL, level))
             for level in (*optlevel.OLDER_LEVELS, "2")]  # fmt: skip
    assert older[0].name.endswith(".opt-2lines.pyc")
    for path in older:
        path.write_bytes(b"old")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "mods")],
        capture_output=True, text=True, env=cached_env(prefix), timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.splitlines()[0] == "True"
    assert cached.exists()
    assert [path.exists() for path in older] == [False] * len(optlevel.OLDER_LEVELS) + [True]


ANNOTATED = """
import typing
def f(x: typing.Optional[int]) -> typing.List[int]:
    return [x or 0]
"""

POSTPONED_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from blitzdns import optlevel
print(optlevel.optimize_imports())
import asyncssh, asyncssh.connection, asyncssh.misc, annotated_mod
init = asyncssh.connection.SSHClientConnection.__init__
print(sorted({type(v).__name__ for v in init.__annotations__.values()}))
print(repr(init.__annotations__["wait"]), asyncssh.connection.__cached__)
print(annotated_mod.f.__annotations__)
done = asyncssh.SSHCompletedProcess
print(list(done().__slots__) == list(done.__annotations__), "exit_status" in done().__slots__)
"""


def test_asyncssh_loads_with_its_annotations_postponed(tmp_path: Path) -> None:
    """After optimize_imports, asyncssh's functions keep their annotations as text (PEP
    563), not evaluated at each def; its files carry their own tag; a module of any other
    package keeps evaluated annotations (python -OO's code), and asyncssh's Record still
    gets its fields from the names."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "annotated_mod.py").write_text(ANNOTATED)
    prefix = tmp_path / "pycache"
    import asyncssh.connection

    tag = f"{sys.implementation.cache_tag}.opt-{optlevel.CACHE_LEVEL}"
    source = Path(asyncssh.connection.__file__)
    plain = Path(str(prefix) + str(source.with_name(f"connection.{tag}.pyc")))
    plain.parent.mkdir(parents=True)
    plain.write_bytes(b"written before asyncssh was postponed")
    for _ in range(2):  # compiled, then loaded from the files written
        done = subprocess.run(
            [sys.executable, "-c", POSTPONED_PROBE, str(tmp_path / "mods")],
            capture_output=True, text=True, env=cached_env(prefix), timeout=60, check=True,
        )  # fmt: skip
        shown = done.stdout.splitlines()
        assert shown[:2] == ["True", "['str']"]
        wait, cached = shown[2].split(" ")
        assert wait == "'Optional[str]'"
        assert cached.endswith(f".opt-{optlevel.POSTPONED_LEVEL}.pyc") and Path(cached).exists()
        assert shown[3] == "{'x': typing.Optional[int], 'return': typing.List[int]}"
        assert shown[4] == "True True"
    assert not plain.exists()  # its plain file of this format went when this one was written
    assert optlevel.cache_level("asyncssh") == optlevel.POSTPONED_LEVEL
    assert optlevel.cache_level("asyncssh.connection") == optlevel.POSTPONED_LEVEL
    assert optlevel.cache_level("asyncssh_other") == optlevel.CACHE_LEVEL
    assert optlevel.cache_level("tunnel.backends.asyncssh_link") == optlevel.CACHE_LEVEL
    assert optlevel.POSTPONED_LEVEL.isalnum() and optlevel.POSTPONED_LEVEL != "2"


#: Names through which code reads or evaluates annotations (or builds classes from them).
READS_ANNOTATIONS = frozenset({
    "get_type_hints", "get_annotations", "eval_str", "singledispatch", "singledispatchmethod",
    "dataclass", "dataclasses", "TypedDict", "annotationlib", "__annotate__", "annotation",
})  # fmt: skip


def annotation_reads(source: str) -> list[int]:
    """Lines of ``source`` that read annotations: a name or attribute of
    :data:`READS_ANNOTATIONS`, or ``__annotations__`` (an attribute or a string) used for
    anything but its keys (``X.__annotations__.keys()``,
    ``ns.get('__annotations__', {}).keys()``: asyncssh's Record)."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def keys_of(node: ast.AST) -> bool:
        above = parents.get(node)
        return isinstance(above, ast.Attribute) and above.attr == "keys"

    lines = []
    for node in ast.walk(tree):
        if (
            (isinstance(node, ast.Name) and node.id in READS_ANNOTATIONS)
            or (isinstance(node, ast.Attribute) and node.attr in READS_ANNOTATIONS)
            or (isinstance(node, ast.alias) and node.name.split(".")[-1] in READS_ANNOTATIONS)
        ):
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "__annotations__":
            if not keys_of(node):
                lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and node.value == "__annotations__":
            call = parents.get(node)
            if not (isinstance(call, ast.Call) and keys_of(call)):
                lines.append(node.lineno)
    return sorted(set(lines))


def test_the_annotation_reads_scan() -> None:
    assert annotation_reads("fields = cls.__annotations__.keys()\n") == []
    assert annotation_reads("f = ns.get('__annotations__', {}).keys()\n") == []
    assert annotation_reads("f = cls.__annotations__\n") == [1]
    assert annotation_reads("x = 1\nf = ns.get('__annotations__', {})\n") == [2]
    assert annotation_reads("import typing\nh = typing.get_type_hints(f)\n") == [2]
    assert annotation_reads("from inspect import get_annotations\n") == [1]
    assert annotation_reads("p = sig.parameters['x'].annotation\n") == [1]
    assert annotation_reads("class T(TypedDict):\n    a: int\n") == [1]


def test_nothing_in_asyncssh_evaluates_its_annotations() -> None:
    """The tripwire for an asyncssh upgrade: postponed annotations are safe only while
    asyncssh reads nothing of them but their names (misc.Record)."""
    import asyncssh

    root = Path(asyncssh.__file__).parent
    uses: list[str] = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        found = annotation_reads(text)
        lines = text.splitlines()
        uses += [f"{path.relative_to(root)}:{n}: {lines[n - 1].strip()}" for n in found]
    assert uses == []


def test_bytecode_is_usable_where_it_is_or_can_be_written(
    tmp_path: Path, in_child: ChildRunner
) -> None:
    present = tmp_path / "present.opt-2.pyc"
    present.write_bytes(b"")
    assert optlevel.writable_or_present(str(present), dont_write=True)
    absent = tmp_path / "prefix" / "deep" / "__pycache__" / "m.cpython-311.opt-2.pyc"
    assert not optlevel.writable_or_present(str(absent), dont_write=True)
    assert optlevel.writable_or_present(str(absent), dont_write=False)
    (tmp_path / "afile").write_text("")
    assert not optlevel.writable_or_present(str(tmp_path / "afile" / "m.pyc"), dont_write=False)
    # Another user's directory: only its owner may write there (a directory under /tmp, as
    # pytest's own are not open to other users).
    shared = Path(tempfile.mkdtemp())
    try:
        shared.chmod(0o755)
        (shared / "locked").mkdir(mode=0o755)
        (shared / "open").mkdir()
        (shared / "open").chmod(0o777)

        def as_nobody() -> None:
            os.setgid(65534)
            os.setuid(65534)
            assert not optlevel.writable_or_present(str(shared / "locked" / "m.pyc"), False)
            assert optlevel.writable_or_present(str(shared / "open" / "a" / "m.pyc"), False)

        in_child(as_nobody)
    finally:
        shutil.rmtree(shared)


def test_the_daemon_runs_at_OO_and_reaches_link_up(sshd: Sshd, tmp_path: Path) -> None:
    """The real `blitzdns run` script against sshd: its modules loaded as at -OO in the one
    process, their .opt-2lines1.pyc kept beside the bytecode; the CLI's help still has its
    docstrings."""
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line())
    (tmp_path / "ssh_config").write_text("")
    config = tmp_path / "config.toml"
    config.write_text(
        f'preset = "none"\n[dns]\nlisten = ["127.0.0.1:{free_port()}"]\n'
        f'upstreams = ["127.0.0.1:{free_port()}"]\n'
        f'[tunnel]\ngateways = ["{sshd.user}@127.0.0.1:{sshd.port}"]\n'
        f'mouths = "127.79.0.0/24"\nknown_hosts = "{known}"\n'
        f'identity_files = ["{sshd.client_key}"]\nssh_config = "{tmp_path / "ssh_config"}"\n'
        f"[services]\nsvc = {{ port = {free_port()}, remote_port = 9 }}\n"
        '[hosts.alpha]\nnames = ["alpha.example.test"]\nservices = ["svc"]\n'
        'remote = "127.0.0.1"\n'
    )
    prefix = tmp_path / "pycache"
    env = cached_env(prefix)
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [BLITZDNS, "run", "--config", str(config), "--control-socket", str(tmp_path / "c")],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
        )  # fmt: skip
    try:
        wait_for(
            lambda: daemon.poll() is not None or "link up via" in log.read_text(),
            lambda: f"link up: {log.read_text()[-3000:]}",
            timeout=90,
        )
        assert daemon.poll() is None, log.read_text()
        cmdline = Path(f"/proc/{daemon.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert [arg.decode() for arg in cmdline] == [
            sys.executable,
            BLITZDNS,
            "run",
            "--config",
            str(config),
            "--control-socket",
            str(tmp_path / "c"),
        ]  # fmt: skip  (one interpreter: no start again at -OO)
        assert Path(f"/proc/{daemon.pid}/comm").read_text() == "blitzdns\n"
        # Nor ssl, nor libssl (tunnel.nossl), nor libcrypto (blitzdns.nohashlib).
        maps = Path(f"/proc/{daemon.pid}/maps").read_text()
        assert "libssl" not in maps and "/_ssl." not in maps and "libcrypto" not in maps
        assert "_rust.abi3.so" in maps  # the control: cryptography's own OpenSSL
        assert list(prefix.rglob(f"asyncssh/connection.*.opt-{optlevel.POSTPONED_LEVEL}.pyc"))
        assert list(prefix.rglob(f"tunnel/tunnel.*.opt-{optlevel.CACHE_LEVEL}.pyc"))
        assert not list(prefix.rglob(f"asyncssh/connection.{sys.implementation.cache_tag}.pyc"))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    # The other commands keep their docstrings: the exit codes page is made of them.
    shown = subprocess.run(
        [BLITZDNS, "help", "exit-codes"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert "the configuration is invalid" in shown.stdout, shown
