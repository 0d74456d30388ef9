"""The configuration contract: TOML in, frozen dataclasses out.

Everything a component needs is derived here once, so the supervisor and
each child (which re-reads the same file) agree. Any problem raises
:class:`ConfigError` naming the offending key; the CLI prints it as one line
and exits 78 (EX_CONFIG), which the supervisor never restarts.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import re
import stat
import sys
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from syncsup import config_keys
from syncsup.paths import is_within
from syncsup.privilege import SERVICE_USER, can_access, service_uid
from syncsup.timings import TimingError, Timings

__all__ = [
    "EX_CONFIG",
    "Commands",
    "Config",
    "ConfigError",
    "RsyncOptions",
    "RsyncdOptions",
    "Settings",
    "SshOptions",
    "Sync",
    "Target",
    "Timings",
    "check_output_files",
    "check_private",
    "check_sources",
    "default_max_processes",
    "default_state_dir",
    "load",
    "load_for_child",
    "parse_target",
    "read_rule_file",
    "rule_file_lines",
    "valid_name",
]

EX_CONFIG = 78  # sysexits' EX_CONFIG: a config error, never restarted


class Mode(StrEnum):
    """How a sync reaches its targets (see docs/config.md)."""

    RSYNC = "rsync"
    RSYNCSSH = "rsyncssh"
    DIRECT = "direct"
    COMMAND = "command"


MODES = tuple(m.value for m in Mode)
AGENT_MAX_SIZE_LIMIT = 4 * 1024 * 1024  # a file travels in one agent frame
LOG_LEVELS = ("debug", "info", "warning", "error")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """A config problem; ``key`` is the dotted key, ``args[0]`` the message."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


def default_max_processes(cpus: int | None) -> int:
    """The cap on transfers at once when the config sets none: four per CPU,
    at most 16.

    Without a cap every target runs its transfer at once, so memory grows
    with the number of targets (100 local targets: 100 rsyncs of three
    processes each, about 500 MB to 1 GB) for no gain in speed: the CPUs
    are the limit. A local rsync is three processes passing data along a
    pipeline, each waiting on the others part of the time, so about four
    per core keep the cores busy: with 100 local targets on two cores, 8 at
    once used the same CPU time as 100 at once in a quarter to half of the
    memory, and 4 at once took about twice as long (the fan-out benchmark,
    docs/benchmarks.md). The ceiling keeps the peak
    memory predictable on large machines (docs/config.md states it);
    ``max_processes`` raises it where the memory is there."""
    return min(16, 4 * max(1, cpus or 1))


@dataclass(frozen=True)
class Settings:
    """``[settings]``: where the daemon keeps its state, how it logs, and the
    global cap on concurrent transfers (0: no cap; the parser's default is
    :func:`default_max_processes`)."""

    state_dir: Path
    log_level: str = "info"
    max_processes: int = 0
    log_file: Path | None = None
    log_format: str = "text"
    metrics: str | None = None
    status_file: Path | None = None
    status_interval: float = 10.0
    strict_rsync: bool = False


@dataclass(frozen=True)
class SshOptions:
    """``[sync.ssh]``: how rsync reaches remote targets."""

    port: int | None = None
    identity_file: Path | None = None
    options: tuple[str, ...] = ()
    confined: bool = False  # default for this sync's remote targets
    # What runs the agent on a target whose key is not confined (a key that
    # is confined runs syncsup-target whatever the client asks for).
    target_command: str = "syncsup-target"
    # Seconds an agent session may sit with nothing to do before it is
    # closed (0: never); the next batch opens a new one over the master.
    agent_idle: float = 60.0
    # Seconds the ssh master connection of a target may sit unused (no
    # batch) before it is closed (0: never); the next batch opens another.
    # At least agent_idle: the agent's session runs over it.
    master_idle: float = 300.0


@dataclass(frozen=True)
class RsyncOptions:
    """``[sync.rsync]``: how rsync is run. ``timeout`` (seconds, 0: none) is
    passed to rsync as ``--timeout`` and also bounds a transfer that makes no
    progress at all (no byte read or written by its processes, e.g. a
    stopped rsync or a dead network), which the syncer then kills."""

    binary: str = "rsync"
    archive: bool = True
    compress: bool = False
    checksum: bool = False
    bwlimit: str | None = None
    chown: str | None = None
    chmod: str | None = None
    usermap: str | None = None
    groupmap: str | None = None
    extra: tuple[str, ...] = ()
    timeout: int = 300


@dataclass(frozen=True)
class RsyncdOptions:
    """``[sync.rsyncd]``: how rsync reaches the sync's rsync daemon targets
    (``host::module``, ``rsync://host/module``). The password is only ever
    read by rsync itself from ``password_file`` (``--password-file``): never
    on a command line or in an environment that could be logged."""

    password_file: Path | None = None
    port: int | None = None


@dataclass(frozen=True)
class Commands:
    """Command mode: argv templates per change kind, or a Python action."""

    on_create: tuple[str, ...] = ()
    on_modify: tuple[str, ...] = ()
    on_delete: tuple[str, ...] = ()
    on_move: tuple[str, ...] = ()
    on_startup: tuple[str, ...] = ()
    action: str | None = None


