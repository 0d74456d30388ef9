"""The layout of state_dir (syncsup/statedir.py) and its lock."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from syncsup.statedir import AlreadyRunning, StateDir, is_running


def test_paths(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / "state")
    assert sd.endpoint("control") == f"ipc://{tmp_path}/state/control.sock"
    assert sd.journal("www") == tmp_path / "state" / "journal-www.db"
    assert sd.tmp == tmp_path / "state" / "tmp"
    assert sd.lock == tmp_path / "state" / "lock"
    assert sd.control_path(2) == f"{tmp_path}/state/cm-2"


def test_long_state_dirs(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / ("x" * 120))
    with pytest.raises(OSError, match="too long for a unix socket"):
        sd.endpoint("dispatch")
    assert sd.control_path(0) is None  # ssh then connects directly


def test_a_control_path_leaves_ssh_room_for_its_temporary_name(tmp_path: Path) -> None:
    """ssh binds ``PATH.`` and 16 random characters before renaming to
    PATH, in a socket path of at most 107 bytes: PATH may have 90."""
    for room, fits in ((90, True), (91, False)):
        parent = tmp_path / ("d" * (room - len(f"{tmp_path}/") - len("/cm-0")))
        path = StateDir(parent).control_path(0)
        assert (path is not None) is fits, (room, path)
        if path is not None:
            assert len(path) == room


def test_create_is_private(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / "a" / "state")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "state").mkdir(mode=0o755)
    sd.create()
    assert stat.S_IMODE(os.stat(sd.path).st_mode) == 0o700


def test_one_supervisor_per_state_dir(tmp_path: Path) -> None:
    sd = StateDir(tmp_path)
    assert not is_running(tmp_path)
    held = sd.acquire_lock()
    try:
        assert is_running(tmp_path)
        assert sd.lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
            StateDir(tmp_path).acquire_lock()
    finally:
        held.close()
    assert not is_running(tmp_path)
    StateDir(tmp_path).acquire_lock().close()  # free again
