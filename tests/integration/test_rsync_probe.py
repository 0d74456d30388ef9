"""The local rsync is judged by what its sender does, not by its version:
the start-up probe races a symlink into a parent directory of what the
sender is about to read, and syncsup refuses a sender that follows it only
where another user can write in the source (or everywhere with
``strict_rsync``); elsewhere it warns once and runs.

"rsync" builds stand in for the two cases the version cannot tell apart: a
3.5.0 built without the fix (its probe-shaped run reads by path, as old
senders did) and a distribution's 3.2.7 with the fix backported (it refuses
a symlink in a parent, as 3.5.0 does). Every other run of theirs is the
real rsync, so the daemon's transfers are real."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from syncsup.rsync_probe import foreign_writer, sender_follows
from syncsup.timings import Timings
from tests.helpers.daemon import run_cli, sync_entry, write_config
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import wait_converged

pytestmark = pytest.mark.timeout(240)

# The sender part of an rsync run, for the probe's shape of command line
# (``-a --no-inc-recursive --bwlimit=N -- SRC/ DST/``): the file list first,
# then each file read, slowly enough for the probe's swap; FOLLOW says
# whether a file is opened by path (through a symlinked parent) or refused.
FAKE = """#!{python}
import os, sys, time
VERSION, FOLLOW = {version!r}, {follow!r}
args = sys.argv[1:]
if args == ["--version"]:
    print(f"rsync  version {{VERSION}}  protocol version 32")
    sys.exit(0)
if not any(a.startswith("--bwlimit=") for a in args):
    os.execvp("rsync", ["rsync", *args])
src, dst = args[-2].rstrip("/"), args[-1].rstrip("/")
names = sorted(os.path.relpath(os.path.join(d, f), src)
               for d, _, files in os.walk(src) for f in files)
rc = 0
for rel in names:
    parts = rel.split("/")
    if not FOLLOW and any(os.path.islink(os.path.join(src, *parts[:i]))
                          for i in range(1, len(parts))):
        rc = 23
        continue
    with open(os.path.join(src, rel), "rb") as fh:
        data = fh.read()
        time.sleep(0.5)
    os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
    with open(os.path.join(dst, rel), "wb") as out:
        out.write(data)
sys.exit(rc)
"""


def fake_rsync(tmp_path: Path, version: str, follow: bool) -> str:
    path = tmp_path / f"rsync-{version}-{'follows' if follow else 'fixed'}"
    path.write_text(FAKE.format(python=sys.executable, version=version, follow=follow))
    path.chmod(0o755)
    return str(path)


def _config(tmp_path: Path, src: Path, dst: Path, binary: str, **settings) -> Path:
    sync = sync_entry(src, [dst])
    sync["rsync"] = {"binary": binary}
    return write_config(tmp_path / "probe.toml", {
        "settings": {"state_dir": str(tmp_path / "state"), **settings}, "sync": [sync]})


def test_the_probe_judges_behaviour_not_the_version(tmp_path):
    limit = Timings().probe_timeout  # what the daemon gives it
    assert sender_follows("rsync", limit) is False, "this machine's rsync follows a raced symlink"
    assert sender_follows(fake_rsync(tmp_path, "3.5.0", follow=True), limit) is True
    assert sender_follows(fake_rsync(tmp_path, "3.2.7", follow=False), limit) is False
    assert sender_follows(str(tmp_path / "no-such-rsync"), limit) is None


def test_foreign_writer(tmp_path):
    top = tmp_path / "tree"
    (top / "a" / "b").mkdir(parents=True)
    for d in (top, top / "a", top / "a" / "b"):
        d.chmod(0o755)
    assert foreign_writer(top) is None
    os.chown(top / "a" / "b", 4321, 4321)
    assert foreign_writer(top) == f"{top / 'a' / 'b'} belongs to uid 4321"
    os.chown(top / "a" / "b", 0, 0)
    (top / "a").chmod(0o777)
    assert "writable by every user" in (foreign_writer(top) or "")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_following_rsync_is_refused_where_another_user_can_write(tmp_path, src, dst):
    (src / "shared").mkdir()
    (src / "shared" / "f").write_bytes(b"data\n")
    os.chown(src / "shared", 4321, 4321)
    binary = fake_rsync(tmp_path, "3.5.0", follow=True)
    config = _config(tmp_path, src, dst, binary)
    r = run_cli("check", config, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    problems = [ln for ln in r.stdout.splitlines() if ln.startswith("problem:")]
    assert len(problems) == 1 and "belongs to uid 4321" in problems[0], r.stdout
    r = run_cli("start", config, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "cannot start" in r.stderr and "belongs to uid 4321" in r.stderr, r.stderr
    assert os.listdir(dst) == []
    assert_no_leftovers(tmp_path)

    # The same source with a sender that does not follow: judged safe,
    # whatever its version says.
    config = _config(tmp_path, src, dst, fake_rsync(tmp_path, "3.2.7", follow=False))
    r = run_cli("check", config, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "does not follow" in r.stdout, r.stdout


def test_a_following_rsync_warns_once_and_mirrors_where_only_we_write(tmp_path, src, dst,
                                                                      daemon_factory):
    (src / "sub").mkdir()
    (src / "sub" / "f").write_bytes(os.urandom(5000))
    binary = fake_rsync(tmp_path, "3.5.0", follow=True)
    sync = sync_entry(src, [dst])
    sync["rsync"] = {"binary": binary}
    d = daemon_factory([sync])
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    (src / "later.txt").write_bytes(b"live\n")
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    warnings = [ln for ln in d.log_text().splitlines() if "follows a symlink raced" in ln]
    assert len(warnings) == 1 and "WARNING" in warnings[0], warnings
    assert d.stop() == 0

    # strict_rsync: refused for this source too, one line, nothing started.
    config = _config(tmp_path, src, dst, binary, strict_rsync=True)
    r = run_cli("start", config, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "strict_rsync" in r.stderr, r.stderr
    assert_no_leftovers(tmp_path)
