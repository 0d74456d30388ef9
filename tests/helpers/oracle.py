"""The oracle of an exact mirror under filter rules: what ``rsync -a --delete``
with the same rules makes of the source in a fresh directory.

A mirror with excludes cannot be compared with its source (the excluded
entries are missing on purpose), so it is compared with rsync's own answer.
Rules go to rsync as ``--exclude``, ``--exclude-from`` and ``--filter``
arguments, exactly as the sync's config lists them, never through a shell.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.helpers.tree import Snapshot, diff_trees, snapshot

RSYNC = shutil.which("rsync") or "/usr/bin/rsync"


def rule_args(exclude: Sequence[str] = (), exclude_from: os.PathLike[str] | str | None = None,
              filters: Sequence[str] = ()) -> list[str]:
    """rsync's arguments for a sync's rules, in the order the daemon passes them."""
    out = [f"--exclude={p}" for p in exclude]
    if exclude_from is not None:
        out.append(f"--exclude-from={os.fspath(exclude_from)}")
    out += [f"--filter={r}" for r in filters]
    return out


def oracle(src: Path, fresh: Path, rules: Sequence[str]) -> Snapshot:
    """``rsync -a --delete RULES src/ fresh/`` into an emptied ``fresh``; its snapshot."""
    if fresh.exists():
        shutil.rmtree(fresh)
    fresh.mkdir()
    subprocess.run([RSYNC, "-a", "--delete", *rules, f"{src}/", f"{fresh}/"], check=True,
                   capture_output=True, timeout=300)
    return snapshot(fresh)


def wait_like_oracle(src: Path, dst: Path, fresh: Path, rules: Sequence[str],
                     timeout: float = 150.0,
                     on_timeout: Callable[[], str] | None = None) -> Snapshot:
    """Poll until ``dst`` equals the oracle of the (quiescent) source, byte
    for byte; AssertionError with the differences after ``timeout``."""
    __tracebackhide__ = True
    want = oracle(src, fresh, rules)
    deadline = time.monotonic() + timeout
    while True:
        diff = diff_trees(want, snapshot(dst, tolerate_vanish=True), names=("rsync", "target"))
        if not diff:
            return want
        if time.monotonic() >= deadline:
            extra = "\n" + on_timeout() if on_timeout is not None else ""
            raise AssertionError("the target is not what rsync -a --delete makes of the "
                                 "source:\n" + "\n".join(diff) + extra)
        time.sleep(0.3)


def dir_mtimes(root: Path) -> dict[bytes, int]:
    """Relative path (b"" for the root) -> mtime in ns of every directory."""
    r = os.fsencode(root)
    out = {}
    for dirpath, _dirs, _files in os.walk(r):
        out[os.path.relpath(dirpath, r) if dirpath != r else b""] = os.lstat(dirpath).st_mtime_ns
    return out


def mtime_diffs(want: Path, got: Path) -> list[str]:
    """Directories of ``got`` whose mtime differs from the same directory in ``want``."""
    a, b = dir_mtimes(want), dir_mtimes(got)
    return [f"{rel!r}: {a[rel]} != {b[rel]}" for rel in sorted(set(a) & set(b)) if a[rel] != b[rel]]
