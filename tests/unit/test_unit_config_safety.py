"""Config safety: every refusal through ``syncsup.config.load``
on real files, each naming the offending key; and host key checking left on.

A target equal to, inside, or containing its own source; two syncs writing the
same or nested targets (local or remote); a config file or an existing state_dir
writable by other users: all refused with a ConfigError whose ``key`` says where.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from syncsup.config import ConfigError, load
from syncsup.syncer.argv import ssh_argv
from tests.helpers.toml import dumps
from tests.helpers.unit import write


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """A private folder (0700) holding sources, targets and the config."""
    a = tmp_path / "area"
    a.mkdir()
    os.chmod(a, 0o700)
    (a / "src").mkdir()
    (a / "src2").mkdir()
    return a


def write_config(area: Path, syncs: list[dict[str, Any]], *, mode: int = 0o644,
                 state_dir: Path | None = None) -> Path:
    doc = {"settings": {"state_dir": str(state_dir or area / "state")}, "sync": syncs}
    return write(area / "syncsup.toml", dumps(doc), mode=mode)


def sync(name: str, source: Path | str, targets: list[str | Path], **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name, "source": str(source),
                         "targets": [str(t) for t in targets]}
    d.update(kw)
    return d


def refused(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value


# ------------------------------------------------------------ target vs source
def test_local_target_inside_its_own_source_is_refused(area: Path) -> None:
    (area / "src" / "mirror").mkdir()
    p = write_config(area, [sync("www", area / "src", [area / "src" / "mirror"])])
    err = refused(p)
    assert err.key == "sync[0].targets[0]"
    assert "inside its own source" in str(err)


def test_local_target_not_yet_existing_inside_its_source_is_refused(area: Path) -> None:
    p = write_config(area, [sync("www", area / "src", [area / "src" / "new" / "mirror"])])
    assert refused(p).key == "sync[0].targets[0]"


def test_target_inside_source_through_a_symlink_is_refused(area: Path) -> None:
    (area / "src" / "mirror").mkdir()
    os.symlink(area / "src" / "mirror", area / "alias")
    p = write_config(area, [sync("www", area / "src", ["/elsewhere-ok", area / "alias"])])
    err = refused(p)
    assert err.key == "sync[0].targets[1]"


def test_target_equal_to_the_source_is_refused(area: Path) -> None:
    p = write_config(area, [sync("www", area / "src", [area / "src"])])
    err = refused(p)
    assert err.key == "sync[0].targets[0]"
    assert "source itself" in str(err)


def test_target_equal_to_the_source_written_differently_is_refused(area: Path) -> None:
    p = write_config(area, [sync("www", area / "src", [f"{area}/./src2/../src/"])])
    assert refused(p).key == "sync[0].targets[0]"


def test_target_containing_its_source_is_refused(area: Path) -> None:
    p = write_config(area, [sync("www", area / "src", [area])])
    err = refused(p)
    assert err.key == "sync[0].targets[0]"
    assert "contains its own source" in str(err)


def test_refusal_names_the_target_index_in_a_later_sync(area: Path) -> None:
    p = write_config(area, [
        sync("a", area / "src2", [area / "m1"]),
        sync("b", area / "src", [area / "m2", area / "src" / "sub"]),
    ])
    assert refused(p).key == "sync[1].targets[1]"


# -------------------------------------------------- two syncs, one target
def test_two_syncs_with_the_same_local_target_are_refused(area: Path) -> None:
    p = write_config(area, [
        sync("a", area / "src", [area / "mirror"]),
        sync("b", area / "src2", [area / "mirror"]),
    ])
    err = refused(p)
    assert err.key == "sync[1].targets[0]"
    assert "overlaps sync[0].targets[0]" in str(err)


def test_two_syncs_with_nested_local_targets_are_refused(area: Path) -> None:
    p = write_config(area, [
        sync("a", area / "src", [area / "mirror"]),
        sync("b", area / "src2", [area / "other", area / "mirror" / "deeper"]),
    ])
    err = refused(p)
    assert err.key == "sync[1].targets[1]"
    assert "overlaps sync[0].targets[0]" in str(err)


def test_two_syncs_with_nested_local_targets_outer_second_are_refused(area: Path) -> None:
    p = write_config(area, [
        sync("a", area / "src", [area / "mirror" / "deeper"]),
        sync("b", area / "src2", [area / "mirror"]),
    ])
    assert refused(p).key == "sync[1].targets[0]"


def test_two_syncs_with_the_same_remote_target_are_refused(area: Path) -> None:
    p = write_config(area, [
        sync("a", area / "src", ["user@host:/p"]),
        sync("b", area / "src2", ["user@host:/p"]),
    ])
    err = refused(p)
    assert err.key == "sync[1].targets[0]"
    assert "overlaps" in str(err)


def test_two_syncs_with_the_same_remote_target_spelled_differently_are_refused(
        area: Path) -> None:
    p = write_config(area, [
        sync("a", area / "src", ["user@host:/p"]),
        sync("b", area / "src2", ["user@host:/p/"]),
    ])
    assert refused(p).key == "sync[1].targets[0]"


def test_two_syncs_with_nested_remote_targets_are_refused(area: Path) -> None:
    p = write_config(area, [
        sync("a", area / "src", ["user@host:/p"]),
        sync("b", area / "src2", ["user@host:/p/sub"]),
    ])
    assert refused(p).key == "sync[1].targets[0]"


def test_distinct_targets_are_fine(area: Path) -> None:
    p = write_config(area, [
        sync("a", area / "src", [area / "m1", "user@host:/p", "user@other:/p"]),
        sync("b", area / "src2", [area / "m2", "user@host:/p2", "user@host:/p-other"]),
    ])
    conf = load(p)
    assert [s.name for s in conf.syncs] == ["a", "b"]


# ------------------------------------------------ files writable by others
@pytest.mark.parametrize("mode", [0o666, 0o646, 0o664, 0o622])
def test_config_writable_by_others_is_refused(area: Path, mode: int) -> None:
    p = write_config(area, [sync("www", area / "src", [area / "mirror"])], mode=mode)
    os.chmod(p, mode)  # whatever the umask did
    err = refused(p)
    assert err.key == "config"
    assert "writable by other users" in str(err)
    assert str(p) in str(err)


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
def test_existing_state_dir_writable_by_others_is_refused(area: Path, mode: int) -> None:
    state = area / "state"
    state.mkdir()
    os.chmod(state, mode)
    p = write_config(area, [sync("www", area / "src", [area / "mirror"])], state_dir=state)
    err = refused(p)
    assert err.key == "settings.state_dir"
    assert "writable by other users" in str(err)
    assert str(state) in str(err)


def test_private_config_and_fresh_state_dir_load(area: Path) -> None:
    state = area / "fresh-state"
    assert not state.exists()
    p = write_config(area, [sync("www", area / "src", [area / "mirror"])], mode=0o644,
                     state_dir=state)
    conf = load(p)
    assert conf.settings.state_dir == state
    assert conf.syncs[0].source == area / "src"
    assert not state.exists()  # loading creates nothing


def test_existing_private_state_dir_loads(area: Path) -> None:
    state = area / "state"
    state.mkdir()
    os.chmod(state, 0o700)
    p = write_config(area, [sync("www", area / "src", [area / "mirror"])], mode=0o600,
                     state_dir=state)
    assert load(p).settings.state_dir == state


# ------------------------------------------------------- host key checking
def _ssh_opts(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-o"]


def test_ssh_host_key_checking_is_not_turned_off_by_syncsup(area: Path) -> None:
    p = write_config(area, [sync("www", area / "src", ["user@host:/p"],
                                 mode="rsyncssh", ssh={"port": 2222})])
    argv = ssh_argv(load(p).syncs[0])
    assert argv[0] == "ssh"
    joined = " ".join(argv).lower()
    assert "stricthostkeychecking" not in joined
    assert "userknownhostsfile=/dev/null" not in joined
    for opt in _ssh_opts(argv):
        assert opt.split("=", 1)[0].strip().lower() != "stricthostkeychecking", opt


def test_ssh_host_key_checking_is_not_turned_off_with_control_path(area: Path) -> None:
    p = write_config(area, [sync("www", area / "src", ["user@host:/p"])])
    argv = ssh_argv(load(p).syncs[0], control_path=str(area / "cm.sock"))
    assert "StrictHostKeyChecking=no" not in argv
    assert "stricthostkeychecking" not in " ".join(argv).lower()


def test_ssh_host_key_checking_off_only_when_the_user_says_so(area: Path) -> None:
    p = write_config(area, [sync("www", area / "src", ["user@host:/p"],
                                 ssh={"options": ["StrictHostKeyChecking=no"]})])
    argv = ssh_argv(load(p).syncs[0])
    assert _ssh_opts(argv).count("StrictHostKeyChecking=no") == 1


def test_ssh_user_strict_host_key_checking_yes_is_kept(area: Path) -> None:
    p = write_config(area, [sync("www", area / "src", ["user@host:/p"],
                                 ssh={"options": ["StrictHostKeyChecking=yes"]})])
    opts = _ssh_opts(ssh_argv(load(p).syncs[0]))
    assert "StrictHostKeyChecking=yes" in opts
    assert "StrictHostKeyChecking=no" not in opts


# ------------------------------------------------------- files the daemon writes
def test_status_and_log_file_names_are_not_resolved(area: Path, tmp_path: Path) -> None:
    """A symlink at ``status_file`` or ``log_file`` must stay a symlink in the
    config: resolving it would make the daemon replace (status) or append
    to (log) whatever it points at. Their directories are resolved."""
    victim = tmp_path / "victim"
    victim.write_text("private")
    (area / "real").mkdir()
    os.symlink(area / "real", area / "via")
    for name in ("status", "daemon.log"):
        os.symlink(victim, area / "real" / name)
    doc = {"settings": {"state_dir": str(area / "state"), "status_file": f"{area}/via/status",
                        "log_file": "via/daemon.log"},
           "sync": [sync("s", area / "src", [area / "dst"])]}
    conf = load(write(area / "syncsup.toml", dumps(doc), mode=0o600))
    assert conf.settings.status_file == area / "real" / "status"
    assert conf.settings.log_file == area / "real" / "daemon.log"
