"""A file the applier writes is made unnamed with the permission bits it
is to have, so most files need no ``fchmod``; every mode still ends exact,
special bits and modes without write permission included."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import syncsup.target._apply as apply_mod
from syncsup.target._apply import Applier, Attrs

MTIME = 1_600_000_000 * 10**9


@pytest.fixture
def fchmods(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fchmod

    def counted(fd: int, mode: int) -> None:
        calls.append(mode)
        real(fd, mode)

    monkeypatch.setattr(apply_mod.os, "fchmod", counted)
    return calls


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o444, 0o4755, 0o1640, 0o000])
def test_every_mode_ends_exact(tmp_path: Path, mode: int, fchmods: list[int]) -> None:
    old = os.umask(0o022)
    try:
        a = Applier.open(str(tmp_path))
        try:
            a.put(b"f", b"data", Attrs(mode=mode, mtime_ns=MTIME))
            a.commit()
        finally:
            a.close()
    finally:
        os.umask(old)
    st = os.lstat(tmp_path / "f")
    assert stat.S_IMODE(st.st_mode) == mode and st.st_mtime_ns == MTIME
    assert (tmp_path / "f").read_bytes() == b"data"
    if a.unnamed and not mode & ~0o755 & 0o7777:
        assert fchmods == []  # made with its mode: nothing to set again


def test_a_replaced_file_keeps_no_old_mode(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    os.chmod(tmp_path / "f", 0o666)
    a = Applier.open(str(tmp_path))
    try:
        a.put(b"f", b"new", Attrs(mode=0o640, mtime_ns=MTIME))
        a.commit()
    finally:
        a.close()
    assert stat.S_IMODE(os.lstat(tmp_path / "f").st_mode) == 0o640
    assert (tmp_path / "f").read_bytes() == b"new"
