"""`blitzdns run` loads asyncssh without its file-transfer modules (tunnel.nosftp).

The placeholders are loud (making, calling or looking into one raises, naming the module);
an asyncssh that takes another name from them, or does not import with them, is imported
in full with a warning; the CLI and in-process users get asyncssh whole.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tunnel import nosftp

#: As `blitzdns run` starts (blitzdns.entry), with run_main standing for the daemon: the
#: link's code loads, the start ends (blitzdns.daemon.end_of_start); what is loaded then.
RUN = """
import json, sys
import blitzdns.daemon

def run_main(argv):
    import tunnel.backends.asyncssh_link
    from tunnel import nosftp
    in_force = nosftp.in_force()
    blitzdns.daemon.end_of_start()
    import asyncssh
    try:
        asyncssh.scp("a", "b")
    except nosftp.NotLoaded as error:
        refused = str(error)
    print(json.dumps({
        "left_out": [m for m in nosftp.LEFT_OUT if nosftp.left_out(m)],
        "in_force": [in_force, nosftp.in_force()],
        "connection": type(sys.modules["asyncssh.connection"]).__name__,
        "refused": refused,
    }))
    return 0

blitzdns.daemon.run_main = run_main
from blitzdns.entry import main
main(sys.argv[1:])
"""


def test_run_leaves_sftp_and_scp_out_until_the_link_is_loaded() -> None:
    out = subprocess.run(
        [sys.executable, "-c", RUN, "run"], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["left_out"] == [
        "asyncssh.sftp",
        "asyncssh.scp",
        "asyncssh.editor",
        "asyncssh.server",
        "asyncssh.subprocess",
    ]
    assert seen["in_force"] == [True, False]
    assert seen["connection"] == "module"
    assert seen["refused"] == "asyncssh.scp.scp: asyncssh.scp is not loaded"


def test_the_cli_and_others_get_asyncssh_whole() -> None:
    code = "import sys, tunnel.sshlib\nprint(type(sys.modules['asyncssh.sftp']).__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "module"


#: asyncssh imported under placeholders whose known names are ``sys.argv[1:]``.
FALLBACK = """
import logging, sys
logging.basicConfig(format="%(levelname)s %(message)s")
from tunnel import nosftp
nosftp.TAKEN = frozenset(sys.argv[1:])
nosftp.start()
import tunnel.sshlib
import asyncssh
print(type(sys.modules["asyncssh.sftp"]).__name__, nosftp.in_force(), asyncssh.SFTPClient)
"""


def test_an_asyncssh_taking_another_name_is_imported_in_full() -> None:
    taken = sorted(nosftp.TAKEN - {"SFTPServer"})  # as if a version took one unknown name
    out = subprocess.run(
        [sys.executable, "-c", FALLBACK, *taken],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["module", "False"]
    assert "<class 'asyncssh.sftp.SFTPClient'>" in out.stdout
    assert "WARNING asyncssh did not import without asyncssh.sftp and asyncssh.scp" in out.stderr
    assert "SFTPServer" in out.stderr


def test_a_placeholder_cannot_be_made_called_or_looked_into() -> None:
    nosftp.start(("nosftp_probe",))
    try:
        import nosftp_probe  # type: ignore[import-not-found]

        assert nosftp.left_out("nosftp_probe")
        sftp_client = nosftp_probe.SFTPClient  # asked from here: only a known name
        with pytest.raises(AttributeError, match="takes Unknown from nosftp_probe"):
            _ = nosftp_probe.Unknown
        with pytest.raises(nosftp.NotLoaded, match=r"nosftp_probe\.SFTPClient: nosftp_probe"):
            sftp_client()
        with pytest.raises(AttributeError, match="nosftp_probe is not loaded"):
            _ = sftp_client.open
        assert not isinstance(ValueError(), sftp_client)
        try:
            raise ValueError("through an except that names a placeholder")
        except sftp_client:
            pytest.fail("a placeholder matched")
        except ValueError:
            pass

        class Sub(sftp_client):  # type: ignore[misc,valid-type]
            pass

        with pytest.raises(nosftp.NotLoaded):
            Sub()
    finally:
        nosftp.finish()
        sys.modules.pop("nosftp_probe", None)
    assert not nosftp.in_force()
