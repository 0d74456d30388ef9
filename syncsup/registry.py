"""Running daemons, found without their config path.

A supervisor that starts records itself in a runtime directory: a symlink
``NAME`` to its config file, where NAME is the base name of its
``state_dir`` (``www`` for ``/var/lib/syncsup/www``, the default for
``/etc/syncsup/www.toml``; ``adhoc-...`` for ``start --source``), made
unique with a ``-2``, ``-3`` suffix if another running daemon has it. A
clean stop removes it; an entry left by a killed daemon is ignored (its
state_dir lock is free) and replaced. ``syncsup status`` without a config
lists the entries whose daemon runs; ``status NAME``, ``stop NAME`` and the
other commands take a NAME instead of a config path.

The directory: ``$SYNCSUP_RUNTIME_DIR`` if set, else ``/run/syncsup`` for
root and for the unit's service user (the unit's ``RuntimeDirectory=syncsup``,
which systemd names in ``$RUNTIME_DIRECTORY``), else
``$XDG_RUNTIME_DIR/syncsup`` (or, with no such variable,
``$XDG_STATE_HOME/syncsup/run``). Mode 0700: only the
user whose daemons they are can talk to them anyway.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from syncsup import config as cfg
from syncsup.statedir import is_running

__all__ = ["Entry", "register", "registry_dir", "resolve", "running", "unregister"]


def registry_dir() -> Path:
    override = os.environ.get("SYNCSUP_RUNTIME_DIR")
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return Path("/run/syncsup")
    for given in os.environ.get("RUNTIME_DIRECTORY", "").split(":"):
        if given and Path(given) == Path("/run/syncsup"):
            return Path(given)  # the unit's service user: where root's CLI looks
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "syncsup"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "syncsup" / "run"


@dataclass(frozen=True)
class Entry:
    name: str
    config: Path


def _entries(directory: Path) -> list[Entry]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    out = []
    for name in names:
        if name.startswith("."):
            continue
        try:
            out.append(Entry(name, Path(os.readlink(directory / name))))
        except OSError:
            continue
    return out


def _runs(entry: Entry) -> bool:
    """Does the daemon of ``entry`` still run (its config loads and its
    state_dir is locked)?"""
    try:
        # only its lock is read, safely: the service user's state_dir is fine
        conf = cfg.load(entry.config, client=True)
        return is_running(conf.settings.state_dir)
    except (cfg.ConfigError, OSError, ValueError):
        return False


def running(directory: Path | None = None) -> list[Entry]:
    """The entries whose daemon runs, by name."""
    return [e for e in _entries(directory or registry_dir()) if _runs(e)]


def register(conf: cfg.Config, directory: Path | None = None) -> str | None:
    """Record the daemon of ``conf`` (whose state_dir lock we hold); its
    name, or None if the directory cannot be written (logged by the caller:
    the daemon runs anyway, it is only harder to find)."""
    directory = directory or registry_dir()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        taken = {}
        for entry in _entries(directory):
            if _runs(entry):
                taken[entry.name] = entry
            else:  # left by a daemon that was killed: prune it
                _remove_if(directory / entry.name, entry.config)
        base = conf.settings.state_dir.name or "syncsup"
        name, n = base, 1
        while name in taken and taken[name].config != conf.path:
            n += 1
            name = f"{base}-{n}"
        tmp = directory / f".{name}.{os.urandom(4).hex()}"
        os.symlink(conf.path, tmp)
        os.replace(tmp, directory / name)
    except OSError:
        return None
    return name


def _remove_if(path: Path, config: Path) -> None:
    """Remove the entry at ``path`` if it still points to ``config``."""
    try:
        if Path(os.readlink(path)) == config:
            path.unlink()
    except OSError:
        pass


def unregister(name: str, conf: cfg.Config, directory: Path | None = None) -> None:
    """Remove our entry, if it is still ours."""
    _remove_if((directory or registry_dir()) / name, conf.path)


def resolve(arg: str, directory: Path | None = None) -> str:
    """A config path for ``arg``: itself if it names a file, else the config
    of the running daemon called ``arg``; unchanged if neither (loading it
    then says what is wrong)."""
    if os.path.exists(arg) or "/" in arg or arg.endswith(".toml"):
        return arg
    for entry in running(directory):
        if entry.name == arg:
            return str(entry.config)
    return arg