@dataclass(frozen=True)
class Target:
    """One destination. ``host`` is None for a local path.

    ``spec`` is the string as written (shown in status); ``path`` the
    directory on the target host; ``user`` the ssh login, if given.
    ``confined``: the key reaches the host only through ``syncsup-target``
    (its forced command), so transfers use rsync's daemon mode over ssh and
    renames go through syncsup's agent; ``path`` must then be the forced
    command's ROOT.

    ``module`` is set for a target served by an rsync daemon
    (``[user@]host::module[/path]`` or ``rsync://[user@]host[:port]/module[/path]``):
    rsync talks to the daemon directly over TCP (``port``, None: rsync's
    873), with no ssh, no agent and no rename replay; ``path`` is then the
    directory inside the module ("" for its top) and ``user`` the daemon's
    ``auth users`` name.
    """

    spec: str
    path: str
    host: str | None = None
    user: str | None = None
    confined: bool = False
    module: str | None = None
    port: int | None = None
    relay: bool = False

    @property
    def is_remote(self) -> bool:
        return self.host is not None

    @property
    def is_daemon(self) -> bool:
        """Served by an rsync daemon over TCP (not reached through ssh)."""
        return self.module is not None

    @property
    def over_ssh(self) -> bool:
        """Reached through ssh: a remote target that is not an rsync daemon's."""
        return self.host is not None and self.module is None

    @property
    def login(self) -> str:
        """``user@host`` (or ``host``) for ssh; only for remote targets."""
        assert self.host is not None, "a local target has no login"
        return f"{self.user}@{self.host}" if self.user else self.host

    def rsync_dest(self) -> str:
        """The destination argument for rsync, always ending in ``/``: a
        local path, ``login:/path/``, for a confined target the module
        that ``syncsup-target`` serves, ``login::syncsup/``, and for an rsync
        daemon's target always the URL form (it carries a port, and an IPv6
        address in brackets), ``rsync://login[:port]/module/path/``."""
        if self.host is None:
            return self.path.rstrip("/") + "/"
        if self.module is not None:
            host = f"[{self.host}]" if ":" in self.host else self.host
            login = f"{self.user}@{host}" if self.user else host
            port = f":{self.port}" if self.port is not None else ""
            path = f"{self.module}/{self.path}".rstrip("/")
            return f"rsync://{login}{port}/{path}/"
        if self.confined:
            return f"{self.login}::syncsup/"
        return f"{self.login}:{self.path.rstrip('/')}/"


@dataclass(frozen=True)
class Sync:
    """One ``[[sync]]`` block: a source tree mirrored to its targets."""

    name: str
    source: Path
    targets: tuple[Target, ...]
    mode: Mode = Mode.RSYNC
    delay: float = 1.0
    delete: bool | str = True
    init: bool = True
    max_delays: int = 1000
    max_delete: int = 0
    full_sync_interval: float = 0.0
    startup_checksum: bool = False
    agent_max_size: int = 1024 * 1024
    exclude: tuple[str, ...] = ()
    exclude_from: Path | None = None
    filter: tuple[str, ...] = ()
    filter_from: Path | None = None
    ssh: SshOptions = SshOptions()
    rsync: RsyncOptions = RsyncOptions()
    rsyncd: RsyncdOptions = RsyncdOptions()
    commands: Commands = Commands()

    @property
    def moves_on_target(self) -> bool:
        """Modes that replay renames on the target instead of resending."""
        return self.mode in (Mode.RSYNCSSH, Mode.DIRECT)

    def deletes(self, startup: bool) -> bool:
        """Are deletions mirrored in a batch (``startup``: of the initial
        sync)? ``delete`` is true, false, or says which of the two: the one
        rule rsync's ``--delete`` and the agent's deletes both follow."""
        return self.delete is True or self.delete == ("startup" if startup else "running")

    @property
    def runs_commands(self) -> bool:
        """Command mode: changes go to the user's actions, not to rsync."""
        return self.mode is Mode.COMMAND

    @property
    def records_moves(self) -> bool:
        """Modes whose journal keeps renames (replayed, or reported to on_move)."""
        return self.moves_on_target or self.runs_commands


@dataclass(frozen=True)
class Config:
    """The whole file. ``path`` is the absolute path it was read from."""

    path: Path
    settings: Settings
    syncs: tuple[Sync, ...]
    timings: Timings = dataclasses.field(default_factory=Timings)

    def sync(self, name: str) -> Sync:
        for s in self.syncs:
            if s.name == name:
                return s
        raise KeyError(name)


_BRACKETED_DAEMON = re.compile(r"([^/\[\]]*@)?\[([0-9A-Za-z:.%]+)\]::(.*)", re.DOTALL)


