"""rsync daemon targets in the config: how ``[user@]host::module[/dir]``
and ``rsync://[user@]host[:port]/module[/dir]`` are read (rsync's own
rules), and the checks on the password file rsync would otherwise refuse at
every transfer. Kept apart from :mod:`syncsup.config`, which calls it."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from syncsup.config import ConfigError, Target
from syncsup.privilege import can_access

__all__ = ["check_password_file", "daemon_target", "rsync_url"]

_MODULE_RE = re.compile(r"[^/\\\x00-\x1f\x7f]+")


def daemon_target(spec: str, key: str, login: str, rest: str, port: int | None) -> Target:
    """A target of an rsync daemon: ``login`` is ``[user@]host``, ``rest``
    ``module[/path]`` (any leading slash removed)."""
    user, _, host = login.rpartition("@")
    if not host or host.startswith("-") or (user and user.startswith("-")):
        raise ConfigError(key, f"bad host in {spec!r}")
    if ":" in user:
        raise ConfigError(key, "a password does not belong in the target: put it in a file "
                          "named by [sync.rsyncd] password_file")
    module, _, path = rest.partition("/")
    if not module or not _MODULE_RE.fullmatch(module) or module.startswith("-"):
        raise ConfigError(key, f"missing or bad module name in {spec!r}: write "
                          "host::module or rsync://host/module")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ConfigError(key, f"'..' in the path inside the module: {spec!r}")
    return Target(spec=spec, path="/".join(parts), host=host, user=user or None,
                  module=module, port=port)


def rsync_url(spec: str, key: str) -> Target:
    """``rsync://[user@]host[:port]/module[/path]``, as rsync reads it."""
    rest = spec[len("rsync://"):]
    authority, slash, path = rest.partition("/")
    if not slash:
        raise ConfigError(key, f"missing module in {spec!r}: write rsync://host/module")
    login, _, hostport = authority.rpartition("@")
    port: int | None = None
    if hostport.startswith("["):  # an IPv6 address: [addr] or [addr]:port
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ConfigError(key, f"bad host in {spec!r}")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text_ = hostport.partition(":")
        port_text = port_text_ if colon else None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(key, f"bad port in {spec!r}: 1-65535")
        port = int(port_text)
    return daemon_target(spec, key, f"{login}@{host}" if login else host, path, port)


def check_password_file(path: Path, key: str) -> None:
    """Refuse a password file rsync would refuse at every transfer (it
    checks the file the same way), or could not read at all."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(key, f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(key, f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(key, f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(key, f"{path} is accessible by group or other users (mode "
                          f"{stat.S_IMODE(st.st_mode):o}); rsync refuses it: chmod 600 it")
    if os.geteuid() == 0 and st.st_uid != 0:
        raise ConfigError(key, f"{path} belongs to uid {st.st_uid}; running as root, rsync "
                          "refuses a password file not owned by root")
    # by capability too: the unit's service user reads root's 0600 file
    if not can_access(path, os.R_OK):
        raise ConfigError(key, f"{path}: permission denied")
