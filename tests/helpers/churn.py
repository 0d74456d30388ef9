"""Seeded random churn on a live directory tree.

``Churn(root, seed)`` keeps a model of what it created (so choices are
deterministic for a seed regardless of hash randomisation) and applies
operations through bytes paths: create, append, same-size rewrite (sometimes
with the original mtime restored), mkdir -p, renames of files and directories
across the tree (also over an existing file: the atomic-save pattern), rmtree,
symlinks (relative, absolute, dangling), chmod, type changes, and hostile names.

Nothing here is meant to be executed by anyone: names like ``$(touch pwned)``
exist to prove that no component ever hands a path to a shell.  Use
:func:`pwned_hits` after a test to check that no file called ``pwned`` appeared.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import threading
import time
from collections.abc import Iterable
from typing import ClassVar

from .tree import find_named

HOSTILE: list[bytes] = [
    b"new\nline",
    b"back\\slash",
    b"it's",
    b'say "hi"',
    b"glob*?[x",
    b"[abc]",
    b"$(touch pwned)",
    b"`touch pwned`",
    b";touch pwned;",
    b"| touch pwned",
    b"with space",
    b" lead space",
    b"trail space ",
    b"-leading-dash",
    b"--leading-dashes",
    b"--delete",
    b"-e",
    b"\xff\xfe",
    b"latin1-\xe9t\xe9",
    b"caf\xc3\xa9",
    b"tab\there",
    b"cr\rhere",
    b"esc\x1b[31m",
    b"host:colon",
    b"~tilde",
    b"#hash",
    b".hidden",
    b"..dots",
    b"%s%n%x",
    b"percent%20",
    b"L" * 200,
    b"\xe2\x80\x8bzero-width",
]
"""Name fragments that break shells, globbing, line-based protocols and UTF-8 decoders."""

FILE_MODES = (0o644, 0o600, 0o755, 0o444)
DIR_MODES = (0o755, 0o750, 0o700)
MAX_DEPTH = 6
MAX_PATH = 3000


class _OrderedSet:
    """Insertion-ordered set so that rng.choice is reproducible for a seed."""

    def __init__(self) -> None:
        self._d: dict[bytes, None] = {}

    def add(self, x: bytes) -> None:
        self._d[x] = None

    def discard(self, x: bytes) -> None:
        self._d.pop(x, None)

    def __contains__(self, x: object) -> bool:
        return x in self._d

    def __len__(self) -> int:
        return len(self._d)

    def __iter__(self):
        return iter(list(self._d))

    def list(self) -> list[bytes]:
        return list(self._d)


class Churn:
    """Random operations on the live tree at ``root``; ``seed`` makes them reproducible."""

    def __init__(
        self, root: bytes | str | os.PathLike, seed: int, hostile_ratio: float = 0.3
    ) -> None:
        self.root = os.fsencode(root)
        self.rng = random.Random(seed)
        self.seed = seed
        self.hostile_ratio = hostile_ratio
        self.files = _OrderedSet()
        self.dirs = _OrderedSet()  # b"" is the root
        self.links = _OrderedSet()
        self.dirs.add(b"")
        self._n = 0
        self.ops_done = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.log: collections.deque[str] = collections.deque(maxlen=60)
        self._adopt_existing()

    # ------------------------------------------------------------------ model
    def _adopt_existing(self) -> None:
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = b"" if rel_dir == b"." else rel_dir
            for n in sorted(dirnames):
                rel = os.path.join(rel_dir, n) if rel_dir else n
                if os.path.islink(os.path.join(self.root, rel)):
                    self.links.add(rel)
                else:
                    self.dirs.add(rel)
            for n in sorted(filenames):
                rel = os.path.join(rel_dir, n) if rel_dir else n
                if os.path.islink(os.path.join(self.root, rel)):
                    self.links.add(rel)
                else:
                    self.files.add(rel)
            dirnames.sort()

    def _abs(self, rel: bytes) -> bytes:
        return os.path.join(self.root, rel) if rel else self.root

    def _join(self, parent: bytes, name: bytes) -> bytes:
        return os.path.join(parent, name) if parent else name

    def _depth(self, rel: bytes) -> int:
        return 0 if not rel else rel.count(b"/") + 1

    def _name(self, prefix: bytes) -> bytes:
        self._n += 1
        if self.rng.random() < self.hostile_ratio:
            frag = self.rng.choice(HOSTILE)
            return frag + b"-" + str(self._n).encode()
        return prefix + str(self._n).encode()

    def _fresh(self, parent: bytes, prefix: bytes) -> bytes | None:
        for _ in range(5):
            rel = self._join(parent, self._name(prefix))
            if len(self._abs(rel)) < MAX_PATH and not os.path.lexists(self._abs(rel)):
                return rel
        return None

    def _pick_dir(self, max_depth: int = MAX_DEPTH) -> bytes:
        cands = [d for d in self.dirs.list() if self._depth(d) < max_depth]
        return self.rng.choice(cands)

    def _size(self) -> int:
        r = self.rng.random()
        if r < 0.08:
            return 0
        if r < 0.95:
            return self.rng.randint(1, 64 * 1024)
        return self.rng.randint(256 * 1024, 2 * 1024 * 1024)

    def _forget_tree(self, rel: bytes) -> None:
        pre = rel + b"/"
        for s in (self.files, self.dirs, self.links):
            for p in s.list():
                if p == rel or p.startswith(pre):
                    s.discard(p)

    def _move_tree(self, old: bytes, new: bytes) -> None:
        pre = old + b"/"
        for s in (self.files, self.dirs, self.links):
            for p in s.list():
                if p == old:
                    s.discard(p)
                    s.add(new)
                elif p.startswith(pre):
                    s.discard(p)
                    s.add(new + p[len(old) :])

    def _write(self, rel: bytes, data: bytes, mode: int | None = None) -> None:
        fd = os.open(self._abs(rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        if mode is not None:
            os.chmod(self._abs(rel), mode)

    def _note(self, op: str, *paths: bytes) -> None:
        self.counts[op] += 1
        self.log.append(op + " " + " ".join(repr(p) for p in paths))

    # -------------------------------------------------------------- operations
    def op_create(self) -> None:
        parent = self._pick_dir()
        rel = self._fresh(parent, b"f")
        if rel is None:
            return
        mode = self.rng.choice(FILE_MODES) if self.rng.random() < 0.3 else None
        self._write(rel, self.rng.randbytes(self._size()), mode)
        self.files.add(rel)
        self._note("create", rel)

    def op_append(self) -> None:
        if not len(self.files):
            return self.op_create()
        rel = self.rng.choice(self.files.list())
        with open(self._abs(rel), "ab") as f:
            f.write(self.rng.randbytes(self.rng.randint(1, 8192)))
        self._note("append", rel)

    def op_rewrite_same_size(self) -> None:
        """Overwrite bytes in place without changing the size; maybe restore mtime.

        rsync's quick check (size + mtime) cannot see this change: a daemon that
        relies on it diverges.
        """
        cands = [f for f in self.files.list() if os.path.getsize(self._abs(f)) > 0]
        if not cands:
            return self.op_create()
        rel = self.rng.choice(cands)
        path = self._abs(rel)
        st = os.stat(path)
        size = st.st_size
        off = self.rng.randrange(size)
        n = self.rng.randint(1, min(size - off, 4096))
        with open(path, "r+b") as f:
            f.seek(off)
            old = f.read(n)
            new = (
                bytes((b ^ 0xFF) for b in old) if self.rng.random() < 0.5 else self.rng.randbytes(n)
            )
            if new == old:
                new = bytes([(old[0] + 1) & 0xFF]) + new[1:]
            f.seek(off)
            f.write(new)
        if self.rng.random() < 0.6:
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            self._note("rewrite_same_size+utime", rel)
        else:
            self._note("rewrite_same_size", rel)
        assert os.path.getsize(path) == size

    def op_write_then_rewrite(self) -> None:
        """Create a file and immediately rewrite it with the same size (same mtime tick)."""
        parent = self._pick_dir()
        rel = self._fresh(parent, b"rw")
        if rel is None:
            return
        size = self.rng.randint(1, 16 * 1024)
        self._write(rel, self.rng.randbytes(size))
        st = os.stat(self._abs(rel))
        with open(self._abs(rel), "r+b") as f:
            f.write(self.rng.randbytes(size))
        os.utime(self._abs(rel), ns=(st.st_atime_ns, st.st_mtime_ns))
        self.files.add(rel)
        self._note("write_then_rewrite", rel)

    def op_mkdir(self) -> None:
        parent = self._pick_dir(MAX_DEPTH - 2)
        levels = self.rng.randint(1, 3)
        cur = parent
        for _ in range(levels):
            nxt = self._fresh(cur, b"d")
            if nxt is None:
                break
            os.mkdir(self._abs(nxt))
            if self.rng.random() < 0.3:
                os.chmod(self._abs(nxt), self.rng.choice(DIR_MODES))
            self.dirs.add(nxt)
            cur = nxt
        # a fresh dir with content: the watcher must scan it, not only watch it
        if cur != parent and self.rng.random() < 0.7:
            for _ in range(self.rng.randint(1, 4)):
                rel = self._fresh(cur, b"in")
                if rel is None:
                    break
                self._write(rel, self.rng.randbytes(self.rng.randint(0, 4096)))
                self.files.add(rel)
        self._note("mkdir", cur)

    def op_rename_file(self) -> None:
        if not len(self.files):
            return self.op_create()
        src = self.rng.choice(self.files.list())
        others = [f for f in self.files.list() if f != src]
        if others and self.rng.random() < 0.3:
            dst = self.rng.choice(others)  # rename over an existing file
            os.rename(self._abs(src), self._abs(dst))
            self.files.discard(src)
            self._note("rename_file_over", src, dst)
            return
        dst = self._fresh(self._pick_dir(), b"mv")
        if dst is None:
            return
        os.rename(self._abs(src), self._abs(dst))
        self.files.discard(src)
        self.files.add(dst)
        self._note("rename_file", src, dst)

    def op_atomic_save(self) -> None:
        """Editor-style save: write a temp file beside the target, rename it over the target."""
        if not len(self.files):
            return self.op_create()
        target = self.rng.choice(self.files.list())
        parent = os.path.dirname(target)
        self._n += 1
        tmp = self._join(parent, b".save-tmp-" + str(self._n).encode())
        self._write(tmp, self.rng.randbytes(self._size()), self.rng.choice(FILE_MODES))
        os.rename(self._abs(tmp), self._abs(target))
        self._note("atomic_save", target)

    def op_rename_dir(self) -> None:
        cands = [d for d in self.dirs.list() if d]
        if not cands:
            return self.op_mkdir()
        src = self.rng.choice(cands)
        pre = src + b"/"
        parents = [
            d
            for d in self.dirs.list()
            if d != src and not d.startswith(pre) and self._depth(d) < MAX_DEPTH - 1
        ]
        if not parents:
            return
        parent = self.rng.choice(parents)
        dst = self._fresh(parent, b"mvd")
        if dst is None:
            return
        # deepest path after the move must stay reasonable
        longest = max(
            [len(p) for s in (self.files, self.dirs, self.links) for p in s if p.startswith(pre)]
            + [0]
        )
        if len(self.root) + longest - len(src) + len(dst) > MAX_PATH:
            return
        os.rename(self._abs(src), self._abs(dst))
        self._move_tree(src, dst)
        self._note("rename_dir", src, dst)

    def op_rmtree(self) -> None:
        cands = [d for d in self.dirs.list() if d]
        if len(cands) < 3:
            return self.op_mkdir()
        rel = self.rng.choice(cands)
        shutil.rmtree(self._abs(rel))
        self._forget_tree(rel)
        self._note("rmtree", rel)

    def op_delete_file(self) -> None:
        if not len(self.files):
            return self.op_create()
        rel = self.rng.choice(self.files.list())
        os.unlink(self._abs(rel))
        self.files.discard(rel)
        self._note("delete_file", rel)

    def _link_target(self, link_rel: bytes) -> bytes:
        r = self.rng.random()
        pool = self.files.list() + [d for d in self.dirs.list() if d]
        if r < 0.4 and pool:  # relative, to an existing file or dir
            tgt = self.rng.choice(pool)
            start = os.path.dirname(link_rel) or b"."
            return os.path.relpath(tgt, start)
        if r < 0.6 and pool:  # absolute into the tree
            return os.path.join(self.root, self.rng.choice(pool))
        if r < 0.7:
            return b"/etc/hostname"
        if r < 0.85:  # dangling relative
            return b"../no/such/" + self._name(b"dangling")
        return self.rng.choice(HOSTILE) + b"-dangling"  # dangling with a hostile text

    def op_symlink(self) -> None:
        parent = self._pick_dir()
        rel = self._fresh(parent, b"ln")
        if rel is None:
            return
        tgt = self._link_target(rel)
        os.symlink(tgt, self._abs(rel))
        self.links.add(rel)
        self._note("symlink", rel, tgt)

    def op_retarget_link(self) -> None:
        if not len(self.links):
            return self.op_symlink()
        rel = self.rng.choice(self.links.list())
        tgt = self._link_target(rel)
        self._n += 1
        tmp = self._join(os.path.dirname(rel), b".ln-tmp-" + str(self._n).encode())
        os.symlink(tgt, self._abs(tmp))
        os.rename(self._abs(tmp), self._abs(rel))
        self._note("retarget_link", rel, tgt)

    def op_delete_link(self) -> None:
        if not len(self.links):
            return self.op_symlink()
        rel = self.rng.choice(self.links.list())
        os.unlink(self._abs(rel))
        self.links.discard(rel)
        self._note("delete_link", rel)

    def op_chmod_file(self) -> None:
        if not len(self.files):
            return self.op_create()
        rel = self.rng.choice(self.files.list())
        mode = self.rng.choice(FILE_MODES)
        os.chmod(self._abs(rel), mode)
        self._note(f"chmod_file {mode:o}", rel)

    def op_chmod_dir(self) -> None:
        cands = [d for d in self.dirs.list() if d]
        if not cands:
            return self.op_mkdir()
        rel = self.rng.choice(cands)
        mode = self.rng.choice(DIR_MODES)
        os.chmod(self._abs(rel), mode)
        self._note(f"chmod_dir {mode:o}", rel)

    def op_change_type(self) -> None:
        """Replace a path by one of another type under the same name."""
        r = self.rng.random()
        if r < 0.35 and len(self.files):  # file -> dir
            rel = self.rng.choice(self.files.list())
            if self._depth(rel) >= MAX_DEPTH:
                return
            os.unlink(self._abs(rel))
            os.mkdir(self._abs(rel))
            self.files.discard(rel)
            self.dirs.add(rel)
            inner = self._join(rel, b"was-a-file")
            self._write(inner, self.rng.randbytes(100))
            self.files.add(inner)
            self._note("file->dir", rel)
        elif r < 0.7 and len(self.links):  # symlink -> file
            rel = self.rng.choice(self.links.list())
            os.unlink(self._abs(rel))
            self._write(rel, self.rng.randbytes(self.rng.randint(0, 2000)))
            self.links.discard(rel)
            self.files.add(rel)
            self._note("link->file", rel)
        else:  # dir (with content) -> file
            cands = [d for d in self.dirs.list() if d]
            if not cands:
                return
            rel = self.rng.choice(cands)
            shutil.rmtree(self._abs(rel))
            self._forget_tree(rel)
            self._write(rel, self.rng.randbytes(self.rng.randint(0, 2000)))
            self.files.add(rel)
            self._note("dir->file", rel)

    OPS: ClassVar[list[tuple[str, int]]] = [
        ("op_create", 22),
        ("op_append", 7),
        ("op_rewrite_same_size", 8),
        ("op_write_then_rewrite", 3),
        ("op_mkdir", 8),
        ("op_rename_file", 7),
        ("op_atomic_save", 5),
        ("op_rename_dir", 4),
        ("op_rmtree", 2),
        ("op_delete_file", 6),
        ("op_symlink", 6),
        ("op_retarget_link", 2),
        ("op_delete_link", 2),
        ("op_chmod_file", 4),
        ("op_chmod_dir", 3),
        ("op_change_type", 2),
    ]

    def step(self) -> None:
        names = [n for n, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        op = self.rng.choices(names, weights)[0]
        getattr(self, op)()
        self.ops_done += 1

    def run(
        self,
        n: int,
        sleep_prob: float = 0.3,
        max_sleep: float = 0.02,
        stop: threading.Event | None = None,
    ) -> None:
        """Apply ``n`` random operations, sleeping 0..max_sleep s before a fraction of them."""
        for _ in range(n):
            if stop is not None and stop.is_set():
                return
            if sleep_prob and self.rng.random() < sleep_prob:
                time.sleep(self.rng.uniform(0, max_sleep))
            self.step()

    def populate(
        self, n_files: int, n_dirs: int, big_every: int = 0, max_size: int = 64 * 1024
    ) -> None:
        """Create a starting tree: ``n_dirs`` directories and ``n_files`` files spread over them."""
        for _ in range(n_dirs):
            parent = self._pick_dir(4)
            rel = self._fresh(parent, b"d")
            if rel is not None:
                os.mkdir(self._abs(rel))
                self.dirs.add(rel)
        dirs = self.dirs.list()
        for i in range(n_files):
            rel = self._fresh(self.rng.choice(dirs), b"f")
            if rel is None:
                continue
            if big_every and i % big_every == big_every - 1:
                size = self.rng.randint(512 * 1024, 2 * 1024 * 1024)
            else:
                size = self.rng.randint(0, max_size)
            self._write(rel, self.rng.randbytes(size))
            self.files.add(rel)
        for _ in range(max(1, n_files // 50)):
            self.op_symlink()

    def summary(self) -> str:
        return (
            f"seed={self.seed} ops={self.ops_done} files={len(self.files)} dirs={len(self.dirs)} "
            f"links={len(self.links)} counts={dict(self.counts)}"
        )


class ChurnThread(threading.Thread):
    """Run a Churn in a thread, keeping any exception for :meth:`join_checked`."""

    def __init__(
        self, churn: Churn, n: int, sleep_prob: float = 0.3, max_sleep: float = 0.02
    ) -> None:
        super().__init__(daemon=True, name=f"churn-{churn.seed}")
        self.churn = churn
        self.n = n
        self.sleep_prob = sleep_prob
        self.max_sleep = max_sleep
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.churn.run(self.n, self.sleep_prob, self.max_sleep, self.stop_event)
        except BaseException as e:  # re-raised in join_checked
            self.error = e

    def join_checked(self, timeout: float | None = None) -> None:
        self.join(timeout)
        if self.is_alive():
            self.stop_event.set()
            self.join(10)
            raise AssertionError(f"churn thread did not finish in time ({self.churn.summary()})")
        if self.error is not None:
            raise AssertionError(
                f"churn itself failed ({self.churn.summary()}); last ops:\n"
                + "\n".join(self.churn.log)
            ) from self.error


def pwned_hits(*extra_roots: bytes | str | os.PathLike) -> list[bytes]:
    """Entries called exactly ``pwned`` in cwd, /tmp, $HOME, / and (recursively) ``extra_roots``."""
    shallow = [os.getcwd(), "/tmp", os.path.expanduser("~"), "/"]
    hits = find_named(shallow, b"pwned", recursive=False)
    hits += find_named(extra_roots, b"pwned", recursive=True)
    return sorted(set(hits))


def assert_not_pwned(*roots: bytes | str | os.PathLike) -> None:
    hits = pwned_hits(*roots)
    assert not hits, f"a hostile file name was executed by a shell: {hits!r}"


def all_names(roots: Iterable[bytes]) -> list[bytes]:
    out = []
    for r in roots:
        for _dirpath, dirnames, filenames in os.walk(r):
            out.extend(dirnames + filenames)
    return out
