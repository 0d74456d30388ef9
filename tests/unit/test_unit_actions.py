"""Command mode's batch semantics (which callback fires for what) and the
template filling, with a recording Action: no daemon, real files."""

from __future__ import annotations

import dataclasses
import gc
import os
from pathlib import Path

import msgpack
import pytest

from syncsup.config import EX_CONFIG, Commands, Mode, Sync, Target
from syncsup.proto import Changes
from syncsup.proto._typed import to_wire
from syncsup.syncer.actions import Action, ActionError, TemplateAction, load_action, run_batch
from syncsup.syncer.actions import main as actions_main
from tests.helpers.toml import dumps
from tests.helpers.unit import fd_count, write


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
    return Sync(name="s", source=src, targets=(Target("command", ""),), mode=Mode.COMMAND,
                commands=commands or Commands())


def test_create_modify_delete_and_vanished(tmp_path: Path) -> None:
    (tmp_path / "new").write_text("n")
    (tmp_path / "old").write_text("o")
    rec = Recorder(_sync(tmp_path), Target("command", ""))
    run_batch(rec, Changes(paths={b"new", b"old", b"gone", b"blip"}, created={b"new", b"blip"}))
    # paths are a set now: reported in byte order
    assert rec.calls == [("delete", b"gone"), ("create", b"new"), ("modify", b"old")]


def test_moves_first_and_their_ends_not_reported_again(tmp_path: Path) -> None:
    (tmp_path / "b").write_text("b")
    rec = Recorder(_sync(tmp_path), Target("command", ""))
    run_batch(rec, Changes(moves=[(b"a", b"b")], paths={b"a", b"b"}, created={b"b"}))
    assert rec.calls == [("move", b"a", b"b")]


def test_without_on_move_a_move_is_delete_plus_create(tmp_path: Path) -> None:
    (tmp_path / "b").write_text("b")
    rec = Recorder(_sync(tmp_path), Target("command", ""), moves=False)
    run_batch(rec, Changes(moves=[(b"a", b"b")], paths={b"a", b"b"}, created={b"b"}))
    assert rec.calls == [("delete", b"a"), ("create", b"b")]


def test_new_tree_reports_every_entry_parents_first_and_root_is_startup(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_text("f")
    rec = Recorder(_sync(tmp_path), Target("command", ""))
    run_batch(rec, Changes(trees={b"", b"d"}))
    assert rec.calls == [("startup",), ("create", b"d"), ("create", b"d/e"),
                         ("create", b"d/e/f")]


def test_template_gets_hostile_names_as_single_arguments(tmp_path: Path) -> None:
    log = tmp_path / "log"
    script = ["/bin/sh", "-c", 'printf "%s\\0" "$@" >> "$0"', str(log)]
    name = b"-rf $(touch pwned)\n'\"\\\xff"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / os.fsdecode(name)).write_text("x")
    sync = _sync(tmp_path / "src", Commands(on_create=(*script, "{kind}", "{name}", "{path}")))
    run_batch(TemplateAction(sync, sync.targets[0]), Changes(paths={name}, created={name}))
    fields = log.read_bytes().split(b"\0")[:-1]
    assert fields == [b"create", name, os.fsencode(tmp_path / "src") + b"/" + name]
    assert not any(p.name == "pwned" for p in tmp_path.rglob("*"))


def test_failing_template_raises(tmp_path: Path) -> None:
    sync = _sync(tmp_path, Commands(on_delete=("/bin/false",)))
    with pytest.raises(RuntimeError, match="on_delete exited with 1"):
        run_batch(TemplateAction(sync, sync.targets[0]), Changes(paths={b"gone"}))


def test_verify_trees_are_reported_like_trees_and_sorted(tmp_path: Path) -> None:
    write(tmp_path / "b" / "f")
    write(tmp_path / "a")
    rec = Recorder(_sync(tmp_path), Target("command", ""))
    run_batch(rec, Changes(verify={b"", b"b"}, trees={b"a"}))
    assert rec.calls == [("startup",), ("create", b"a"), ("create", b"b"), ("create", b"b/f")]


def test_entries_of_a_new_tree_are_not_reported_twice(tmp_path: Path) -> None:
    write(tmp_path / "d" / "f")
    rec = Recorder(_sync(tmp_path), Target("command", ""))
    run_batch(rec, Changes(trees={b"d"}, paths={b"d", b"d/f", b"other"}, created={b"d/f"}))
    assert rec.calls == [("create", b"d"), ("create", b"d/f"), ("delete", b"other")]


