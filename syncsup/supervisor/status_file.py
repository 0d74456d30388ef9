"""The optional status file (``[settings] status_file``), for tools that read
Lsyncd's: the same table ``syncsup status`` prints, rewritten atomically
(write a temporary file beside it, then rename) every ``status_interval``
seconds, so a reader never sees half a file."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["write_status_file"]

log = logging.getLogger("syncsup.supervisor")


def write_status_file(path: Path, doc: dict[str, Any]) -> None:
    from syncsup.cli import format_status

    text = (f"syncsup status, written {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n\n"
            f"{format_status(doc)}\n")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write status file %s: %s", path, exc)
