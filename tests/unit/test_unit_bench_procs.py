"""The bench's memory sums count each address space once: a child that
runs in its parent's memory (``vfork``, before its exec) is not a second
copy of the parent."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.procs import borrows_memory, memory_pids, tree_pids


def test_a_process_borrows_only_its_own_address_space() -> None:
    me = os.getpid()
    assert borrows_memory(me, me)  # the same address space: kcmp answers
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not borrows_memory(child.pid, me)  # exec'd: memory of its own
        assert child.pid in memory_pids(me) and child.pid in tree_pids(me)
    finally:
        child.kill()
        child.wait()
