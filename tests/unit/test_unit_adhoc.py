"""``syncsup start --source --target``: the config the options amount to,
where it goes, and that the config module reads back exactly that mirror."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncsup import adhoc
from syncsup import config as cfg


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def test_relative_paths_come_from_the_working_directory(tree: Path) -> None:
    plan = adhoc.prepare("src", ["dst", "backup@host1:/srv/www"], state_dir="st", cwd=tree)
    (sync,) = plan.doc["sync"]
    assert sync["source"] == str(tree / "src")
    assert sync["targets"] == [str(tree / "dst"), "backup@host1:/srv/www"]
    assert plan.state_dir == tree / "st" and plan.path == tree / "st" / "sync.toml"
    assert plan.doc["settings"] == {"state_dir": str(tree / "st")}
    assert "mode" not in sync and "delay" not in sync  # the config's defaults


def test_the_same_mirror_gets_the_same_name_from_anywhere(tree: Path) -> None:
    a = adhoc.prepare("src", ["dst"], cwd=tree)
    b = adhoc.prepare(str(tree / "src"), ["../dst"], cwd=tree / "elsewhere")
    assert a.doc["sync"][0]["name"] == b.doc["sync"][0]["name"]
    assert a.doc["sync"][0]["name"].startswith("adhoc-")
    assert a.path == b.path


@pytest.mark.parametrize("other", [(["elsewhere"], "src"), (["dst"], "elsewhere"),
                                   (["dst", "elsewhere"], "src")])
def test_another_mirror_gets_another_name(tree: Path, other: tuple[list[str], str]) -> None:
    targets, source = other
    a = adhoc.prepare("src", ["dst"], cwd=tree)
    b = adhoc.prepare(source, targets, cwd=tree)
    assert a.doc["sync"][0]["name"] != b.doc["sync"][0]["name"]
    assert a.state_dir != b.state_dir


def test_default_state_dir_for_a_user(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tree / "xdg"))
    plan = adhoc.prepare("src", ["dst"], cwd=tree)
    name = plan.doc["sync"][0]["name"]
    assert plan.state_dir == tree / "xdg" / "syncsup" / name
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tree / "home"))
    plan = adhoc.prepare("src", ["dst"], cwd=tree)
    assert plan.state_dir == tree / "home" / ".local" / "state" / "syncsup" / name


def test_default_state_dir_for_root(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    plan = adhoc.prepare("src", ["dst"], name="www", cwd=tree)
    assert plan.state_dir == Path("/var/lib/syncsup/www")
    assert plan.doc["sync"][0]["name"] == "www"


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "x\n", "", "n" * 65])
def test_a_bad_name_is_a_config_error(tree: Path, name: str) -> None:
    with pytest.raises(cfg.ConfigError) as exc:
        adhoc.prepare("src", ["dst"], name=name, cwd=tree)
    assert exc.value.key == "sync[0].name"


def test_a_path_that_is_not_utf8_is_a_config_error(tree: Path) -> None:
    with pytest.raises(cfg.ConfigError) as exc:
        adhoc.prepare(os.fsdecode(b"src\xff"), ["dst"], cwd=tree)
    assert exc.value.key == "sync[0].source"
    with pytest.raises(cfg.ConfigError) as exc:
        adhoc.prepare("src", ["dst", os.fsdecode(b"d\xfe")], cwd=tree)
    assert exc.value.key == "sync[0].targets[1]"


def test_written_file_loads_as_the_same_mirror(tree: Path) -> None:
    hostile = tree / 'we"ird $(x) \\ name'
    hostile.mkdir()
    plan = adhoc.prepare(hostile.name, ["dst"], mode="direct", delay=0.5, state_dir="st",
                         cwd=tree)
    adhoc.write(plan)
    assert (plan.path.stat().st_mode & 0o777) == 0o600
    assert (plan.state_dir.stat().st_mode & 0o777) == 0o700
    conf = cfg.load(plan.path)
    (sync,) = conf.syncs
    assert sync.source == hostile and [t.path for t in sync.targets] == [str(tree / "dst")]
    assert sync.mode is cfg.Mode.DIRECT and sync.delay == 0.5
    assert conf.settings.state_dir == plan.state_dir
    # written again (the next start): replaced whole, still private
    adhoc.write(adhoc.prepare(hostile.name, ["dst"], state_dir="st", cwd=tree))
    assert cfg.load(plan.path).syncs[0].mode is cfg.Mode.RSYNC
    assert sorted(p.name for p in plan.state_dir.iterdir()) == ["sync.toml"]


def test_a_state_dir_others_can_write_is_refused(tree: Path) -> None:
    (tree / "st").mkdir()
    os.chmod(tree / "st", 0o777)
    plan = adhoc.prepare("src", ["dst"], state_dir="st", cwd=tree)
    with pytest.raises(cfg.ConfigError) as exc:
        adhoc.write(plan)
    assert exc.value.key == "settings.state_dir"
    assert not plan.path.exists()


def test_a_config_it_did_not_write_is_never_replaced(tree: Path) -> None:
    (tree / "st").mkdir(mode=0o700)
    mine = b"[settings]\n# my own config\n"
    (tree / "st" / "sync.toml").write_bytes(mine)
    plan = adhoc.prepare("src", ["dst"], state_dir="st", cwd=tree)
    with pytest.raises(cfg.ConfigError) as exc:
        adhoc.write(plan)
    assert exc.value.key == "settings.state_dir" and "not written by" in str(exc.value)
    assert (tree / "st" / "sync.toml").read_bytes() == mine
    (tree / "st" / "sync.toml").unlink()
    os.symlink(tree / "elsewhere", tree / "st" / "sync.toml")
    with pytest.raises(cfg.ConfigError):
        adhoc.write(plan)
    assert (tree / "st" / "sync.toml").is_symlink()
