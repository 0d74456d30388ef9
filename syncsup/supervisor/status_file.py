"""The optional status file (``[settings] status_file``), for tools that read
Lsyncd's: the same table ``syncsup status`` prints, rewritten atomically
(write a temporary file beside it, then rename) every ``status_interval``
seconds, so a reader never sees half a file. A name ending in ``.json``
gets what ``syncsup status --json`` prints instead: what a relay's
``syncsup-target --relay-status`` serves to the source upstream."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from syncsup.status import Status, format_status, to_json

__all__ = ["write_status_file"]

log = logging.getLogger("syncsup.supervisor")


def write_status_file(path: Path, doc: Status) -> None:
    if path.suffix == ".json":
        text = json.dumps(to_json(doc)) + "\n"
    else:
        text = (f"syncsup status, written {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n\n"
                f"{format_status(doc)}\n")
    # A random name created with O_EXCL and O_NOFOLLOW, and its mode set on
    # the descriptor: a symlink planted in the directory can neither be
    # opened for writing nor chmodded through. rename() replaces a symlink at
    # the final name instead of following it.
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as exc:
        log.warning("cannot write status file %s: %s", path, exc)
        return
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o644)
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write status file %s: %s", path, exc)
        try:
            os.unlink(tmp)
        except OSError:
            pass