def parse_target(spec: str, key: str, base: Path) -> Target:
    """Split ``[user@]host:/path`` from a local path, rsync's way: a colon
    before the first slash means remote, and two of them
    (``[user@]host::module[/path]``), or an ``rsync://`` URL, an rsync
    daemon's module. Local paths resolve against the config file's folder."""
    from syncsup.config_rsyncd import daemon_target, rsync_url  # it needs Target

    if not spec:
        raise ConfigError(key, "must not be empty")
    if "\0" in spec or "\n" in spec:
        raise ConfigError(key, "must not contain NUL or newline")
    if spec.startswith("rsync://"):
        return rsync_url(spec, key)
    v6 = _BRACKETED_DAEMON.fullmatch(spec)
    if v6 is not None:  # [user@][v6addr]::module: the colons inside brackets are the host's
        return daemon_target(spec, key, (v6[1] or "") + v6[2], v6[3].lstrip("/"), None)
    colon, slash = spec.find(":"), spec.find("/")
    if colon > 0 and (slash < 0 or colon < slash):
        login, path = spec[:colon], spec[colon + 1 :]
        if path.startswith(":"):
            return daemon_target(spec, key, login, path[1:].lstrip("/"), None)
        user, _, host = login.rpartition("@")
        if not host or host.startswith("-") or (user and user.startswith("-")):
            raise ConfigError(key, f"bad host in {spec!r}")
        if not path:
            raise ConfigError(key, f"missing path after ':' in {spec!r}")
        if path.startswith("-"):
            raise ConfigError(key, f"a remote path must not start with '-': {spec!r}")
        return Target(spec=spec, path=path, host=host, user=user or None)
    return Target(spec=spec, path=str((base / spec).resolve()))


def _pop(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str,
         default: Any = ..., ) -> Any:
    full = f"{where}.{key}" if where else key
    if key not in table:
        if default is ...:
            raise ConfigError(full, "is required")
        return default
    value = table.pop(key)
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ConfigError(full, f"must be a {getattr(kind, '__name__', 'number')}, not a boolean")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(full, f"must be of type {names}, got {type(value).__name__}")
    if isinstance(value, str) and "\0" in value:
        raise ConfigError(full, "must not contain a NUL character")
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str) and "\0" in item:
                raise ConfigError(f"{full}[{i}]", "must not contain a NUL character")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        raise ConfigError(full, "is out of range")
    return value


def _default(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls``: defaults are
    written once, on the dataclasses, and the parser takes them from there."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _known(table: dict[str, Any], section: str, where: str) -> None:
    """Refuse a key that ``syncsup.config_keys`` does not list for
    ``section``: the parser reads only documented keys."""
    known = config_keys.names(section)
    for key in sorted(table):
        if key not in known:
            raise ConfigError(f"{where}.{key}", config_keys.unknown_key_hint(section, key))


def _no_extra(table: dict[str, Any], where: str) -> None:
    if table:
        key = sorted(table)[0]
        raise ConfigError(f"{where}.{key}" if where else key, "unknown key")


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, "must be a list of strings")
    for i, v in enumerate(value):
        if "\0" in v:
            raise ConfigError(f"{key}[{i}]", "must not contain a NUL character")
    return tuple(value)


def default_state_dir(name: str) -> Path:
    """Where the state of the config called ``name`` goes when it does not
    say: ``/var/lib/syncsup/NAME`` for root, and for the systemd unit's
    service user (systemd names that directory in ``$STATE_DIRECTORY``, its
    ``StateDirectory=syncsup/%i``), so that root's ``syncsup status`` finds
    the service's daemon where it looks for its own; else under the user's
    ``$XDG_STATE_HOME`` (``~/.local/state``). Short on purpose: unix socket
    paths inside it are limited to 107 bytes."""
    if os.geteuid() == 0:
        return Path("/var/lib/syncsup") / name
    for given in os.environ.get("STATE_DIRECTORY", "").split(":"):
        if given and Path(given) == Path("/var/lib/syncsup") / name:
            return Path(given)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "syncsup" / name


def valid_name(name: str) -> bool:
    """A sync name: 1-64 letters, digits, ``.``, ``_`` or ``-``, not starting
    with a punctuation character (it names files in ``state_dir``)."""
    return _NAME_RE.fullmatch(name) is not None


def _opt_str(table: dict[str, Any], key: str, where: str) -> str | None:
    value = _pop(table, key, str, where, None)
    if value is not None and (not value or "\0" in value or "\n" in value):
        raise ConfigError(f"{where}.{key}", "must be a non-empty single-line string")
    assert value is None or isinstance(value, str)
    return value


def _opt_path(table: dict[str, Any], key: str, where: str, base: Path) -> Path | None:
    value = _opt_str(table, key, where)
    return (base / value).resolve() if value else None


def _opt_file(table: dict[str, Any], key: str, where: str, base: Path) -> Path | None:
    """A file the daemon writes (``status_file``, ``log_file``): its directory
    is resolved, its own name is not. Resolving the name too would follow a
    symlink planted there by whoever can write the directory, and the root
    daemon would then replace or append to the file it points to."""
    value = _opt_str(table, key, where)
    if not value:
        return None
    path = base / value
    if path.name in ("", ".", ".."):
        raise ConfigError(f"{where}.{key}", "must name a file")
    return path.parent.resolve() / path.name


def _unfollowed(path: Path) -> Path:
    """``path`` absolute and normalized, its parent resolved and its last
    name kept as it is (a symlink there stays visible as one)."""
    path = Path(os.path.normpath(path))
    return path if path.parent == path else path.parent.resolve() / path.name


