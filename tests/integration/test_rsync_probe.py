"""The local rsync is judged by what its sender does, not by its version:
the start-up probe names a file through another user's symlink in a parent
directory, planted before rsync starts (no race, so the same answer every
run), and syncsup refuses a sender that follows it only
where another user can write in the source (or everywhere with
``strict_rsync``); elsewhere it warns once and runs.

"rsync" wrappers stand in for the two cases the version cannot tell apart,
both running this machine's real rsync (3.5.0, whose sender refuses another
user's symlink in a parent): a 3.5.0 that follows (``--insecure-links``,
rsync's switch back to the old open by path) and a "3.2.7" that does not
(the fixed sender under an old version string, as a distribution's
backport). Debian 12's real rsync 3.2.7, from the cached rootfs of the
systemd proof when there is one, is the unfixed sender itself."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from syncsup import rsync_probe
from syncsup.rsync_probe import foreign_writer, sender_follows
from syncsup.timings import Timings
from tests.helpers.daemon import run_cli, sync_entry, write_config
from tests.helpers.old_rsync import debian12_rsync
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import wait_converged

pytestmark = pytest.mark.timeout(240)

WRAPPER = """#!/bin/sh
if [ "$1" = --version ]; then echo "rsync  version {version}  protocol version 32"; exit 0; fi
exec {rsync} {extra} "$@"
"""

def fake_rsync(tmp_path: Path, version: str, follow: bool) -> str:
    path = tmp_path / f"rsync-{version}-{'follows' if follow else 'fixed'}"
    path.write_text(WRAPPER.format(version=version, rsync=shutil.which("rsync"),
                                   extra="--insecure-links" if follow else ""))
    path.chmod(0o755)
    return str(path)


def _config(tmp_path: Path, src: Path, dst: Path, binary: str, **settings) -> Path:
    sync = sync_entry(src, [dst])
    sync["rsync"] = {"binary": binary}
    return write_config(tmp_path / "probe.toml", {
        "settings": {"state_dir": str(tmp_path / "state"), **settings}, "sync": [sync]})


@pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's symlink needs root")
def test_the_probe_judges_behaviour_not_the_version(tmp_path):
    limit = Timings().probe_timeout  # what the daemon gives it
    assert sender_follows("rsync", limit) is False, "this machine's rsync follows a raced symlink"
    assert sender_follows(fake_rsync(tmp_path, "3.5.0", follow=True), limit) is True
    assert sender_follows(fake_rsync(tmp_path, "3.2.7", follow=False), limit) is False
    assert sender_follows(str(tmp_path / "no-such-rsync"), limit) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's symlink needs root")
def test_the_probe_gives_the_same_answer_every_run(tmp_path, monkeypatch):
    """No timing in the answer: uncached, each binary gives one answer ten
    times over, on a loaded machine too (Debian 12's unfixed 3.2.7 follows;
    this machine's 3.5.0 does not, though it trusts a symlink of root's)."""
    for binary, follows in ((debian12_rsync(tmp_path), True), ("rsync", False)):
        answers = []
        for _ in range(10):
            monkeypatch.setattr(rsync_probe, "_cache", {}, raising=False)
            answers.append(sender_follows(binary))
        assert answers == [follows] * 10, (binary, answers)


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
    # A refusal a restart cannot change: 78, which the unit never restarts.
    r = run_cli("start", config, timeout=120)
    assert r.returncode == 78, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot start" in lines[0], r.stderr
    assert "belongs to uid 4321" in lines[0] and "keep others from writing" in lines[0]
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
    assert r.returncode == 78, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "strict_rsync" in lines[0], r.stderr
    assert_no_leftovers(tmp_path)
