"""Byte-exact snapshots of directory trees, and polling until two trees agree.

Paths are bytes everywhere: Linux file names need not be UTF-8 and may hold
newlines, so nothing here decodes them.  Symlinks are never followed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path

Entry = tuple  # ("file", mode, size, sha256) | ("dir", mode) | ("symlink", target) | ("other", fmt)
Snapshot = dict[bytes, Entry]

_CHUNK = 1 << 20


def b(p: os.PathLike[str] | str | bytes) -> bytes:
    """A path as bytes (Linux file names need not be UTF-8)."""
    return os.fsencode(p)


def write(path: os.PathLike[str] | str | bytes, data: bytes | str = b"x",
          mode: int | None = None) -> Path:
    """Create or replace a file (and its parent directories) holding ``data``."""
    raw = os.fsencode(path)
    os.makedirs(os.path.dirname(raw) or b".", exist_ok=True)
    with open(raw, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        os.chmod(raw, mode)
    return Path(os.fsdecode(raw))


def nest(root: os.PathLike[str] | str, depth: int) -> None:
    """``root/d/d/.../d``, ``depth`` levels, made through descriptors: as
    deep as wanted, past anything a path can name."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)


def _as_bytes(path: bytes | str | os.PathLike) -> bytes:
    return os.fsencode(path)


def _hash_file(path: bytes) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            size += len(chunk)
            h.update(chunk)
    finally:
        os.close(fd)
    return size, h.hexdigest()


def snapshot(root: bytes | str | os.PathLike, *, tolerate_vanish: bool = False) -> Snapshot:
    """Map every entry under ``root`` (relative bytes path) to a comparable tuple.

    Records the type, the permission bits (files and dirs), the content hash
    and size (files) and the link text (symlinks).  ``root`` itself is not an
    entry.  Owner and timestamps are not compared.

    With ``tolerate_vanish`` an entry that disappears between listing and
    reading (e.g. an rsync temp file being renamed) is silently skipped;
    otherwise the OSError propagates.
    """
    root_b = _as_bytes(root)
    out: Snapshot = {}
    stack: list[bytes] = [b""]
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(root_b, rel_dir) if rel_dir else root_b
        try:
            it = os.scandir(abs_dir)
        except (FileNotFoundError, NotADirectoryError):
            if tolerate_vanish and rel_dir:
                continue
            raise
        with it:
            for de in it:
                rel = os.path.join(rel_dir, de.name) if rel_dir else de.name
                try:
                    st = de.stat(follow_symlinks=False)
                    fmt = stat.S_IFMT(st.st_mode)
                    if fmt == stat.S_IFLNK:
                        out[rel] = ("symlink", os.readlink(de.path))
                    elif fmt == stat.S_IFDIR:
                        out[rel] = ("dir", stat.S_IMODE(st.st_mode))
                        stack.append(rel)
                    elif fmt == stat.S_IFREG:
                        size, digest = _hash_file(de.path)
                        out[rel] = ("file", stat.S_IMODE(st.st_mode), size, digest)
                    else:
                        out[rel] = ("other", fmt, stat.S_IMODE(st.st_mode))
                except (FileNotFoundError, NotADirectoryError):
                    if tolerate_vanish:
                        continue
                    raise
                except OSError as e:
                    # ELOOP from O_NOFOLLOW: the file became a symlink under us.
                    if tolerate_vanish and e.errno == 40:
                        continue
                    raise
    return out


def _fmt_entry(e: Entry) -> str:
    kind = e[0]
    if kind == "file":
        return f"file mode={e[1]:04o} size={e[2]} sha256={e[3][:12]}"
    if kind == "dir":
        return f"dir mode={e[1]:04o}"
    if kind == "symlink":
        return f"symlink -> {e[1]!r}"
    return f"other fmt={e[1]:o} mode={e[2]:04o}"