def _parse_ssh(raw: Any, where: str, base: Path) -> tuple[SshOptions, str | None, str | None]:
    """``[sync.ssh]``; also returns its ``host`` and ``user`` (used to turn
    plain target paths into remote ones)."""
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a table")
    table = dict(raw)
    _known(table, "sync.ssh", where)
    host = _opt_str(table, "host", where)
    user = _opt_str(table, "user", where)
    for key, val in (("host", host), ("user", user)):
        if val and (val.startswith("-") or any(c in val for c in " @:/'\"")):
            raise ConfigError(f"{where}.{key}", f"invalid {key} {val!r}")
    port = _pop(table, "port", int, where, _default(SshOptions, "port"))
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"{where}.port", "must be between 1 and 65535")
    ident = _opt_path(table, "identity_file", where, base)
    confined = _pop(table, "confined", bool, where, _default(SshOptions, "confined"))
    target_command = _pop(table, "target_command", str, where,
                          _default(SshOptions, "target_command"))
    if not target_command or any(c in target_command for c in "\0\n"):
        raise ConfigError(f"{where}.target_command", "must be a command (a path or a name)")
    agent_idle = _pop(table, "agent_idle", (int, float), where,
                      _default(SshOptions, "agent_idle"))
    if isinstance(agent_idle, bool) or not 0 <= agent_idle <= 86400:
        raise ConfigError(f"{where}.agent_idle", "must be seconds from 0 (never) to 86400")
    given = "master_idle" in table
    master_idle = _pop(table, "master_idle", (int, float), where,
                       _default(SshOptions, "master_idle"))
    if isinstance(master_idle, bool) or not 0 <= master_idle <= 86400:
        raise ConfigError(f"{where}.master_idle", "must be seconds from 0 (never) to 86400")
    if not given and (agent_idle == 0 or agent_idle > master_idle):
        master_idle = agent_idle  # sessions kept for ever (or long): so is the master
    if master_idle and (agent_idle == 0 or master_idle < agent_idle):
        raise ConfigError(f"{where}.master_idle", f"must be at least agent_idle "
                          f"({agent_idle:g}; 0 = never): the agent's session runs over the "
                          "master connection")
    options = _str_list(_pop(table, "options", list, where, []), f"{where}.options")
    for i, opt in enumerate(options):
        name = opt.split("=", 1)[0]
        if "=" not in opt or not name.isalnum():
            raise ConfigError(f"{where}.options[{i}]", "must look like 'Name=value'")
    _no_extra(table, where)
    return (SshOptions(port=port, identity_file=ident, options=options, confined=confined,
                       target_command=target_command, agent_idle=float(agent_idle),
                       master_idle=float(master_idle)),
            host, user)


def _parse_rsync(raw: Any, where: str) -> RsyncOptions:
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a table")
    table = dict(raw)
    _known(table, "sync.rsync", where)
    archive = _pop(table, "archive", bool, where, _default(RsyncOptions, "archive"))
    compress = _pop(table, "compress", bool, where, _default(RsyncOptions, "compress"))
    checksum = _pop(table, "checksum", bool, where, _default(RsyncOptions, "checksum"))
    bwlimit = _pop(table, "bwlimit", (int, str), where, None)
    if bwlimit is not None:
        bwlimit = str(bwlimit)
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?[KMGkmg]?", bwlimit):
            raise ConfigError(f"{where}.bwlimit", "must be a rate like 1000 or '10M' (KiB/s)")
    chown, chmod = _opt_str(table, "chown", where), _opt_str(table, "chmod", where)
    usermap, groupmap = _opt_str(table, "usermap", where), _opt_str(table, "groupmap", where)
    binary = _pop(table, "binary", str, where, _default(RsyncOptions, "binary"))
    if not binary:
        raise ConfigError(f"{where}.binary", "must not be empty")
    extra = _str_list(_pop(table, "extra", list, where, []), f"{where}.extra")
    for i, arg in enumerate(extra):
        if not arg.startswith("-"):
            raise ConfigError(f"{where}.extra[{i}]", "must be an option starting with '-'")
    timeout = _pop(table, "timeout", int, where, _default(RsyncOptions, "timeout"))
    if timeout < 0:
        raise ConfigError(f"{where}.timeout", "must be >= 0 (seconds; 0 = no timeout)")
    _no_extra(table, where)
    return RsyncOptions(binary=binary, archive=archive, compress=compress, checksum=checksum,
                        bwlimit=bwlimit, chown=chown, chmod=chmod, usermap=usermap,
                        groupmap=groupmap, extra=extra, timeout=timeout)


_PLACEHOLDERS = frozenset({"path", "source", "target", "from", "to", "name", "kind", "sync"})


