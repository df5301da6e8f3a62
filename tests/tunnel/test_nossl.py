"""`blitzdns run` without ssl (tunnel.nossl): asyncio and uvloop import with the
placeholder and carry plain connections; any TLS use fails loudly."""

from __future__ import annotations

import ssl
import subprocess
import sys

import pytest

from tunnel import nossl
from tunnel.nosftp import NotLoaded


def test_the_placeholder_s_names_are_the_real_module_s() -> None:
    for name in nossl.NAMES:
        assert isinstance(getattr(ssl, name), type), name
    for name, value in nossl.CONSTANTS.items():
        assert getattr(ssl, name) == value, name


def test_a_placeholder_used_for_real_fails_loudly() -> None:
    placeholder = nossl.NoSSL()
    with pytest.raises(NotLoaded, match="ssl is not loaded"):
        placeholder.SSLContext()
    with pytest.raises(NotLoaded, match="ssl is not loaded"):
        placeholder.create_default_context()
    with pytest.raises(NotLoaded, match=r"ssl\.wrap_socket"):
        _ = placeholder.wrap_socket
    with pytest.raises(NotLoaded):
        _ = placeholder.PROTOCOL_TLS_CLIENT
    assert not isinstance(object(), placeholder.SSLSocket)  # what asyncio asks of a socket
    try:
        raise OSError("plain")
    except placeholder.SSLError:  # never matches: no such error can be raised
        pytest.fail("a placeholder matched")
    except OSError:
        pass
    with pytest.raises(AttributeError):
        _ = placeholder.__path__


def test_a_library_probing_the_placeholder_takes_its_no_ssl_path() -> None:
    placeholder = nossl.NoSSL()
    # hasattr swallows only AttributeError: a probe must not crash the importer.
    assert not hasattr(placeholder, "HAS_SNI")
    assert getattr(placeholder, "OP_NO_TLSv1", None) is None
    assert hasattr(placeholder, "SSLContext")  # what asyncio reads is still there
    with pytest.raises(NotLoaded, match=r"ssl\.HAS_SNI: ssl is not loaded") as caught:
        _ = placeholder.HAS_SNI  # a real use still fails with the clear message
    assert isinstance(caught.value, AttributeError) and caught.value.name == "HAS_SNI"


def test_the_real_module_is_left_where_it_is_loaded() -> None:
    assert "ssl" in sys.modules
    assert not nossl.start()
    assert sys.modules["ssl"] is ssl and not nossl.in_force()


#: In a fresh interpreter: the placeholder before asyncio, then both loops carry a plain
#: connection and refuse TLS loudly; prints what was loaded.
PROBE = """
import sys
from tunnel import nossl
assert nossl.start() and nossl.in_force()
import asyncio, uvloop
import tunnel.backends.asyncssh_link  # asyncssh and cryptography import with it
from tunnel.nosftp import NotLoaded

async def echo(reader, writer):
    writer.write(await reader.readline())
    await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"plain\\n")
    line = await reader.readline()
    writer.close()
    try:
        await asyncio.open_connection("127.0.0.1", port, ssl=True)
        refused = "no"
    except NotLoaded as exc:
        refused = str(exc)
    server.close()
    return line, refused

for runner in (asyncio.run, uvloop.run):
    line, refused = runner(main())
    assert line == b"plain\\n", line
    assert "ssl is not loaded" in refused, refused
maps = open("/proc/self/maps").read()
print(type(sys.modules["ssl"]).__name__, "_ssl" in sys.modules, "libssl" in maps)
"""


def test_asyncio_and_uvloop_run_with_the_placeholder_and_refuse_tls() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["NoSSL", "False", "False"]
