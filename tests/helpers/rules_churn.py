"""Seeded churn of a tree under filter rules, for the differential tests.

``RulesChurn(root, seed)`` creates, rewrites, deletes and renames files,
symlinks and directories whose names are chosen, half of the time, to match
the sync's rules (``RULES_*`` below): renames go into, out of and between
excluded names, an editor's save parks the old version at an excluded name.
The source itself is the model: each operation picks among the entries
listed in sorted order, so a seed gives the same sequence of operations on
every run, whatever the hash seed or the daemon does meanwhile.

The rules are written for three places at once: ``exclude`` (rsync's
``--exclude``), an ``exclude_from`` file and ``filter`` rules, and the
oracle passes them to rsync in the same order (tests/helpers/oracle.py).
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

# Names: plain ones, and ones the rules exclude (by any of the three kinds).
PLAIN = ["a.txt", "b.dat", "c", "notes.md", "x.py", "keep.bak"]
EXCLUDED = ["a.tmp", "b.swp", "cache", "c.o", "old.bak", "build", "n.part"]
DIR_PLAIN = ["d", "src", "lib", "deep"]
DIR_EXCLUDED = ["cache", "t.tmp", "build", "obj"]
FIXED = {"cache", "build", "c", "obj", "keep.bak"}


@dataclass(frozen=True)
class RuleSet:
    """One sync's rules, in the config's terms."""

    name: str
    exclude: tuple[str, ...] = ()
    exclude_from: tuple[str, ...] = ()  # lines of the exclude_from file
    filter: tuple[str, ...] = ()
    extra: dict[str, object] = field(default_factory=dict)

    def config(self, tmp: Path) -> dict[str, object]:
        """The sync table's rule keys (the exclude_from file written under ``tmp``)."""
        out: dict[str, object] = {"exclude": list(self.exclude), "filter": list(self.filter)}
        if self.exclude_from:
            path = tmp / f"{self.name}.excludes"
            path.write_text("# rules for the differential test\n"
                            + "\n".join(self.exclude_from) + "\n")
            out["exclude_from"] = str(path)
        return out

    def rsync_args(self, tmp: Path) -> list[str]:
        """The same rules as rsync arguments, in the daemon's order."""
        out = [f"--exclude={p}" for p in self.exclude]
        out += [f"--exclude={p}" for p in self.exclude_from]
        out += [f"--filter={r}" for r in self.filter]
        return out


# Plain excludes only (the agent takes the small changes), and a set with
# include, hide and anchored filter rules (rsync does everything).
PLAIN_RULES = RuleSet("plain", exclude=("*.tmp", "*.swp"),
                      exclude_from=("cache/", "*.o", "/build", "*.part"))
FILTER_RULES = RuleSet("filter", exclude=("*.tmp",), exclude_from=("*.swp", "cache"),
                       filter=("+ keep.bak", "- *.bak", "- /build/", "H *.o", "- obj/",
                               "- *.part"))