def _template(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    raw = _pop(table, key, list, where, [])
    argv = _str_list(raw, f"{where}.{key}")
    for arg in argv:
        for field_name in re.findall(r"\{([^{}]*)\}", arg):
            if field_name not in _PLACEHOLDERS:
                raise ConfigError(f"{where}.{key}", f"unknown placeholder {{{field_name}}}; "
                                  f"use {', '.join(sorted(_PLACEHOLDERS))}")
    return argv


def _parse_target(raw: Any, key: str, base: Path, host: str | None,
                  user: str | None, confined: bool) -> Target:
    if isinstance(raw, str):
        target = parse_target(raw, key, base)
        if target.host is None and host is not None:
            target = parse_target(f"{user + '@' if user else ''}{host}:{raw}", key, base)
    elif isinstance(raw, dict):
        table = dict(raw)
        _known(table, "sync.targets", key)
        path = _pop(table, "path", str, key)
        t_host = _opt_str(table, "host", key) or host
        t_user = _opt_str(table, "user", key) or user
        confined = _pop(table, "confined", bool, key, confined)
        relay = _pop(table, "relay", bool, key, False)
        _no_extra(table, key)
        if t_host is None:
            if relay:
                raise ConfigError(f"{key}.relay", "only a remote target can be a relay (its "
                                  "status is asked for over ssh)")
            target = parse_target(path, f"{key}.path", base)
        else:
            target = parse_target(f"{t_user + '@' if t_user else ''}{t_host}:{path}", key, base)
            target = dataclasses.replace(target, relay=relay)
    else:
        raise ConfigError(key, "must be a string or a table with path (and host, user, "
                          "confined, relay)")
    if target.is_daemon:
        if isinstance(raw, dict):
            raise ConfigError(f"{key}.path", "a target table is reached over ssh; write an "
                              "rsync daemon target as a string, host::module[/dir]")
        if confined:
            raise ConfigError(key, "an rsync daemon target cannot be confined ([sync.ssh] "
                              "confined = true applies to every target of this sync): a "
                              "confined target is reached over ssh through syncsup-target, a "
                              "daemon target over the rsync protocol; put it in a [[sync]] of "
                              "its own")
        return target
    if not (confined and target.is_remote):
        return target
    if not target.path.startswith("/"):
        raise ConfigError(key, "a confined target needs an absolute path: the ROOT given to "
                          "syncsup-target on that host")
    return dataclasses.replace(target, confined=True, path=os.path.normpath(target.path))


def _parse_rsyncd(raw: Any, where: str, base: Path) -> RsyncdOptions:
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a table")
    table = dict(raw)
    _known(table, "sync.rsyncd", where)
    from syncsup.config_rsyncd import check_password_file  # it needs ConfigError

    password_file = _opt_path(table, "password_file", where, base)
    if password_file is not None:
        check_password_file(password_file, f"{where}.password_file")
    port = _pop(table, "port", int, where, _default(RsyncdOptions, "port"))
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"{where}.port", "must be between 1 and 65535")
    _no_extra(table, where)
    return RsyncdOptions(password_file=password_file, port=port)


