"""The bench's memory sums count each address space once: a child that
runs in its parent's memory (``vfork``, before its exec) is not a second
copy of the parent."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

import bench.procs as procs


def _kcmp_works() -> bool:
    return procs._KCMP is not None and ctypes.CDLL(None).syscall(
        procs._KCMP, os.getpid(), os.getpid(), procs._KCMP_VM, 0, 0) == 0


@pytest.mark.skipif(not _kcmp_works(), reason="kcmp is not available here (seccomp, arch)")
def test_a_process_borrows_only_its_own_address_space() -> None:
    me = os.getpid()
    assert procs.borrows_memory(me, me)  # the same address space: kcmp answers
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not procs.borrows_memory(child.pid, me)  # exec'd: memory of its own
        assert child.pid in procs.memory_pids(me) and child.pid in procs.tree_pids(me)
    finally:
        child.kill()
        child.wait()


def test_a_borrowing_child_is_left_out_of_the_sums_but_not_its_children(
        monkeypatch: pytest.MonkeyPatch) -> None:
    kids = {1: [2, 3], 2: [4], 3: []}
    monkeypatch.setattr(procs, "children_map", lambda: kids)
    monkeypatch.setattr(procs, "borrows_memory", lambda pid, parent: pid == 2)
    assert sorted(procs.memory_pids(1)) == [1, 3, 4]