def diff_trees(
    a: Snapshot, b: Snapshot, limit: int = 20, names: tuple[str, str] = ("src", "dst")
) -> list[str]:
    """Human-readable differences between two snapshots (first ``limit`` of them)."""
    out: list[str] = []
    total = 0
    for rel in sorted(set(a) | set(b)):
        ea, eb = a.get(rel), b.get(rel)
        if ea == eb:
            continue
        total += 1
        if len(out) >= limit:
            continue
        if eb is None:
            out.append(f"only in {names[0]}: {rel!r} ({_fmt_entry(ea)})")
        elif ea is None:
            out.append(f"only in {names[1]}: {rel!r} ({_fmt_entry(eb)})")
        else:
            out.append(
                f"differs: {rel!r}: {names[0]} {_fmt_entry(ea)} != {names[1]} {_fmt_entry(eb)}"
            )
    if total > len(out):
        out.append(f"... and {total - len(out)} more differences ({total} in all)")
    return out


def wait_converged(
    src: bytes | str | os.PathLike,
    dst: bytes | str | os.PathLike | Iterable[bytes | str | os.PathLike],
    timeout: float = 120.0,
    interval: float = 0.3,
    on_timeout=None,
) -> Snapshot:
    """Poll until ``dst`` (one path or several) equals ``src`` byte for byte.

    ``src`` should be quiescent: it is read once, and once more when the
    targets match it (a source that changed meanwhile is compared again).
    A poll waits at least twice as long as the last comparison took, so a
    huge tree is not read back to back by the test while the daemon works;
    the first polls come sooner (0.02 s, growing to ``interval``), since
    most changes arrive within a few tenths of a second and a fixed pace
    added half an interval to each wait on average.
    Raises AssertionError with the diff after ``timeout`` seconds.
    ``on_timeout`` (optional callable returning str) adds context such as
    daemon status to the error.  Returns the source snapshot.
    """
    __tracebackhide__ = True
    dsts = [dst] if isinstance(dst, (bytes, str, os.PathLike)) else list(dst)
    deadline = time.monotonic() + timeout
    last: list[str] = []
    s: Snapshot | None = None
    pause = min(interval, 0.02)
    while True:
        began = time.monotonic()
        try:
            if s is None:
                s = snapshot(src)
            diffs: list[str] = []
            for d in dsts:
                dd = diff_trees(s, snapshot(d, tolerate_vanish=True))
                if dd:
                    diffs.append(f"--- {os.fsdecode(_as_bytes(d))}:")
                    diffs.extend(dd)
            if not diffs:
                again = snapshot(src)
                if not diff_trees(s, again):
                    return s
                s, diffs = again, ["the source changed while the targets were read"]
            last = diffs
        except FileNotFoundError as e:
            s = None
            last = [f"snapshot failed: {e!r}"]
        if time.monotonic() >= deadline:
            extra = ""
            if on_timeout is not None:
                try:
                    extra = "\n" + str(on_timeout())
                except Exception as e:  # context only; never mask the real failure
                    extra = f"\n(on_timeout failed: {e!r})"
            raise AssertionError(
                f"trees did not converge within {timeout:.0f}s: {os.fsdecode(_as_bytes(src))}\n"
                + "\n".join(last)
                + extra
            )
        time.sleep(max(pause, 2 * (time.monotonic() - began)))
        pause = min(interval, pause * 1.5)


def assert_same_tree(src, dst) -> None:
    """Assert now (no polling) that two trees are equal."""
    d = diff_trees(snapshot(src), snapshot(dst))
    assert not d, "trees differ:\n" + "\n".join(d)


def find_named(
    roots: Iterable[bytes | str | os.PathLike], name: bytes, recursive: bool = True
) -> list[bytes]:
    """Every entry called exactly ``name`` under ``roots`` (symlinks not followed)."""
    hits: list[bytes] = []
    for r in roots:
        rb = _as_bytes(r)
        if not os.path.isdir(rb):
            continue
        if not recursive:
            p = os.path.join(rb, name)
            if os.path.lexists(p):
                hits.append(p)
            continue
        for dirpath, dirnames, filenames in os.walk(rb):
            for n in dirnames + filenames:
                if n == name:
                    hits.append(os.path.join(dirpath, n))
    return hits


def path_of(p: bytes | str | os.PathLike) -> Path:
    return Path(os.fsdecode(_as_bytes(p)))