def _parse_sync(raw: Any, index: int, base: Path) -> Sync:
    where = f"sync[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a table")
    table = dict(raw)
    _known(table, "sync", where)
    name = _pop(table, "name", str, where, f"sync{index}")
    if not valid_name(name):
        raise ConfigError(f"{where}.name", "use 1-64 letters, digits, '.', '_' or '-'")
    # The parent is resolved, the root itself is not: a symlink there is
    # never followed (syncsup.sourceroot), so it is refused at start.
    source = _unfollowed(base / _pop(table, "source", str, where))
    mode_name = _pop(table, "mode", str, where, _default(Sync, "mode").value)
    if mode_name not in MODES:
        raise ConfigError(f"{where}.mode", f"must be one of {', '.join(MODES)}")
    mode = Mode(mode_name)
    delay = float(_pop(table, "delay", (int, float), where, _default(Sync, "delay")))
    if not 0 <= delay <= 86400:
        raise ConfigError(f"{where}.delay", "must be a number >= 0 (seconds, at most 86400)")
    delete = _pop(table, "delete", (bool, str), where, _default(Sync, "delete"))
    if isinstance(delete, str) and delete not in ("startup", "running"):
        raise ConfigError(f"{where}.delete", "must be true, false, 'startup' or 'running'")
    init = _pop(table, "init", bool, where, _default(Sync, "init"))
    max_delete = _pop(table, "max_delete", int, where, _default(Sync, "max_delete"))
    if max_delete < 0:
        raise ConfigError(f"{where}.max_delete", "must be >= 0 (0 = no limit)")
    full_sync_interval = float(_pop(table, "full_sync_interval", (int, float), where,
                                    _default(Sync, "full_sync_interval")))
    if full_sync_interval != 0 and full_sync_interval < 10:
        raise ConfigError(f"{where}.full_sync_interval", "must be 0 (off) or >= 10 seconds")
    startup_checksum = _pop(table, "startup_checksum", bool, where,
                            _default(Sync, "startup_checksum"))
    max_delays = _pop(table, "max_delays", int, where, _default(Sync, "max_delays"))
    agent_max_size = _pop(table, "agent_max_size", int, where, _default(Sync, "agent_max_size"))
    if not 0 <= agent_max_size <= AGENT_MAX_SIZE_LIMIT:
        raise ConfigError(f"{where}.agent_max_size", f"must be between 0 (never use the agent) "
                          f"and {AGENT_MAX_SIZE_LIMIT} bytes")
    if max_delays < 1:
        raise ConfigError(f"{where}.max_delays", "must be >= 1")
    exclude = _str_list(_pop(table, "exclude", list, where, []), f"{where}.exclude")
    filters = _str_list(_pop(table, "filter", list, where, []), f"{where}.filter")
    for i, rule in enumerate(filters):
        if not re.match(r"^([-+.:PRHS!]|exclude|include|merge|dir-merge|hide|show|protect"
                        r"|risk|clear)[,a-z]*( |_|$)", rule):
            raise ConfigError(f"{where}.filter[{i}]", f"not an rsync filter rule: {rule!r}")
    exclude_from = _opt_path(table, "exclude_from", where, base)
    filter_from = _opt_path(table, "filter_from", where, base)
    for key, p in (("exclude_from", exclude_from), ("filter_from", filter_from)):
        if p is not None and not p.is_file():
            raise ConfigError(f"{where}.{key}", f"{p}: no such file")
        if p is not None:
            read_rule_file(p, f"{where}.{key}")  # unreadable: refused now, not at the first batch
    ssh, host, user = _parse_ssh(table.pop("ssh", {}), f"{where}.ssh", base)
    rsync = _parse_rsync(table.pop("rsync", {}), f"{where}.rsync")
    has_rsyncd = "rsyncd" in table
    rsyncd = _parse_rsyncd(table.pop("rsyncd", {}), f"{where}.rsyncd", base)
    commands = Commands(
        **{k: _template(table, k, where)
           for k in ("on_create", "on_modify", "on_delete", "on_move", "on_startup")},
        action=_opt_str(table, "action", where),
    )
    if commands.action is not None and not re.fullmatch(r"[\w.]+:[A-Za-z_]\w*", commands.action):
        raise ConfigError(f"{where}.action", "must look like 'package.module:ClassName'")
    raw_targets = _pop(table, "targets", list, where, [] if mode is Mode.COMMAND else ...)
    if not raw_targets and mode is not Mode.COMMAND:
        raise ConfigError(f"{where}.targets", "must list at least one target")
    targets = [_parse_target(spec, f"{where}.targets[{i}]", base, host, user, ssh.confined)
               for i, spec in enumerate(raw_targets)]
    if len({t.spec for t in targets}) != len(targets):
        raise ConfigError(f"{where}.targets", "lists the same target twice")
    targets = [dataclasses.replace(t, port=rsyncd.port)
               if t.is_daemon and t.port is None else t for t in targets]
    if has_rsyncd and not any(t.is_daemon for t in targets):
        raise ConfigError(f"{where}.rsyncd", "only used with rsync daemon targets "
                          "(host::module or rsync://host/module)")
    for i, t in enumerate(targets):
        if t.is_daemon and mode is not Mode.RSYNC:
            raise ConfigError(f"{where}.targets[{i}]", f"an rsync daemon target needs mode = "
                              f"\"rsync\", not {mode.value!r}: renames cannot be replayed "
                              "on a daemon (rsync sends them as a delete and a create)")
        if mode is Mode.RSYNCSSH and not t.is_remote:
            raise ConfigError(f"{where}.targets[{i}]",
                              "rsyncssh needs a remote target: host:/path, or set ssh.host")
        if mode is Mode.DIRECT and t.is_remote:
            raise ConfigError(f"{where}.targets[{i}]", "direct mode needs a local path")
    if mode is Mode.COMMAND:
        has_any = commands.action or any(
            getattr(commands, k) for k in ("on_create", "on_modify", "on_delete", "on_move"))
        if not has_any:
            raise ConfigError(f"{where}.action",
                              "command mode needs action or at least one on_* command")
        if not targets:
            targets = [Target(spec="command", path="")]
    elif commands != Commands():
        key = "action" if commands.action else next(
            k for k in ("on_create", "on_modify", "on_delete", "on_move", "on_startup")
            if getattr(commands, k))
        raise ConfigError(f"{where}.{key}", "only used with mode = \"command\"")
    _no_extra(table, where)
    return Sync(
        name=name, source=source, targets=tuple(targets), mode=mode, delay=delay,
        delete=delete, init=init, max_delays=max_delays, max_delete=max_delete,
        full_sync_interval=full_sync_interval, startup_checksum=startup_checksum,
        agent_max_size=agent_max_size, exclude=exclude,
        exclude_from=exclude_from, filter=filters, filter_from=filter_from, ssh=ssh,
        rsync=rsync, rsyncd=rsyncd, commands=commands,
    )


def read_rule_file(path: Path, key: str) -> list[str]:
    """The rules of an ``exclude_from`` / ``filter_from`` file: one per line,
    blank lines and ``#`` or ``;`` comments skipped (as rsync reads them).

    The one reader of rule files: the config check, the watcher (which
    directories need no watch) and the syncer (what rsync is told) all read
    them here, so they never disagree on the rules. A file that cannot be
    read is a config error naming ``key``: guessing the rules instead would
    send what the user excluded, or lose what they did not."""
    try:
        text = path.read_text(errors="surrogateescape")
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    return [ln for ln in text.splitlines() if ln.strip() and ln[0] not in "#;"]


def rule_file_lines(sync: Sync, name: str) -> list[str]:
    """The rules of ``sync``'s ``exclude_from`` or ``filter_from`` file (as
    ``name`` says); none without one. Read when a process starts, so an
    error names the sync by name (its position in the config is not kept)."""
    path: Path | None = getattr(sync, name)
    return [] if path is None else read_rule_file(path, f"sync {sync.name!r}.{name}")


def _check_overlaps(syncs: tuple[Sync, ...]) -> None:
    """Refuse configs that would mirror a tree into itself or let two syncs
    fight over one target: both end in data loss or endless transfers."""
    seen: list[tuple[str, str, str]] = []  # (host, path, key) of earlier targets
    for i, sync in enumerate(syncs):
        src = os.path.realpath(sync.source)
        for j, t in enumerate(sync.targets):
            key = f"sync[{i}].targets[{j}]"
            if sync.runs_commands and t.spec == "command":
                continue
            if t.is_daemon:  # a module is a tree of its own: overlaps only within it
                host = f"rsync://{t.user or ''}@{t.host}:{t.port or 873}/{t.module}"
                path = os.path.normpath("/" + t.path)
            elif t.is_remote:
                host, path = f"{t.user or ''}@{t.host}", os.path.normpath(t.path)
            else:
                host, path = "", os.path.realpath(t.path)
                if path == src:
                    raise ConfigError(key, "is the source itself")
                if is_within(path, src):
                    raise ConfigError(key, f"is inside its own source {src}")
                if is_within(src, path):
                    raise ConfigError(key, f"contains its own source {src}")
            for other_host, other_path, where in seen:
                if host == other_host and (is_within(path, other_path)
                                           or is_within(other_path, path)):
                    raise ConfigError(key, f"overlaps {where}: two targets would write the "
                                      "same files")
            seen.append((host, path, key))


