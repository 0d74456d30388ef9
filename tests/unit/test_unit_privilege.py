"""What the process may do, from its effective capabilities: the ``CapEff``
line read, the fallback where ``/proc`` is out of reach, the ``--super``
decision for a local rsync receiver (and never for a remote one), and the
state and runtime directories the unit's service user picks from systemd's
variables."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from syncsup import config, privilege, registry
from syncsup.config import Sync, Target
from syncsup.syncer import argv
from syncsup.syncer.plan import Step, StepKind

STATUS = """Name:\tpython3
Uid:\t998\t998\t998\t998
CapInh:\t000000000000001f
CapPrm:\t000000000000001f
CapEff:\t000000000000001f
CapBnd:\t000000000000001f
CapAmb:\t000000000000001f
"""
ALL_FIVE = 0x1F


def test_the_effective_set_is_read_from_the_status_text() -> None:
    assert privilege.parse_status(STATUS) == ALL_FIVE
    assert privilege.parse_status("Name:\tx\n") is None
    assert privilege.parse_status("CapEff:\tnot-hex\n") is None


def test_each_capability_is_its_own_bit() -> None:
    only_chown = 1 << privilege.CAP_CHOWN
    assert privilege.can_chown(only_chown)
    assert not privilege.can_chown(1 << privilege.CAP_DAC_OVERRIDE)
    assert all(privilege.has(c, ALL_FIVE) for c in privilege.MIRROR_CAPS)
    assert [c for c in privilege.MIRROR_CAPS if privilege.has(c, only_chown)] == [0]


def test_the_file_of_this_process_is_read(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(STATUS)
    assert privilege.effective(str(status)) == ALL_FIVE
    # and the real one agrees with what the kernel says of chown
    real = privilege.effective()
    assert privilege.parse_status(Path("/proc/self/status").read_text()) == real


def test_without_proc_uid_0_is_taken_for_every_capability(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The target's agent after its confinement sees no /proc: it decides
    by uid, as before."""
    gone = str(tmp_path / "none")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert privilege.can_chown(privilege.effective(gone))
    monkeypatch.setattr(os, "geteuid", lambda: 998)
    assert privilege.effective(gone) == 0


@pytest.mark.parametrize(("mask", "euid", "expected"), [
    (ALL_FIVE, 998, True),      # the unit's service user: --super keeps owners
    (ALL_FIVE & ~1, 998, False),  # no CAP_CHOWN: --super would fail every chown
    (0, 998, False),            # a plain user
    (ALL_FIVE, 0, False),       # root: rsync is super by itself
])
def test_super_only_for_a_non_root_receiver_with_chown(mask: int, euid: int,
                                                       expected: bool) -> None:
    assert privilege.super_receiver(mask, euid) is expected


LOCAL = Target(spec="/mnt/mirror", path="/mnt/mirror")
REMOTE = Target(spec="backup@host1:/srv/www", path="/srv/www", host="host1", user="backup")
DAEMON = Target(spec="host1::www", path="", host="host1", module="www")
TREE = Step(StepKind.TREE, (b"",))
PATHS = Step(StepKind.PATHS, (b"a",))


@pytest.mark.parametrize("step", [TREE, PATHS])
def test_super_goes_to_the_local_receiver_only(step: Step) -> None:
    sync = Sync(name="www", source=Path("/srv/www"), targets=(LOCAL, REMOTE, DAEMON))
    def rsync(s: Sync, t: config.Target, su: bool = True) -> list[str]:
        return argv.rsync_argv(s, t, step, "/l", startup=True, super_receiver=su)

    assert "--super" in rsync(sync, LOCAL)
    for remote in (REMOTE, DAEMON, dataclasses.replace(REMOTE, confined=True)):
        assert "--super" not in rsync(sync, remote)
    plain = dataclasses.replace(sync, rsync=config.RsyncOptions(archive=False))
    assert "--super" not in rsync(plain, LOCAL)
    assert "--super" not in rsync(sync, LOCAL, su=False)


def test_the_service_user_takes_systemds_directories(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """Under the unit (StateDirectory=syncsup/%i, RuntimeDirectory=syncsup)
    the service user's defaults are root's, where root's CLI looks; any
    other directory systemd names is not taken for them."""
    monkeypatch.setattr(os, "geteuid", lambda: 998)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("SYNCSUP_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/syncsup/www")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/syncsup")
    assert config.default_state_dir("www") == Path("/var/lib/syncsup/www")
    assert registry.registry_dir() == Path("/run/syncsup")
    # another config's name, another service's directories: the user's own
    assert config.default_state_dir("db") == tmp_path / "state" / "syncsup" / "db"
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/other/www")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/other")
    assert config.default_state_dir("www") == tmp_path / "state" / "syncsup" / "www"
    assert registry.registry_dir() == tmp_path / "run" / "syncsup"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another uid needs root")
def test_root_trusts_the_state_dir_of_the_service_user_only(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Root's CLI asks the unit's daemon (status, stop...), whose state_dir
    belongs to the service user; a state_dir of any other user stays
    refused (its owner could plant what root then trusts), and root never
    starts a daemon in the service user's (it would write through what the
    user put there)."""
    import pwd

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    conf = tmp_path / "www.toml"
    conf.write_text(f'[settings]\nstate_dir = "{state}"\n'
                    f'[[sync]]\nsource = "{tmp_path}"\ntargets = ["/mnt/m"]\n')
    conf.chmod(0o600)
    nobody = pwd.getpwuid(65534).pw_name
    monkeypatch.setenv("SYNCSUP_SERVICE_USER", "no-such-user-here")
    with pytest.raises(config.ConfigError, match="belongs to uid 65534"):
        config.load(conf, client=True)
    monkeypatch.setenv("SYNCSUP_SERVICE_USER", nobody)
    assert config.load(conf, client=True).settings.state_dir == state
    with pytest.raises(config.ConfigError, match="start it with systemctl"):
        config.load(conf)


def test_a_lock_swapped_for_a_link_or_a_fifo_is_never_followed(tmp_path: Path) -> None:
    """What another account could leave in a state_dir root reads: a
    symlink at ``lock`` to a file root owns, or a fifo. Root's status
    neither follows nor hangs, a start does not write through it."""
    from syncsup.statedir import AlreadyRunning, StateDir, is_running, read_pid

    victim = tmp_path / "shadow"
    victim.write_text("root's file\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / "lock").symlink_to(victim)
    assert not is_running(state) and read_pid(state) is None
    with pytest.raises(OSError):
        StateDir(state).acquire_lock()
    assert victim.read_text() == "root's file\n"
    (state / "lock").unlink()
    os.mkfifo(state / "lock")
    assert not is_running(state) and read_pid(state) is None  # returns, no hang
    with pytest.raises(OSError):
        StateDir(state).acquire_lock()
    (state / "lock").unlink()
    held = StateDir(state).acquire_lock()
    try:
        assert is_running(state) and read_pid(state) == str(os.getpid())
        with pytest.raises(AlreadyRunning):
            StateDir(state).acquire_lock()
    finally:
        held.close()
