"""Which remote targets share an ssh master: the syncer's slots number
each login (the whole ssh command and the user and host) as first met, and
every target of the same login gets the same control path, across syncs;
any difference (port, key, option, user) gets another."""

from __future__ import annotations

from pathlib import Path

from syncsup import config as cfg
from syncsup.statedir import StateDir
from syncsup.syncer.slots import make_slots


def test_targets_of_one_login_share_a_control_path_and_no_other(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "st")
    state.tmp.mkdir(parents=True)
    src = [tmp_path / n for n in ("a", "b", "c")]
    for p in src:
        p.mkdir()
    conf = cfg.parse({
        "settings": {"state_dir": str(state.path)},
        "sync": [
            {"name": "one", "source": str(src[0]), "agent_max_size": 0,
             "targets": ["backup@host1:/srv/one", "backup@host1:/srv/one-copy",
                         "root@host1:/srv/one", str(tmp_path / "local")]},
            {"name": "two", "source": str(src[1]), "agent_max_size": 0,
             "targets": ["backup@host1:/srv/two"]},
            {"name": "three", "source": str(src[2]), "agent_max_size": 0,
             "ssh": {"port": 2222}, "targets": ["backup@host1:/srv/three"]},
        ],
    }, tmp_path / "sync.toml")
    slots = make_slots(conf, state)
    paths = {key: slot.control_path for key, slot in slots.items()}
    assert paths[("one", 0)] == paths[("one", 1)] == paths[("two", 0)] == f"{state.path}/cm-0"
    assert paths[("one", 2)] == f"{state.path}/cm-1"     # another user
    assert paths[("three", 0)] == f"{state.path}/cm-2"   # another port
    assert paths[("one", 3)] is None                      # a local target has none