def _owned_safely(st: os.stat_result) -> bool:
    return st.st_uid in (os.geteuid(), 0)


def _private_group(gid: int) -> bool:
    """Is ``gid`` our own primary group with no other members (the usual
    user-private group, which a umask of 002 makes directories writable by)?"""
    if gid != os.getegid():
        return False
    try:
        members = set(grp.getgrgid(gid).gr_mem)
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return False
    return members <= {me}


def _check_ancestors(path: Path, key: str) -> None:
    """Every directory above ``path`` (after resolving symlinks) must be
    ours or root's and not writable by others, as OpenSSH's StrictModes
    requires: whoever can rename entries in one of them can put another
    file in the config's place. World-writable directories with the sticky
    bit (/tmp) are fine: others cannot rename our entries there."""
    real = Path(os.path.realpath(path))
    for parent in real.parents:
        try:
            st = os.stat(parent)
        except OSError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        sticky = bool(mode & stat.S_ISVTX)
        if not _owned_safely(st) and not sticky:
            raise ConfigError(key, f"{parent} (above {path}) belongs to uid {st.st_uid}, "
                              "not to us or root: others could replace the file")
        if mode & 0o002 and not sticky:
            raise ConfigError(key, f"{parent} (above {path}) is writable by every user; "
                              "chmod o-w it")
        if mode & 0o020 and not sticky and not _private_group(st.st_gid):
            raise ConfigError(key, f"{parent} (above {path}) is writable by group "
                              f"{st.st_gid}; chmod g-w it")


def _check_private_stat(st: os.stat_result, path: Path, key: str, client: bool = False
                        ) -> None:
    """A config or state_dir others can write would let them run commands
    as us (command mode) or redirect the mirror: refuse it."""
    if st.st_mode & 0o022:
        raise ConfigError(key, f"{path} is writable by other users (mode "
                          f"{stat.S_IMODE(st.st_mode):o}); chmod go-w it")
    if _owned_safely(st):
        return
    if _service_state(st, key):
        if client:
            return
        raise ConfigError(key, f"{path} belongs to the service user {SERVICE_USER}, whose "
                          "daemon runs it: start it with systemctl (root never runs a "
                          "daemon in a directory a less trusted account can change)")
    raise ConfigError(key, f"{path} belongs to uid {st.st_uid}, not to us or root")


def _service_state(st: os.stat_result, key: str) -> bool:
    """A state_dir of the unit's daemon, which runs as the service user in
    the directory systemd made for it, seen by root."""
    return (key == "settings.state_dir" and os.geteuid() == 0
            and st.st_uid == service_uid())


