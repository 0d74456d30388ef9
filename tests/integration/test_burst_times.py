"""A burst larger than one agent step, to a target with an agent: rsync
sends its paths whole, then the agent sets the directories' times that
rsync's writes and deletes changed (no second rsync for them), or, on a
remote target with no session open, one rsync times step (cheaper than
opening a session). Each case ends with the trees identical and every
directory's modification time, the root's too, the source's.

Locally the agent takes at most 256 names a step, over ssh 2,048: the
bursts are a little past each.

rsync 3.5.0 also sets the time of every directory above a name it is
given as ``./name`` (the paths step's list), after its writes and deletes
there, and the syncer then leaves those directories out of the times step
(``tests/integration/test_implied_dirs.py``). So the paths runs here get
``--omit-dir-times`` (but in the ``*-implied`` cases, where rsync's paths
step is what sets them), which the syncer's probe at start sees: the
directories' times, the root's among them, come out right only if the
times step that follows sets them, and the runs recorded show that no
rsync times step ran.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from syncsup.syncer.plan import MAX_PATHS_LOCAL, MAX_PATHS_REMOTE
from tests.helpers.churn import HOSTILE
from tests.helpers.daemon import sync_entry
from tests.helpers.oracle import mtime_diffs

from ._modes_helpers import wait_until
from .test_agent import (
    RsyncRun,
    converge,
    finish,
    one_round,
    rsync_logger,
    rsync_runs,
    transports,
    with_rsync,
    write_target_command,
)

pytestmark = pytest.mark.timeout(300)

DIRS = [b"d%d" % i for i in range(7)] + [b"deep/er/" + HOSTILE[0], b"deep/" + HOSTILE[1]]


def omitting_dir_times(tmp_path: Path, rsync: Path) -> Path:
    """An rsync that passes ``--omit-dir-times`` to every paths run (``-I``)
    and runs ``rsync`` with what it was given."""
    wrapper = tmp_path / "rsync-omit-dir-times"
    wrapper.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do\n'
        f'    [ "$a" = -I ] && exec {shlex.quote(str(rsync))} --omit-dir-times "$@"\n'
        "done\n"
        f'exec {shlex.quote(str(rsync))} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def times_run(run: RsyncRun) -> bool:
    """rsync's times step: a list sent with ``-d``, entries neither walked
    (``-r``) nor resent whole (``-I``)."""
    return (any(a.startswith(b"--files-from=") for a in run.argv) and b"-d" in run.argv
            and b"-I" not in run.argv and b"-r" not in run.argv)


@pytest.mark.parametrize("where", ["local", "ssh", "ssh-no-session", "local-implied",
                                   "ssh-implied"])
def test_a_burst_past_one_agent_step_gets_its_directory_times_from_the_agent(
        where, request, tmp_path: Path, src: Path, dst: Path, daemon_factory) -> None:
    rsync_bin, runs = rsync_logger(tmp_path)
    s = os.fsencode(src)
    for d in DIRS:
        os.makedirs(os.path.join(s, d))
        for i in range(3):
            with open(os.path.join(s, d, b"old%d" % i), "wb") as f:
                f.write(b"old %d\n" % i)
    if where.startswith("local"):
        spec, limit, extra = str(dst), MAX_PATHS_LOCAL, {}
    else:
        sshd = request.getfixturevalue("sshd")
        spec, limit = sshd.target(dst), MAX_PATHS_REMOTE
        command = write_target_command(tmp_path)[0]
        extra = {"ssh": {**sshd.ssh_config(), "target_command": str(command)}}
    if not where.endswith("implied"):
        # else rsync's paths step sets them and the times step leaves them out
        rsync_bin = omitting_dir_times(tmp_path, rsync_bin)
    d = daemon_factory([with_rsync(sync_entry(src, [spec], delay=0.2, **extra), rsync_bin)])
    converge(d, src, dst)
    assert transports(d, d.wait_idle()) == {spec: "agent"}, d.describe()
    if where.startswith("ssh") and where != "ssh-no-session":
        # a small change first, through the agent: its session stays open
        (src / "warm").write_bytes(b"w")
        converge(d, src, dst)
        d.wait_idle(60)
    mark = len(rsync_runs(runs))

    def burst() -> None:
        # new files in every directory, one old file of each deleted, and a
        # new file at the root: every directory's time moves, the root's too
        for i in range(limit + 40):
            with open(os.path.join(s, DIRS[i % len(DIRS)], b"n%05d" % i), "wb") as f:
                f.write(b"%d\n" % i)
        for d in DIRS:
            os.unlink(os.path.join(s, d, b"old0"))
        with open(os.path.join(s, b"top"), "wb") as f:
            f.write(b"top\n")

    one_round(d, burst)
    converge(d, src, dst)
    wait_until(lambda: not mtime_diffs(src, dst), "the target's directory times", timeout=60,
               context=lambda: "\n".join(mtime_diffs(src, dst)) + d.describe())
    d.wait_idle(60)
    done = rsync_runs(runs)[mark:]
    paths = [r for r in done if r.kind == "paths"]
    assert paths and max(len(r.names or ()) for r in paths) > limit, (
        "the burst was to go to rsync whole:\n" + "\n".join(r.describe() for r in done))
    by_rsync = [r for r in done if times_run(r)]
    if where == "ssh-no-session":
        # no session open: one rsync for the times costs less than opening one
        assert len(by_rsync) == 1, "\n".join(r.describe() for r in done)
    else:
        assert not by_rsync, ("the directories' times were to be set by the agent, not by "
                              "rsync:\n" + "\n".join(r.describe() for r in done))
    assert os.lstat(dst).st_mtime_ns == os.lstat(src).st_mtime_ns
    assert transports(d) == {spec: "agent"}, d.describe()
    finish(d, tmp_path, src, dst)
