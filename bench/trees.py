"""Workload files and the byte-for-byte comparison that ends every scenario.

Why not ``tests.helpers.tree`` (``snapshot`` + ``diff_trees``) for the
comparison?  The bench's criterion is documented as "rsync would change
nothing": ``rsync -rlpgoD -n -i --checksum --delete SRC/ DST/`` compares
type, mode, **owner and group**, content and symlink targets, which the test
helper's snapshot does not (it leaves owners out), and it does so in C,
which matters on the 100 000-file startup tree (both sides are read in full
for every confirmation).  The test helper stays the reference for tests;
changing the bench's criterion would change what its figures mean.

Why not ``tests.helpers.unit.write`` for the workload?  The burst scenario
times how fast files are written ("writing the files" is one of its
figures), so :func:`write_file` is the shortest path Python has
(``os.open`` / ``os.write`` / ``os.close``, no ``makedirs``); the unit helper
also imports hypothesis and syncsup's config, which the bench has no use for.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FILL = os.urandom(96)
_POOL = ThreadPoolExecutor(4)


def write_file(path: str, i: int) -> None:
    """Create or replace ``path`` with ~100 bytes that differ by ``i``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"%d\n" % i + FILL)
    finally:
        os.close(fd)


def make_tree(root: Path, files: int, dirs: int, prefix: str = "f") -> None:
    """``files`` small files spread round-robin over ``dirs`` directories ``dNNNN``."""
    root.mkdir(parents=True, exist_ok=True)
    names = [root / f"d{j:04d}" for j in range(dirs)]
    for d in names:
        d.mkdir(exist_ok=True)
    for i in range(files):
        write_file(f"{names[i % dirs]}/{prefix}{i:06d}", i)


def rm_rf(path: Path) -> None:
    """Remove a tree if it exists (``rm -rf``: faster than shutil on large trees)."""
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--", os.fspath(path)], check=False)


def count_entries(root: Path | str) -> int:
    """Entries (files, dirs, symlinks) below ``root``, without stat calls; -1 if missing.

    The cheap check polled before every exact comparison."""
    n = 0
    try:
        stack = [os.fspath(root)]
        while stack:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    n += 1
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
    except FileNotFoundError:
        return -1 if n == 0 else n
    return n


def tree_diff(src: Path, dst: Path, limit: int = 10) -> list[str]:
    """What rsync would change to make ``dst`` equal ``src`` (type, mode, owner,
    content by checksum, symlink targets, extra entries); empty when identical.
    Times are not compared."""
    r = subprocess.run(
        ["rsync", "-rlpgoD", "-n", "-i", "--checksum", "--delete", f"{src}/", f"{dst}/"],
        capture_output=True,
        text=True,
        errors="replace",
    )
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    if r.returncode not in (0, 24):
        lines.append(f"(rsync compare exited {r.returncode}: {r.stderr.strip()[:300]})")
    return lines[:limit] if lines else []


def diff_pairs(pairs: list[tuple[Path, Path]]) -> list[str]:
    """:func:`tree_diff` of every (source, target) pair, four rsyncs at a time;
    the first non-empty result, prefixed with the target, or empty."""
    if len(pairs) == 1:
        return tree_diff(*pairs[0])
    for (_, dst), d in zip(pairs, _POOL.map(lambda p: tree_diff(*p), pairs), strict=True):
        if d:
            return [f"{dst}:", *d]
    return []


def diff_all(src: Path, dsts: list[Path]) -> list[str]:
    """:func:`tree_diff` of every target of one source; the first non-empty one."""
    if len(dsts) == 1:
        return tree_diff(src, dsts[0])
    for d in _POOL.map(lambda d: tree_diff(src, d), dsts):
        if d:
            return d
    return []
