"""The configuration contract: TOML in, frozen dataclasses out.

Everything a component needs is derived here once, so the supervisor and
each child (which re-reads the same file) agree. Any problem raises
:class:`ConfigError` naming the offending key; the CLI prints it as one line
and exits 78 (EX_CONFIG), which the supervisor never restarts.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EX_CONFIG",
    "Config",
    "ConfigError",
    "Settings",
    "SshOptions",
    "Sync",
    "Target",
    "load",
    "load_for_child",
]

EX_CONFIG = 78
MODES = ("rsync", "rsyncssh", "direct", "command")
LOG_LEVELS = ("debug", "info", "warning", "error")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """A config problem; ``key`` is the dotted key, ``args[0]`` the message."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


@dataclass(frozen=True)
class Settings:
    """``[settings]``: where the daemon keeps its state, and how it logs."""

    state_dir: Path
    log_level: str = "info"


@dataclass(frozen=True)
class SshOptions:
    """``[sync.ssh]``: how rsync reaches remote targets."""

    port: int | None = None
    identity_file: Path | None = None
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """One destination. ``host`` is None for a local path.

    ``spec`` is the string as written (shown in status); ``path`` the
    directory on the target host; ``user`` the ssh login, if given.
    """

    spec: str
    path: str
    host: str | None = None
    user: str | None = None

    @property
    def is_remote(self) -> bool:
        return self.host is not None

    def rsync_dest(self) -> str:
        """The destination argument for rsync, always ending in ``/``."""
        path = self.path.rstrip("/") + "/"
        if self.host is None:
            return path
        login = f"{self.user}@{self.host}" if self.user else self.host
        return f"{login}:{path}"


@dataclass(frozen=True)
class Sync:
    """One ``[[sync]]`` block: a source tree mirrored to its targets."""

    name: str
    source: Path
    targets: tuple[Target, ...]
    mode: str = "rsync"
    delay: float = 1.0
    delete: bool | str = True
    exclude: tuple[str, ...] = ()
    ssh: SshOptions = SshOptions()


@dataclass(frozen=True)
class Config:
    """The whole file. ``path`` is the absolute path it was read from."""

    path: Path
    settings: Settings
    syncs: tuple[Sync, ...]

    def sync(self, name: str) -> Sync:
        for s in self.syncs:
            if s.name == name:
                return s
        raise KeyError(name)


def parse_target(spec: str, key: str, base: Path) -> Target:
    """Split ``[user@]host:/path`` from a local path, rsync's way: a colon
    before the first slash means remote. Local paths resolve against the
    config file's folder."""
    if not spec:
        raise ConfigError(key, "must not be empty")
    if "\0" in spec or "\n" in spec:
        raise ConfigError(key, "must not contain NUL or newline")
    colon, slash = spec.find(":"), spec.find("/")
    if colon > 0 and (slash < 0 or colon < slash):
        login, path = spec[:colon], spec[colon + 1 :]
        user, _, host = login.rpartition("@")
        if not host or host.startswith("-") or (user and user.startswith("-")):
            raise ConfigError(key, f"bad host in {spec!r}")
        if not path:
            raise ConfigError(key, f"missing path after ':' in {spec!r}")
        if "::" in spec or spec.startswith("rsync://"):
            raise ConfigError(key, "rsync daemon targets are not supported; use host:/path")
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
    return value


def _no_extra(table: dict[str, Any], where: str) -> None:
    if table:
        key = sorted(table)[0]
        raise ConfigError(f"{where}.{key}" if where else key, "unknown key")


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, "must be a list of strings")
    return tuple(value)


def _default_state_dir(path: Path) -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/syncsup") / path.stem
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "syncsup" / path.stem


def _parse_ssh(raw: Any, where: str, base: Path) -> SshOptions:
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a table")
    table = dict(raw)
    port = _pop(table, "port", int, where, None)
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"{where}.port", "must be between 1 and 65535")
    ident = _pop(table, "identity_file", str, where, None)
    options = _str_list(_pop(table, "options", list, where, []), f"{where}.options")
    for i, opt in enumerate(options):
        if "=" not in opt and " " not in opt:
            raise ConfigError(f"{where}.options[{i}]", "must look like 'Name=value'")
    _no_extra(table, where)
    return SshOptions(
        port=port,
        identity_file=(base / ident).resolve() if ident else None,
        options=options,
    )