class RulesChurn:
    """Operations on ``root`` from a seeded generator (see the module doc)."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.ops = 0
        self.counter = 0

    # -- picking ------------------------------------------------------------------
    def _entries(self) -> tuple[list[Path], list[Path]]:
        """(non-directories, directories below the root), sorted."""
        files, dirs = [], []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            base = Path(dirpath)
            for n in dirnames:
                dirs.append(base / n)
            for n in sorted(filenames):
                files.append(base / n)
            for n in list(dirnames):
                if (base / n).is_symlink():
                    dirnames.remove(n)  # not followed
        return files, dirs

    def _parent(self, dirs: list[Path]) -> Path:
        shallow = [d for d in dirs if len(d.relative_to(self.root).parts) < 3
                   and not d.is_symlink()]
        return self.rng.choice([self.root, self.root, *shallow])

    def _name(self, dirs: bool = False) -> str:
        """A fresh name: excluded half of the time."""
        self.counter += 1
        pool = (DIR_EXCLUDED if self.rng.random() < 0.5 else DIR_PLAIN) if dirs else (
            EXCLUDED if self.rng.random() < 0.5 else PLAIN)
        base = self.rng.choice(pool)
        if base in FIXED:
            return base  # a rule names it whole
        stem, dot, ext = base.partition(".")
        return f"{stem}{self.counter}{dot}{ext}"  # the suffix the rules match is kept

    def _fresh(self, parent: Path, dirs: bool = False) -> Path:
        for _ in range(20):
            p = parent / self._name(dirs)
            if not os.path.lexists(p):
                return p
        return parent / f"n{self.counter}"

    def _data(self) -> bytes:
        return self.rng.randbytes(self.rng.choice([0, 10, 300, 5000]))

    # -- operations ------------------------------------------------------------------
    def op_create(self, files: list[Path], dirs: list[Path]) -> None:
        p = self._fresh(self._parent(dirs))
        p.write_bytes(self._data())

    def op_mkdir(self, files: list[Path], dirs: list[Path]) -> None:
        d = self._fresh(self._parent(dirs), dirs=True)
        d.mkdir()
        for _ in range(self.rng.randint(0, 3)):
            (d / self._name()).write_bytes(self._data())

    def op_symlink(self, files: list[Path], dirs: list[Path]) -> None:
        p = self._fresh(self._parent(dirs))
        os.symlink(self.rng.choice(["a.txt", "../d", "missing", "cache/x"]), p)

    def op_write(self, files: list[Path], dirs: list[Path]) -> None:
        regular = [f for f in files if not f.is_symlink()]
        if regular:
            self.rng.choice(regular).write_bytes(self._data())

    def op_delete(self, files: list[Path], dirs: list[Path]) -> None:
        if files:
            self.rng.choice(files).unlink()

    def op_rmtree(self, files: list[Path], dirs: list[Path]) -> None:
        if dirs and self.rng.random() < 0.5:
            d = self.rng.choice(dirs)
            if d.is_symlink():
                d.unlink()
            else:
                shutil.rmtree(d)

    def op_rename(self, files: list[Path], dirs: list[Path]) -> None:
        """A file or symlink to a new name (excluded or not) anywhere."""
        if files:
            os.rename(self.rng.choice(files), self._fresh(self._parent(dirs)))

    def op_rename_over(self, files: list[Path], dirs: list[Path]) -> None:
        """A file renamed over another one (an atomic save), names of any kind."""
        if len(files) >= 2:
            a, b = self.rng.sample(files, 2)
            os.rename(a, b)

    def op_rename_dir(self, files: list[Path], dirs: list[Path]) -> None:
        if not dirs:
            return
        d = self.rng.choice(dirs)
        dest_parent = self._parent([x for x in dirs if not x.is_relative_to(d)])
        os.rename(d, self._fresh(dest_parent, dirs=True))

    def op_editor_save(self, files: list[Path], dirs: list[Path]) -> None:
        """mv f f.tmp; write f; rm f.tmp (an editor's backup at an excluded name)."""
        regular = [f for f in files if not f.is_symlink()]
        if not regular:
            return
        f = self.rng.choice(regular)
        park = f.with_name(f.name + ".tmp")
        if os.path.lexists(park):
            return
        os.rename(f, park)
        f.write_bytes(self._data())
        if self.rng.random() < 0.8:
            park.unlink()

    def op_chmod(self, files: list[Path], dirs: list[Path]) -> None:
        regular = [f for f in files if not f.is_symlink()]
        if regular:
            os.chmod(self.rng.choice(regular), self.rng.choice([0o600, 0o644, 0o755]))

    OPS: ClassVar[list[tuple[str, int]]] = [
        ("op_create", 14), ("op_mkdir", 5), ("op_symlink", 4), ("op_write", 10),
        ("op_delete", 6), ("op_rmtree", 2), ("op_rename", 22), ("op_rename_over", 5),
        ("op_rename_dir", 10), ("op_editor_save", 8), ("op_chmod", 3)]

    def step(self) -> None:
        files, dirs = self._entries()
        names = [n for n, _w in self.OPS]
        weights = [w for _n, w in self.OPS]
        op = self.rng.choices(names, weights)[0]
        try:
            getattr(self, op)(files, dirs)
        except OSError:
            pass  # e.g. a rename onto a non-empty directory: the tree is still valid
        self.ops += 1

    def populate(self, n: int = 60) -> None:
        for _ in range(n // 3):
            self.op_mkdir(*self._entries())
        for _ in range(n):
            self.op_create(*self._entries())

    def run(self, n: int, max_sleep: float = 0.0) -> None:
        for _ in range(n):
            self.step()
            if max_sleep and self.rng.random() < 0.3:
                time.sleep(self.rng.uniform(0, max_sleep))


def tree_kinds(root: Path) -> dict[str, int]:
    """How many files, directories and symlinks ``root`` holds (for messages)."""
    out = {"file": 0, "dir": 0, "symlink": 0}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            mode = os.lstat(os.path.join(dirpath, n)).st_mode
            out["symlink" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else "file"] += 1
    return out
