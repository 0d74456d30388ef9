"""An exact mirror under excludes in the modes that replay renames on the
target (``direct``: local, ``rsyncssh``: over the session's sshd), through
the agent and through rsync.

A rename whose destination is excluded must be a delete of its source name
on the target, a rename whose source is excluded a create of its
destination name, for files, symlinks and whole directories. Each round
ends when the target is byte for byte what ``rsync -a --delete`` with the
same excludes makes of the source in a fresh directory, and the target's
directories (the root too) carry the source's modification times.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.attack import make_world
from tests.helpers.oracle import mtime_diffs, rule_args, wait_like_oracle
from tests.helpers.tree import write

from ._modes_helpers import finish, sync_table, wait_until
from .test_agent import write_target_command

pytestmark = pytest.mark.timeout(300)

EXCLUDES = ["*.tmp", "*.swp"]

# (mode, how the target is reached): "agent" (the target's agent takes the
# small changes), "rsync" (agent_max_size = 0: rsync does all), "confined"
# (a confined key: renames through the chrooted agent, data by rsync's
# daemon mode over ssh).
CASES = [("direct", "agent"), ("direct", "rsync"), ("rsyncssh", "agent"),
         ("rsyncssh", "rsync"), ("rsyncssh", "confined")]


@pytest.fixture
def target(request, tmp_path: Path, dst: Path):
    """(the target as the config names it, its root, more sync settings)
    for the case's mode and way."""
    mode, way = request.node.callspec.params["case"]
    extra: dict = {"mode": mode, "exclude": EXCLUDES}
    if way == "rsync":
        extra["agent_max_size"] = 0
    if mode == "direct":
        yield str(dst), dst, extra
    elif way == "confined":
        asshd = request.getfixturevalue("asshd")
        for w in make_world("root", asshd):
            yield (f"{w.login}:{w.root}", w.root,
                   {**extra, "ssh": {**asshd.ssh_config(), "confined": True}})
    else:
        sshd = request.getfixturevalue("sshd")
        ssh = sshd.ssh_config()
        if way == "agent":
            ssh["target_command"] = str(write_target_command(tmp_path)[0])
        yield sshd.target(dst), dst, {**extra, "ssh": ssh}


def same_times(d, src: Path, dst: Path) -> None:
    wait_until(lambda: not mtime_diffs(src, dst), "the target's directory times",
               timeout=60, context=lambda: "\n".join(mtime_diffs(src, dst)) + d.describe())


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_renames_into_and_out_of_excluded_names(case, target, tmp_path, src, daemon_factory):
    spec, root, extra = target
    fresh = tmp_path / "oracle"
    rules = rule_args(EXCLUDES)
    s = src
    for rel in ("a.txt", "e.txt", "sub/b.txt", "sub/c.txt", "d/x.txt", "d/y/z.txt",
                "k.tmp", "keep/f.txt", "x.tmp/in.txt", "x.tmp/deep/in2.txt", "w.swp"):
        write(s / rel, rel.encode() * 50)
    os.symlink("a.txt", s / "link")
    os.symlink("keep", s / "dlink")
    d = daemon_factory([sync_table(src, [spec], delay=0.2, **extra)])

    def settle() -> None:
        wait_like_oracle(src, root, fresh, rules, on_timeout=d.describe)
        d.wait_idle()
        wait_like_oracle(src, root, fresh, rules, on_timeout=d.describe)
        same_times(d, src, root)

    settle()
    # a mirrored file renamed to an excluded name: a delete of a.txt
    os.rename(s / "a.txt", s / "a.tmp")
    settle()
    # an editor's save: the old version parked at an excluded name
    os.rename(s / "e.txt", s / "e.tmp")
    write(s / "e.txt", b"new version")
    os.unlink(s / "e.tmp")
    settle()
    # into excluded names in a subdirectory and across directories
    os.rename(s / "sub/b.txt", s / "sub/b.swp")
    os.rename(s / "sub/c.txt", s / "c.tmp")
    settle()
    # a symlink and a whole directory renamed to excluded names
    os.rename(s / "link", s / "link.tmp")
    os.rename(s / "d", s / "d.tmp")
    os.rename(s / "dlink", s / "dlink.swp")
    settle()
    # out of excluded names: creates of the destination
    os.rename(s / "k.tmp", s / "k.txt")
    os.rename(s / "x.tmp", s / "xdir")
    os.rename(s / "link.tmp", s / "link2")
    os.rename(s / "d.tmp", s / "d2")
    settle()
    # between excluded names, and a chain through one, in one batch
    os.rename(s / "w.swp", s / "w.tmp")
    os.rename(s / "keep/f.txt", s / "keep/f.tmp")
    os.rename(s / "keep/f.tmp", s / "keep/g.txt")
    os.rename(s / "xdir", s / "xdir.swp")
    os.rename(s / "xdir.swp", s / "xdir3")
    settle()
    assert not (root / "a.tmp").exists() and not (root / "sub/b.swp").exists()
    assert (root / "xdir3/deep/in2.txt").exists()
    finish(d, tmp_path, src)