def _parse_sync(raw: Any, index: int, base: Path) -> Sync:
    where = f"sync[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a table")
    table = dict(raw)
    name = _pop(table, "name", str, where, f"sync{index}")
    if not _NAME_RE.match(name):
        raise ConfigError(f"{where}.name", "use 1-64 letters, digits, '.', '_' or '-'")
    source = (base / _pop(table, "source", str, where)).resolve()
    mode = _pop(table, "mode", str, where, "rsync")
    if mode not in MODES:
        raise ConfigError(f"{where}.mode", f"must be one of {', '.join(MODES)}")
    if mode != "rsync":
        raise ConfigError(f"{where}.mode", f"{mode!r} is not implemented yet; use 'rsync'")
    delay = float(_pop(table, "delay", (int, float), where, 1.0))
    if not 0 <= delay <= 86400:
        raise ConfigError(f"{where}.delay", "must be a number >= 0 (seconds, at most 86400)")
    delete = _pop(table, "delete", (bool, str), where, True)
    if isinstance(delete, str) and delete not in ("startup", "running"):
        raise ConfigError(f"{where}.delete", "must be true, false, 'startup' or 'running'")
    raw_targets = _pop(table, "targets", list, where)
    if not raw_targets:
        raise ConfigError(f"{where}.targets", "must list at least one target")
    targets: list[Target] = []
    for i, spec in enumerate(raw_targets):
        if not isinstance(spec, str):
            raise ConfigError(f"{where}.targets[{i}]", "must be a string")
        targets.append(parse_target(spec, f"{where}.targets[{i}]", base))
    if len({t.spec for t in targets}) != len(targets):
        raise ConfigError(f"{where}.targets", "lists the same target twice")
    exclude = _str_list(_pop(table, "exclude", list, where, []), f"{where}.exclude")
    ssh = _parse_ssh(table.pop("ssh", {}), f"{where}.ssh", base)
    _no_extra(table, where)
    return Sync(
        name=name, source=source, targets=tuple(targets), mode=mode, delay=delay,
        delete=delete, exclude=exclude, ssh=ssh,
    )


def parse(data: dict[str, Any], path: Path) -> Config:
    """Build a :class:`Config` from already-parsed TOML ``data``."""
    base = path.parent
    top = dict(data)
    raw_settings = top.pop("settings", {})
    if not isinstance(raw_settings, dict):
        raise ConfigError("settings", "must be a table")
    settings_t = dict(raw_settings)
    state_dir = _pop(settings_t, "state_dir", str, "settings", None)
    log_level = _pop(settings_t, "log_level", str, "settings", "info")
    if log_level not in LOG_LEVELS:
        raise ConfigError("settings.log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    _no_extra(settings_t, "settings")
    raw_syncs = top.pop("sync", None)
    if raw_syncs is None:
        raise ConfigError("sync", "at least one [[sync]] block is required")
    if not isinstance(raw_syncs, list):
        raise ConfigError("sync", "must be an array of tables: write [[sync]]")
    _no_extra(top, "")
    syncs = tuple(_parse_sync(raw, i, base) for i, raw in enumerate(raw_syncs))
    names = [s.name for s in syncs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"sync[{i}].name", f"duplicate sync name {name!r}")
    settings = Settings(
        state_dir=(base / state_dir).resolve() if state_dir else _default_state_dir(path),
        log_level=log_level,
    )
    return Config(path=path, settings=settings, syncs=syncs)


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate the TOML file at ``path``."""
    p = Path(path).resolve()
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config", f"{p}: no such file") from None
    except PermissionError:
        raise ConfigError("config", f"{p}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{p}: invalid TOML: {exc}") from None
    return parse(data, p)


def load_for_child(path: str, sync_name: str | None = None) -> Config:
    """Load the config in a child process. A child cannot print a usage
    error to a user, so any problem ends the process with exit code 78,
    which the supervisor reads as "do not restart"."""
    try:
        conf = load(path)
        if sync_name is not None:
            conf.sync(sync_name)
    except ConfigError as exc:
        print(f"syncsup: config error: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    except KeyError:
        print(f"syncsup: config error: sync {sync_name!r} is no longer in {path}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    return conf