def check_private(path: Path, key: str, client: bool = False) -> None:
    """``path`` (a state_dir), if it exists, and every directory above it
    must be ours or root's and not writable by others. ``client``: root
    asks a daemon (status, stop, reload...): a state_dir of the service
    user is then accepted, since only the daemon's socket and lock are
    read there (the lock without following a link, never written). Root
    never runs a daemon there: the service user (or code it ran) could
    have put a symlink in it that root would write through."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    _check_private_stat(st, path, key, client)
    _check_ancestors(path, key)


def read_private(path: Path, key: str) -> bytes:
    """The bytes of ``path``, checked on the very file that is read: the
    descriptor is opened first, its owner and mode are checked with fstat,
    then it is read, so no rename between check and read can substitute
    another file. Its directories are checked too."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(key, f"{path}: no such file") from None
    except PermissionError:
        raise ConfigError(key, f"{path}: permission denied") from None
    except OSError as exc:
        raise ConfigError(key, f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(key, f"{path} is not a regular file")
        _check_private_stat(st, path, key)
        _check_ancestors(path, key)
        return fh.read(16 * 1024 * 1024)


def parse(data: dict[str, Any], path: Path) -> Config:
    """Build a :class:`Config` from already-parsed TOML ``data``."""
    base = path.parent
    top = dict(data)
    raw_settings = top.pop("settings", {})
    if not isinstance(raw_settings, dict):
        raise ConfigError("settings", "must be a table")
    settings_t = dict(raw_settings)
    _known(settings_t, "settings", "settings")
    state_dir = _pop(settings_t, "state_dir", str, "settings", None)
    log_level = _pop(settings_t, "log_level", str, "settings", _default(Settings, "log_level"))
    max_processes = _pop(settings_t, "max_processes", int, "settings",
                         default_max_processes(os.cpu_count()))
    if max_processes < 0:
        raise ConfigError("settings.max_processes", "must be >= 0 (0 = no limit)")
    log_file = _opt_file(settings_t, "log_file", "settings", base)
    log_format = _pop(settings_t, "log_format", str, "settings", _default(Settings, "log_format"))
    if log_format not in ("text", "json"):
        raise ConfigError("settings.log_format", "must be 'text' or 'json'")
    metrics = _opt_str(settings_t, "metrics", "settings")
    if metrics is not None:
        host, _, port = metrics.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError("settings.metrics", "must be 'host:port', e.g. '127.0.0.1:9473'")
    status_file = _opt_file(settings_t, "status_file", "settings", base)
    status_interval = float(_pop(settings_t, "status_interval", (int, float), "settings",
                                 _default(Settings, "status_interval")))
    if not 1 <= status_interval <= 86400:
        raise ConfigError("settings.status_interval", "must be between 1 and 86400 seconds")
    strict_rsync = _pop(settings_t, "strict_rsync", bool, "settings",
                        _default(Settings, "strict_rsync"))
    if log_level not in LOG_LEVELS:
        raise ConfigError("settings.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    _no_extra(settings_t, "settings")
    raw_syncs = top.pop("sync", None)
    if raw_syncs is None:
        raise ConfigError("sync", "at least one [[sync]] block is required")
    if not isinstance(raw_syncs, list):
        raise ConfigError("sync", "must be an array of tables: write [[sync]]")
    if not raw_syncs:
        raise ConfigError("sync", "at least one [[sync]] block is required")
    timings_t = top.pop("timings", {})
    if not isinstance(timings_t, dict):
        raise ConfigError("timings", "must be a table")
    _known(timings_t, "timings", "timings")
    try:
        timing = Timings(**{f.name: float(_pop(timings_t, f.name, (int, float), "timings",
                                               f.default))
                            for f in dataclasses.fields(Timings)})
    except TimingError as exc:
        raise ConfigError(f"timings.{exc.key}", exc.problem) from None
    _no_extra(top, "")
    syncs = tuple(_parse_sync(raw, i, base) for i, raw in enumerate(raw_syncs))
    names = [s.name for s in syncs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"sync[{i}].name", f"duplicate sync name {name!r}")
    _check_overlaps(syncs)
    settings = Settings(
        state_dir=(base / state_dir).resolve() if state_dir else default_state_dir(path.stem),
        log_level=log_level,
        max_processes=max_processes,
        log_file=log_file,
        log_format=log_format,
        metrics=metrics,
        status_file=status_file,
        status_interval=status_interval,
        strict_rsync=strict_rsync,
    )
    return Config(path=path, settings=settings, syncs=syncs, timings=timing)


def load(path: str | os.PathLike[str], client: bool = False) -> Config:
    """Read and validate the TOML file at ``path``; ``client``: for a
    command that only talks to the running daemon (see
    :func:`check_private`)."""
    p = Path(path).resolve()
    raw = read_private(p, "config")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError("config", f"{p}: not UTF-8 text (byte {exc.start}); a TOML file "
                          "must be UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{p}: invalid TOML: {exc}") from None
    conf = parse(data, p)
    check_private(conf.settings.state_dir, "settings.state_dir", client)
    return conf


def check_sources(conf: Config, missing_ok: bool = False) -> None:
    """Every source must be a directory. ``missing_ok`` (``start`` and a
    reload of a config file): a source that does not exist yet is fine,
    since a network mount may come up after the daemon; its sync waits for
    it, loudly, and deletes nothing on the targets. A path that exists but
    is not a directory is a mistake in the config either way, and so is a
    missing source given on the command line (most likely a typo)."""
    for i, sync in enumerate(conf.syncs):
        if sync.source.is_symlink():
            raise ConfigError(f"sync[{i}].source", f"{sync.source} is a symlink (to "
                              f"{os.readlink(sync.source)}): a source root is never followed; "
                              f"set source to the directory itself ({sync.source.resolve()})")
        if sync.source.is_dir():
            continue
        if not sync.source.exists():
            if missing_ok:
                continue
            raise ConfigError(f"sync[{i}].source", f"{sync.source} does not exist")
        raise ConfigError(f"sync[{i}].source", f"{sync.source} is not a directory")


def check_output_files(conf: Config) -> None:
    """``log_file`` and ``status_file`` must be creatable when the daemon
    starts: their directory exists, is a directory and is writable. Checked
    by ``check``, at start and on reload, not by every load: ``status`` and
    ``stop`` must work, and a child restarted later must not be stopped for
    good, if the directory goes away while the daemon runs (the daemon then
    logs to stderr only, or keeps retrying the status file)."""
    for key in ("log_file", "status_file"):
        path: Path | None = getattr(conf.settings, key)
        if path is None:
            continue
        parent = path.parent
        if not parent.exists():
            problem = f"{path}: its directory {parent} does not exist"
        elif not parent.is_dir():
            problem = f"{path}: {parent} is not a directory"
        elif path.is_dir():
            problem = f"{path} is a directory"
        # by capability too: the unit's service user writes root's /var/log
        elif not can_access(parent, os.W_OK | os.X_OK):
            problem = f"{path}: its directory {parent} is not writable"
        else:
            continue
        raise ConfigError(f"settings.{key}", problem)


def load_for_child(path: str) -> Config:
    """Load the config in a child process. A child cannot print a usage
    error to a user, so any problem ends the process with exit code 78,
    which the supervisor reads as "do not restart"."""
    try:
        return load(path)
    except ConfigError as exc:
        print(f"syncsup: config error: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
