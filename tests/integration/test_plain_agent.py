"""The agent of a key without a forced command, as a process: a lean
interpreter replaces ``syncsup-target`` (as the confined agent's does) and
still answers. The same agent over a real sshd is in test_agent.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from syncsup.target._protocol import VERSION, encode_frame, read_frame
from tests.helpers.procs import cmdline_of

from ._modes_helpers import wait_until


def test_an_agent_without_a_forced_command_replaces_syncsup_target_by_a_lean_interpreter(
        tmp_path: Path) -> None:
    """A session stays open for ``agent_idle``, one per remote target at
    work: it runs without the site's hooks, the environment's module path
    or the command line's imports, and still answers."""
    root = tmp_path / "mirror"
    root.mkdir()
    (root / "f").write_bytes(b"x")
    proc = subprocess.Popen([sys.executable, "-P", "-m", "syncsup.target", str(root), "agent"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        argv = wait_until(lambda: (a := cmdline_of(proc.pid))[1:5] == [b"-I", b"-S", b"-B", b"-c"]
                          and a, "the agent's own interpreter", timeout=60)
        assert argv[6:8] == [os.fsencode(root), b"agent"]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(encode_frame({"op": "hello", "version": VERSION}))
        proc.stdin.write(encode_frame({"op": "stats", "paths": [b"f"]}))
        proc.stdin.flush()
        hello, stats = read_frame(proc.stdout), read_frame(proc.stdout)
        assert hello is not None and hello.get("ok"), hello
        assert stats is not None and stats.get("ok"), stats
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
