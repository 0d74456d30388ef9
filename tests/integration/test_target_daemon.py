"""syncsup-target's services, as processes. The rsync service: where the account has a
private runtime directory outside ROOT, syncsup-target *becomes* rsync
(nothing of it waits beside a transfer: a Python process for each transfer
was most of a target's memory at a first start); otherwise it waits beside
rsync and removes the module's temporary file after. A stand-in for rsync
reports what it was given (the real daemon over a real sshd is in
test_confinement.py and test_security.py). The agent without a forced
command: a lean interpreter replaces syncsup-target, as the confined
agent's does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from syncsup.target._daemon import daemon_config, lock_dir
from syncsup.target._protocol import VERSION, encode_frame, read_frame
from tests.helpers.procs import cmdline_of

from ._modes_helpers import wait_until

STAND_IN = """#!/bin/sh
conf="${3#--config=}"
{ echo "pid $$ $PPID"; echo "args $*"; echo "conf $conf"; cat "$conf"; } > "$OUT"
exit 7
"""

RUN = """
import sys
import syncsup.target._daemon as d
if len(sys.argv) > 3:
    d.lock_dir = lambda: sys.argv[3]
sys.exit(d.run_daemon(sys.argv[1], None, rsync=sys.argv[2]))
"""


def _serve(tmp_path: Path, root: Path, private: Path | None = None
           ) -> tuple[subprocess.CompletedProcess[bytes], dict[str, str], str]:
    stand_in = tmp_path / "rsync"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    out = tmp_path / "out"
    argv = [sys.executable, "-c", RUN, str(root), str(stand_in),
            *([str(private)] if private else [])]
    proc = subprocess.Popen(argv, env={**os.environ, "OUT": str(out)}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    lines = out.read_text().splitlines()
    head = dict(ln.split(" ", 1) for ln in lines[:3])
    pid, ppid = head["pid"].split()
    head.update(pid=pid, ppid=ppid, child_of=str(proc.pid))
    return done, head, "\n".join(lines[3:]) + "\n"


def test_the_rsync_service_becomes_rsync_with_a_kept_module(tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    root.mkdir()
    locks = lock_dir()
    assert locks is not None, "no private runtime directory for this account"
    done, seen, text = _serve(tmp_path, root)
    assert done.returncode == 7, done.stderr  # rsync's own status
    assert seen["pid"] == seen["child_of"], "syncsup-target stayed beside rsync"
    assert seen["args"] == f"--server --daemon --config={seen['conf']} ."
    conf = Path(seen["conf"])
    assert conf.parent == Path(locks) and conf.is_file()  # kept for the next connection
    assert text == daemon_config(str(root), os.geteuid(), os.getegid(), None,
                                 os.path.join(locks, "rsyncd.lock"))
    # the next connection with the same ROOT uses the same file
    again, seen2, _ = _serve(tmp_path, root)
    assert again.returncode == 7 and seen2["conf"] == seen["conf"]


def test_a_private_directory_inside_root_is_not_trusted_with_the_module(
        tmp_path: Path) -> None:
    """A module file kept where the module itself writes could be rewritten
    by one connection for the next: then the file is a temporary one, and
    syncsup-target waits for rsync and removes it."""
    root = tmp_path / "mirror"
    private = root / "run"
    private.mkdir(parents=True, mode=0o700)
    done, seen, text = _serve(tmp_path, root, private)
    assert done.returncode == 7, done.stderr
    assert seen["pid"] != seen["child_of"] and seen["ppid"] == seen["child_of"]
    conf = Path(seen["conf"])
    assert not conf.is_relative_to(root) and not conf.exists()  # removed after
    assert "path = " + str(root) in text and list(private.iterdir()) == []


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
