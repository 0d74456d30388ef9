"""Small helpers shared by test_modes, test_command, test_settings and test_fanout."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers.churn import assert_not_pwned
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import b, snapshot, wait_converged, write


def converge(d, src, *dsts, timeout: float = 150):
    return wait_converged(src, dsts, timeout=timeout, on_timeout=d.describe)


def finish(d, tmp_path, src, *dsts, timeout: float = 150) -> None:
    """The common ending: converged byte for byte, clean stop, nothing left behind."""
    if dsts:
        converge(d, src, *dsts, timeout=timeout)
    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, src, *dsts)


def wait_until(
    pred: Callable[[], Any],
    what: str,
    timeout: float = 120,
    interval: float = 0.2,
    context: Callable[[], str] | None = None,
) -> Any:
    """Poll ``pred`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            extra = ""
            if context is not None:
                try:
                    extra = "\n" + str(context())
                except Exception as e:  # context only
                    extra = f"\n(context failed: {e!r})"
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def sync_table(source, targets: list[Any], **kw: Any) -> dict[str, Any]:
    """A ``[[sync]]`` table; targets may be strings, paths or tables (left as they are)."""
    d: dict[str, Any] = {
        "name": kw.pop("name", "www"),
        "source": os.fspath(source),
        "mode": kw.pop("mode", "rsync"),
        "delay": kw.pop("delay", 0),
        "targets": [t if isinstance(t, dict) else os.fspath(t) for t in targets],
    }
    d.update(kw)
    return d


def entry(snap: dict, path: bytes):
    return snap.get(path)


# ----------------------------------------------------------- command-mode log
RECORDER = r"""
import json, os, sys
log = sys.argv[1]
rec = [os.fsencode(a).hex() for a in sys.argv[2:]]
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, (json.dumps(rec) + "\n").encode())
os.close(fd)
"""

FAILER = r"""
import json, os, sys
log, flag = sys.argv[1], sys.argv[2]
rec = [os.fsencode(a).hex() for a in sys.argv[3:]]
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, (json.dumps(rec) + "\n").encode())
os.close(fd)
sys.exit(0 if os.path.exists(flag) else 1)
"""


def make_recorder(tmp_path: Path, name: str = "record.py", body: str = RECORDER) -> Path:
    p = tmp_path / name
    p.write_text(body)
    return p


def read_records(log: Path) -> list[list[bytes]]:
    """Every record the recorder wrote: a list of argv elements (bytes)."""
    try:
        text = log.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        if line.strip():
            out.append([bytes.fromhex(x) for x in json.loads(line)])
    return out


def python() -> str:
    return sys.executable


def tree_minus(snap: dict, drop: Callable[[bytes], bool]) -> dict:
    return {k: v for k, v in snap.items() if not drop(k)}


__all__ = [
    "FAILER",
    "RECORDER",
    "b",
    "converge",
    "entry",
    "finish",
    "make_recorder",
    "python",
    "read_records",
    "snapshot",
    "sync_table",
    "tree_minus",
    "wait_until",
    "write",
]
