"""Command mode's batch semantics (which callback fires for what) and the
template filling, with a recording Action: no daemon, real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncsup.config import Commands, Sync, Target
from syncsup.syncer.actions import Action, TemplateAction, run_batch
from syncsup.syncer.moves import local_renames


class Recorder(Action):
    def __init__(self, sync: Sync, target: Target, moves: bool = True) -> None:
        super().__init__(sync, target)
        self.calls: list[tuple[bytes | str, ...]] = []
        self._moves = moves

    def on_startup(self) -> None:
        self.calls.append(("startup",))

    def on_create(self, path: bytes) -> None:
        self.calls.append(("create", path))

    def on_modify(self, path: bytes) -> None:
        self.calls.append(("modify", path))

    def on_delete(self, path: bytes) -> None:
        self.calls.append(("delete", path))

    def on_move(self, src: bytes, dst: bytes) -> None:
        self.calls.append(("move", src, dst))

    def handles_moves(self) -> bool:
        return self._moves


def _sync(src: Path, commands: Commands | None = None) -> Sync:
    return Sync(name="s", source=src, targets=(Target("command", ""),), mode="command",
                commands=commands or Commands())


def _batch(**kw: object) -> dict[str, object]:
    return {"moves": [], "trees": [], "paths": [], "created": [], "startup": False, **kw}


def test_create_modify_delete_and_vanished(tmp_path: Path) -> None:
    (tmp_path / "new").write_text("n")
    (tmp_path / "old").write_text("o")
    rec = Recorder(_sync(tmp_path), Target("command", ""))
    run_batch(rec, _batch(paths=[b"new", b"old", b"gone", b"blip"], created=[b"new", b"blip"]))
    assert rec.calls == [("create", b"new"), ("modify", b"old"), ("delete", b"gone")]


def test_moves_first_and_their_ends_not_reported_again(tmp_path: Path) -> None:
    (tmp_path / "b").write_text("b")
    rec = Recorder(_sync(tmp_path), Target("command", ""))
    run_batch(rec, _batch(moves=[[b"a", b"b"]], paths=[b"a", b"b"], created=[b"b"]))
    assert rec.calls == [("move", b"a", b"b")]


def test_without_on_move_a_move_is_delete_plus_create(tmp_path: Path) -> None:
    (tmp_path / "b").write_text("b")
    rec = Recorder(_sync(tmp_path), Target("command", ""), moves=False)
    run_batch(rec, _batch(moves=[[b"a", b"b"]], paths=[b"a", b"b"], created=[b"b"]))
    assert rec.calls == [("delete", b"a"), ("create", b"b")]


def test_new_tree_reports_every_entry_parents_first_and_root_is_startup(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_text("f")
    rec = Recorder(_sync(tmp_path), Target("command", ""))
    run_batch(rec, _batch(trees=[b"", b"d"]))
    assert rec.calls == [("startup",), ("create", b"d"), ("create", b"d/e"),
                         ("create", b"d/e/f")]


def test_template_gets_hostile_names_as_single_arguments(tmp_path: Path) -> None:
    log = tmp_path / "log"
    script = ["/bin/sh", "-c", 'printf "%s\\0" "$@" >> "$0"', str(log)]
    name = b"-rf $(touch pwned)\n'\"\\\xff"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / os.fsdecode(name)).write_text("x")
    sync = _sync(tmp_path / "src", Commands(on_create=(*script, "{kind}", "{name}", "{path}")))
    run_batch(TemplateAction(sync, sync.targets[0]), _batch(paths=[name], created=[name]))
    fields = log.read_bytes().split(b"\0")[:-1]
    assert fields == [b"create", name, os.fsencode(tmp_path / "src") + b"/" + name]
    assert not any(p.name == "pwned" for p in tmp_path.rglob("*"))


def test_failing_template_raises(tmp_path: Path) -> None:
    sync = _sync(tmp_path, Commands(on_delete=("/bin/false",)))
    with pytest.raises(RuntimeError, match="on_delete exited with 1"):
        run_batch(TemplateAction(sync, sync.targets[0]), _batch(paths=[b"gone"]))


def test_local_renames_keep_inodes_and_refuse_symlinked_parents(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    (dst / "d").mkdir(parents=True)
    (dst / "d" / "f").write_text("x")
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", dst / "link")
    ino = (dst / "d" / "f").stat().st_ino
    assert local_renames(str(dst), [[b"d", b"e"], [b"e/f", b"link/f"], [b"nope", b"x"]]) == 1
    assert (dst / "e" / "f").stat().st_ino == ino
    assert not (tmp_path / "outside" / "f").exists()


def test_files_from_names_are_never_comments() -> None:
    from syncsup.syncer._main import _names

    assert _names([b"", b"#hash", b";semi", b"a/b"]) == b".\0./#hash\0./;semi\0./a/b\0"


def test_paths_below_a_non_directory_become_that_ancestor(tmp_path: Path) -> None:
    from syncsup.syncer._main import _effective

    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "file").write_text("now a file")
    os.symlink(tmp_path / "d", tmp_path / "link")
    root = os.fsencode(tmp_path)
    got = _effective(root, [b"d/e/x", b"file/old/y", b"file/z", b"link/e", b"gone/q", b"top"])
    assert got == [b"d/e/x", b"file", b"link", b"gone", b"top"]
