"""Host key policy: known_hosts is always checked; unknown and changed keys are told apart.

asyncssh reports both cases as one ``HostKeyNotVerifiable``; OpenSSH users know them as two
very different situations ("The authenticity of host … can't be established" versus
"WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!"), so :class:`HostKeyPolicy` looks the
presented key up itself and raises the matching error with the fingerprint and the exact
command that would change the outcome.
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

from tunnel.errors import HostKeyChanged, HostKeyUnknown, TunnelError
from tunnel.sshlib import asyncssh

log = logging.getLogger("tunnel.hostkeys")

GLOBAL_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
DEFAULT_PORT = 22

_KEYSCAN_TYPES = {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa", "ssh-dss": "dsa"}


def default_known_hosts() -> Path:
    """``~/.ssh/known_hosts`` of the current ``$HOME`` (after a privilege drop, the user's)."""
    return Path("~", ".ssh", "known_hosts").expanduser()


def host_pattern(host: str, port: int) -> str:
    """The known_hosts name of ``host:port`` (``[host]:port`` unless the port is 22)."""
    return host if port == DEFAULT_PORT else f"[{host}]:{port}"


def keyscan_type(algorithm: str) -> str:
    """The ``ssh-keyscan -t`` name of a key algorithm."""
    if algorithm.startswith("ecdsa-"):
        return "ecdsa"
    return _KEYSCAN_TYPES.get(algorithm, algorithm)


def keyscan_command(host: str, port: int, known_hosts: Path, key_type: str | None = None) -> str:
    """The command that records ``host``'s key in ``known_hosts`` (check it first!)."""
    port_flag = "" if port == DEFAULT_PORT else f"-p {port} "
    type_flag = f"-t {key_type} " if key_type else ""
    return (
        f"ssh-keyscan {port_flag}{type_flag}{shlex.quote(host)} >> {shlex.quote(str(known_hosts))}"
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        log.warning("cannot read known_hosts %s: %s", path, exc)
        return ""


class HostKeyPolicy:
    """The known_hosts view of one connection attempt, plus the verdict on the key shown.

    Re-read on every attempt so a key added meanwhile (``ssh-keyscan``, ``ssh``) counts.
    """

    def __init__(self, known_hosts: Path | None, *, trust_new: bool) -> None:
        self.path = known_hosts if known_hosts is not None else default_known_hosts()
        text = _read(self.path)
        if known_hosts is None:
            text += "\n" + _read(GLOBAL_KNOWN_HOSTS)
        self.known = asyncssh.import_known_hosts(text)
        self.trust_new = trust_new
        self.verdict: TunnelError | None = None

    def judge(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        """Decide on a key asyncssh found no trusted match for; True accepts it.

        Sets :attr:`verdict` to the error to raise when the key is refused.
        """
        keys, ca_keys, *_ = self.known.match(host, addr, None if port == DEFAULT_PORT else port)
        algorithm = key.get_algorithm()
        fingerprint = key.get_fingerprint("sha256")
        name = host_pattern(host, port)
        if keys or ca_keys:
            recorded = ", ".join(sorted({k.get_algorithm() for k in keys})) or "a CA key"
            remove = f"ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(str(self.path))}"
            self.verdict = HostKeyChanged(
                f"HOST KEY OF GATEWAY {name} HAS CHANGED: it now presents {algorithm} "
                f"{fingerprint} but {self.path} trusts another ({recorded}). Someone may be "
                f"intercepting the connection; refusing. If the gateway's key really was "
                f"replaced, remove the old entry with `{remove}` and connect again.",
                host=host,
                port=port,
                key_type=algorithm,
                fingerprint=fingerprint,
            )
            return False
        if self.trust_new:
            log.warning(
                "trusting new host key of %s: %s %s (recorded in %s)",
                name,
                algorithm,
                fingerprint,
                self.path,
            )
            self.record(name, key)
            return True
        keyscan = keyscan_command(host, port, self.path, keyscan_type(algorithm))
        self.verdict = HostKeyUnknown(
            f"host key of gateway {name} is unknown: {algorithm} {fingerprint}. If that is "
            f"the gateway's key, trust it with --trust-new-host-key (e.g. `blitzdns run "
            f"--trust-new-host-key`) or `{keyscan}`.",
            host=host,
            port=port,
            key_type=algorithm,
            fingerprint=fingerprint,
        )
        return False

    def record(self, name: str, key: asyncssh.SSHKey) -> None:
        """Append ``name key`` to the known_hosts file (creating ~/.ssh 0700 if needed)."""
        public = key.export_public_key("openssh").decode("ascii").split()
        line = f"{name} {public[0]} {public[1]}\n"
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="ascii") as out:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = "\n" + line
                out.write(line)
        except OSError as exc:
            log.error("could not record host key of %s in %s: %s", name, self.path, exc)
