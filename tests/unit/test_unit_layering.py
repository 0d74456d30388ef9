"""The package layout holds: the roles (watcher, collator, syncer,
supervisor) import only the shared floor, never each other; no module
imports another package's private module; the shared floor imports no role;
and ``syncsup.target`` runs on a host that has none of the daemon's code.

Read from the source with ``ast``, so a forbidden import fails here even if
nothing runs the line that holds it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "syncsup"
ROLES = ("watcher", "collator", "syncer", "supervisor")
# Front ends: they start or inspect the daemon and may import any part of it.
FRONT = ("cli", "check", "adhoc", "relays", "__main__", "_docgen", "lsyncd")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (``from a import b`` counts as ``a.b``
    too: b may be a module), absolute or relative."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return [(n, m) for n, m in out if m == "syncsup" or m.startswith("syncsup.")]


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _private_of_other(me: str, target: str) -> bool:
    """Does ``target`` name a private module (or name) inside a package
    other than ``me``'s own?"""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            owner = ".".join(parts[:i])
            return not (me == owner or me.startswith(owner + "."))
    return False


def _violations() -> list[str]:
    """One line per forbidden import: ``FILE:LINE imports MODULE: why``."""
    found: list[str] = []
    said: set[tuple[Path, int, str]] = set()
    for path in sorted(PKG.rglob("*.py")):
        me = _module(path)
        mine = _top(me)
        for line, target in _imports(path):
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            theirs = _top(target)
            problems: list[str] = []
            # _docgen is a development tool, never imported at run time: it
            # reads each command's own tables (the target's usage, exit codes)
            # where they are written.
            if mine != "_docgen" and _private_of_other(me, target):
                problems.append("another package's private module")
            if mine not in FRONT and theirs != mine:
                if theirs in ROLES:
                    problems.append("a role imports another role" if mine in ROLES
                                    else "shared code imports a role")
                if mine == "target" and theirs not in (
                        "", "__version__", "dirfd", "paths", "msgcheck", "privilege"):
                    problems.append("the target imports daemon code")
            for why in problems:
                if (path, line, why) not in said:  # "from a import b": a and a.b
                    said.add((path, line, why))
                    found.append(f"{where}: {why}")
    return found


def test_no_role_imports_another_and_no_private_import_crosses_a_package() -> None:
    assert _violations() == []


@pytest.mark.parametrize(("source", "bad"), [
    ("from syncsup.watcher.tree import BLIND_REASONS\n", "a role imports another role"),
    ("from syncsup.proto._typed import to_wire\n", "private module"),
    ("from syncsup.proto import _typed\n", "private module"),
])
def test_the_walk_sees_a_forbidden_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          source: str, bad: str) -> None:
    """The checker itself can fail: a copy of the package with one bad line
    planted in the syncer is refused."""
    import shutil

    copy = tmp_path / "syncsup"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "syncer" / "planted.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PKG", copy)
    found = _violations()
    assert len(found) == 1 and bad in found[0] and "planted.py" in found[0]


def loaded_by(script: str) -> list[str]:
    """The modules a fresh interpreter has loaded after ``script``."""
    out = subprocess.run(
        [sys.executable, "-P", "-c",
         "import json, sys\n" + script + "\nprint(json.dumps(sorted(sys.modules)))\n"],
        cwd=ROOT, check=True, capture_output=True, text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout
    return list(json.loads(out))


def test_the_target_loads_no_daemon_code() -> None:
    """Import every module of ``syncsup.target`` in a fresh interpreter: none
    of the daemon's packages (nor ZeroMQ) may come along."""
    names = sorted(_module(p) for p in (PKG / "target").glob("*.py")
                   if p.name != "__main__.py")  # that one runs the command
    loaded = loaded_by("import importlib\n"
                       f"for name in {names!r}:\n"
                       "    importlib.import_module(name)")
    assert "syncsup.target._agent" in loaded  # the import really happened
    daemon = [m for m in loaded if m.split(".")[0] == "zmq" or (
        m.startswith("syncsup.") and _top(m) in ("proto", "config", *ROLES))]
    assert daemon == []


def test_the_daemon_loads_no_crypto_library() -> None:
    """What the supervisor and the template import (the CLI, the supervisor,
    every role) must not load ``_hashlib``/``_ssl``: they map libcrypto, and
    the pages its initialisation touches (3 MB) are private to the first
    process that loaded it, the supervisor, for as long as the daemon runs.
    Code that needs a digest imports ``hashlib`` where it computes one."""
    loaded = loaded_by("import syncsup.cli, syncsup.supervisor._supervisor\n"
                       "from syncsup.supervisor import template\n"
                       "template.preload()  # every role, as the children get them")
    assert "syncsup.syncer._main" in loaded  # the imports really happened
    assert [m for m in loaded if m in ("_hashlib", "_ssl", "hashlib", "ssl")] == []