def test_nothing_behind_a_symlink_is_reported(tmp_path: Path) -> None:
    src, outside = tmp_path / "src", tmp_path / "outside"
    write(outside / "secret")
    write(src / "d" / "f")
    os.symlink(outside, src / "d" / "link")
    os.symlink(outside, src / "top")
    rec = Recorder(_sync(src), Target("command", ""))
    run_batch(rec, Changes(trees={b"d", b"top"}, paths={b"top/secret", b"d/link/secret"}))
    assert rec.calls == [("create", b"d"), ("create", b"d/f"), ("create", b"d/link"),
                         ("create", b"top"),
                         # inside the source these are not there: gone, as far as it shows
                         ("delete", b"d/link/secret"), ("delete", b"top/secret")]
    assert not any(b"outside" in c[-1] for c in rec.calls if isinstance(c[-1], bytes))


def test_run_batch_closes_its_descriptors(tmp_path: Path) -> None:
    write(tmp_path / "d" / "e" / "f")

    class Failing(Recorder):
        def on_create(self, path: bytes) -> None:
            if path == b"d/e/f":
                raise RuntimeError("boom")
            super().on_create(path)

    before = fd_count()
    run_batch(Recorder(_sync(tmp_path), Target("command", "")), Changes(trees={b"d"}))
    assert fd_count() == before
    with pytest.raises(RuntimeError, match="boom"):
        run_batch(Failing(_sync(tmp_path), Target("command", "")), Changes(trees={b"d"}))
    gc.collect()
    assert fd_count() == before


def test_load_action(tmp_path: Path) -> None:
    sync = _sync(tmp_path, Commands(on_create=("true",)))
    assert type(load_action(sync, sync.targets[0])) is TemplateAction
    base = dataclasses.replace(sync, commands=Commands(action="syncsup.syncer.actions:Action"))
    assert type(load_action(base, base.targets[0])) is Action
    wrong = dataclasses.replace(sync, commands=Commands(action="collections:OrderedDict"))
    with pytest.raises(ActionError, match="not a subclass"):
        load_action(wrong, wrong.targets[0])


def _runner_config(tmp_path: Path) -> Path:
    log = tmp_path / "log"
    doc = {"settings": {"state_dir": str(tmp_path / "state")},
           "sync": [{"name": "s", "source": str(tmp_path / "src"), "mode": "command",
                     "on_create": ["/bin/sh", "-c", 'printf "%s\\0" "$1" >> "$0"', str(log),
                                   "{name}"]}]}
    (tmp_path / "src").mkdir()
    return write(tmp_path / "conf" / "s.toml", dumps(doc))


def _batch_file(tmp_path: Path, changes: Changes) -> str:
    path = write(tmp_path / "batch", msgpack.packb({"changes": to_wire(changes)},
                                                   use_bin_type=True))
    return str(path)


def test_runner_main_reports_a_batch(tmp_path: Path) -> None:
    conf = _runner_config(tmp_path)
    write(tmp_path / "src" / "\udcff-n")
    batch = _batch_file(tmp_path, Changes(paths={b"\xff-n"}, created={b"\xff-n"}))
    assert actions_main([str(conf), "s", "0", batch]) == 0
    assert (tmp_path / "log").read_bytes() == b"\xff-n\0"


def test_runner_main_exits_78_for_a_sync_no_longer_there(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was ``load_for_child(path, sync_name)``: the config no longer knows
    which sync a child serves (one child serves them all); the action runner,
    which does, checks it itself."""
    conf = _runner_config(tmp_path)
    batch = _batch_file(tmp_path, Changes(paths={b"x"}))
    assert actions_main([str(conf), "gone", "0", batch]) == EX_CONFIG == 78
    assert "'gone' is no longer in" in capsys.readouterr().err


def test_runner_main_reports_a_failing_action(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    conf = _runner_config(tmp_path)
    (tmp_path / "log").mkdir()  # the script cannot append to it
    write(tmp_path / "src" / "x")
    batch = _batch_file(tmp_path, Changes(paths={b"x"}, created={b"x"}))
    assert actions_main([str(conf), "s", "0", batch]) == 1
    assert "action failed: on_create exited with" in capsys.readouterr().err
