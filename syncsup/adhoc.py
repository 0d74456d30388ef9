"""``syncsup start --source SRC --target DST``: one mirror without a config file.

The daemon's children re-read the config from a file (each runs as
``syncsup.ROLE CONFIG``), and ``syncsup status`` and ``stop`` find a daemon
through its config. So the command line is turned into the TOML a user would
have written, that TOML is written to a private file in the mirror's state
directory, and the daemon starts from that file exactly as
``syncsup start FILE`` would: same parser, same validation, same refusals.
Nothing here decides what is a valid mirror.

The state directory is named after the source and the targets (``adhoc-``
and a hash of their absolute paths) unless ``--name`` says otherwise: two
ad-hoc mirrors never share a journal, and the same command line finds its
journal again after a restart, wherever it is run from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncsup import config as cfg

__all__ = ["CONFIG_NAME", "AdHoc", "default_name", "prepare", "write"]

CONFIG_NAME = "sync.toml"  # inside the state directory
MODES = ("rsync", "rsyncssh", "direct")  # command mode needs a config file
_HEADER = (
    "# Written by `syncsup start --source ... --target ...`, which rewrites it\n"
    "# at every such start: copy it elsewhere to keep a config of your own.\n\n"
)


@dataclass(frozen=True)
class AdHoc:
    """The config file to write (``path``, inside ``state_dir``) and what
    goes in it (``doc``, the TOML document as a dict)."""

    path: Path
    state_dir: Path
    doc: dict[str, Any]


def default_name(source: str, targets: list[str]) -> str:
    """``adhoc-`` and a short hash of the absolute source and targets: stable
    for one mirror, distinct for two (and a valid sync name)."""
    import hashlib  # here, not at the top: it loads libcrypto (3 MB) into the supervisor

    digest = hashlib.sha256(b"\0".join(os.fsencode(p) for p in (source, *targets)))
    return f"adhoc-{digest.hexdigest()[:10]}"


def _utf8(value: str, key: str) -> str:
    """A TOML file is UTF-8: a path that is not cannot be written in one."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise cfg.ConfigError(key, f"{value!r} is not valid UTF-8: a config file cannot "
                              "name it") from None
    return value


def prepare(source: str, targets: list[str], *, mode: str | None = None,
            delay: float | None = None, name: str | None = None,
            state_dir: str | None = None, cwd: Path | None = None) -> AdHoc:
    """The config for these options. Relative paths are taken from ``cwd``
    (the config module would take them from the file's folder, the state
    directory); a target with a colon before its first slash stays remote,
    as in rsync and in a config file. Raises ConfigError naming the key the
    option becomes."""
    base = cwd or Path.cwd()
    src = _utf8(str((base / source).resolve()), "sync[0].source")
    specs: list[str] = []
    for i, spec in enumerate(targets):
        key = f"sync[0].targets[{i}]"
        target = cfg.parse_target(spec, key, base)
        specs.append(_utf8(target.spec if target.is_remote else target.path, key))
    if name is not None and not cfg.valid_name(name):
        raise cfg.ConfigError("sync[0].name", "use 1-64 letters, digits, '.', '_' or '-'")
    name = name or default_name(src, specs)
    where = (base / (state_dir or cfg.default_state_dir(name))).resolve()
    sync: dict[str, Any] = {"name": name, "source": src, "targets": specs}
    if mode is not None:
        sync["mode"] = mode
    if delay is not None:
        sync["delay"] = delay
    doc = {"settings": {"state_dir": _utf8(str(where), "settings.state_dir")}, "sync": [sync]}
    return AdHoc(path=where / CONFIG_NAME, state_dir=where, doc=doc)


def _check_ours(path: Path) -> None:
    """Only a file this module wrote may be replaced: ``--state-dir`` may
    name a directory that holds someone's own ``sync.toml``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise cfg.ConfigError("settings.state_dir", f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        head = fh.read(len(_HEADER))
    if head != _HEADER.encode():
        raise cfg.ConfigError("settings.state_dir", f"{path} exists and was not written by "
                              "syncsup start --source: choose another state directory")


def write(adhoc: AdHoc) -> None:
    """Write the config, 0600 in a 0700 directory of ours. The file is
    replaced whole (a new file renamed over the old one), so a daemon
    reloading it never reads half of it."""
    import tomli_w

    text = _HEADER + tomli_w.dumps(adhoc.doc)
    created = not adhoc.state_dir.exists()
    adhoc.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if created:
        os.chmod(adhoc.state_dir, 0o700)  # whatever the umask
    # A directory that others can write, or that is not ours, is refused
    # here as it would be at start: before anything is written into it.
    cfg.check_private(adhoc.state_dir, "settings.state_dir")
    _check_ours(adhoc.path)
    tmp = adhoc.path.with_name(f".{CONFIG_NAME}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, adhoc.path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
