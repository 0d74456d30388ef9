"""Local targets of one sync share one rsync batch: the first target's
``paths`` step records what it sends (``--write-batch``) and the others
replay it (``--read-batch``) without reading the source again.

What these tests hold the daemon to, with real inotify, real rsync and
hostile names: every target ends byte for byte equal to the source, even
a target whose copy differs from the recording target's in a way the
quick check cannot see, or that lacks the directories of a listed name;
the same names changed again are recorded again, never replayed from the
earlier recording; a replay, or a recording, that fails is sent again the
plain way at once; and no batch file is left behind."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers.churn import Churn, ChurnThread
from tests.helpers.daemon import Daemon, sync_entry
from tests.helpers.tree import wait_converged

pytestmark = pytest.mark.timeout(300)

TARGETS = 4
CONVERGE = 120


def _sync(src: Path, dsts: list[Path], **rsync: str | int) -> dict[str, object]:
    s = sync_entry(src, dsts, delay=0.3)
    s["agent_max_size"] = 0  # every path goes to rsync, so every batch has a paths step
    if rsync:
        s["rsync"] = rsync
    return s


def _targets(tmp_path: Path) -> list[Path]:
    dsts = [tmp_path / f"dst{i}" for i in range(TARGETS)]
    for d in dsts:
        d.mkdir()
    return dsts


def _count(d: Daemon, option: str) -> int:
    return d.log_text().count(f"'--{option}=")


def _leftovers(settings: dict[str, str]) -> list[str]:
    tmp = Path(settings["state_dir"]) / "tmp"
    return sorted(p.name for p in tmp.glob("shared-*")) if tmp.exists() else []


@pytest.mark.parametrize("cap", [1, 8])
def test_local_targets_replay_one_recorded_batch(tmp_path, src, daemon_factory, settings, cap):
    dsts = _targets(tmp_path)
    churn = Churn(src, seed=23, hostile_ratio=0.4)
    churn.populate(n_files=60, n_dirs=8)
    (src / "same").write_bytes(b"old content!")
    # 1: one target at work at a time, every target after the first replays
    # when its turn comes; 8: all at once, the others wait for the recording
    conf = {**settings, "log_level": "debug", "max_processes": cap}
    d = daemon_factory([_sync(src, dsts)], settings_override=conf)
    wait_converged(src, dsts, timeout=CONVERGE, on_timeout=d.describe)

    # A same-size rewrite whose mtime is put back, which the recording
    # target already holds (written behind the daemon's back) and the
    # last target does not: a batch that recorded only what the recording
    # target lacked would leave the last target stale, without an error.
    st = os.stat(src / "same")
    (src / "same").write_bytes(b"new content!")
    os.utime(src / "same", ns=(st.st_atime_ns, st.st_mtime_ns))
    for dst in dsts[:-1]:
        (dst / "same").write_bytes(b"new content!")
        os.utime(dst / "same", ns=(st.st_atime_ns, st.st_mtime_ns))
    wait_converged(src, dsts, timeout=CONVERGE, on_timeout=d.describe)

    t = ChurnThread(churn, 300, sleep_prob=0.3, max_sleep=0.02)
    t.start()
    t.join_checked(120)
    wait_converged(src, dsts, timeout=CONVERGE, on_timeout=d.describe)
    assert _count(d, "write-batch") >= 1, d.log_tail()
    assert _count(d, "read-batch") >= TARGETS - 1, d.log_tail()
    assert "batch failed" not in d.log_text(), d.log_tail()
    d.stop()
    assert _leftovers(settings) == []


@pytest.mark.parametrize("refused", ["read-batch", "write-batch"])
def test_a_failed_shared_run_is_sent_again_plainly(tmp_path, src, daemon_factory, settings,
                                                  refused):
    # rsync itself, but a run with the refused option fails as a batch
    # file cut short or a full disk would make it fail
    wrapper = tmp_path / "rsync-wrapper"
    wrapper.write_text("#!/bin/sh\n"
                       "for a in \"$@\"; do\n"
                       f"  case \"$a\" in --{refused}=*) echo refused >&2; exit 11;; esac\n"
                       "done\n"
                       "exec rsync \"$@\"\n")
    wrapper.chmod(0o755)
    dsts = _targets(tmp_path)
    churn = Churn(src, seed=5, hostile_ratio=0.4)
    churn.populate(n_files=30, n_dirs=5)
    conf = {**settings, "log_level": "debug", "max_processes": 1}
    d = daemon_factory([_sync(src, dsts, binary=str(wrapper))], settings_override=conf)
    wait_converged(src, dsts, timeout=CONVERGE, on_timeout=d.describe)
    t = ChurnThread(churn, 150, sleep_prob=0.3, max_sleep=0.02)
    t.start()
    t.join_checked(120)
    wait_converged(src, dsts, timeout=CONVERGE, on_timeout=d.describe)
    assert _count(d, refused) >= 1, d.log_tail()
    assert "batch failed (rsync exit 11: refused); sending directly" in d.log_text(), \
        d.log_tail()
    # the refusal never became a step's result: every shared run that
    # failed was run again plainly at once (a run may still fail on its own
    # under churn, rc 23 or 24, a file gone while rsync read it, and retry:
    # rsync's "send_files failed to open" is that, not this)
    assert "(rc 11)" not in d.log_text(), d.log_tail()
    d.stop()
    assert _leftovers(settings) == []


def test_the_same_names_changed_again_are_recorded_again(tmp_path, src, daemon_factory,
                                                          settings):
    # one large file changed batch after batch (appended to, rewritten at
    # the same size, deleted, made again): every batch lists the same name,
    # and a replay of an earlier recording would put earlier content back
    dsts = _targets(tmp_path)
    log = src / "app.log"
    log.write_bytes(b"start\n")
    conf = {**settings, "log_level": "debug", "max_processes": 1}
    d = daemon_factory([_sync(src, dsts)], settings_override=conf)
    wait_converged(src, dsts, timeout=CONVERGE, on_timeout=d.describe)
    for i in range(8):
        if i == 5:
            log.unlink()
        elif i % 3 == 2:
            data = log.read_bytes() if log.exists() else b""
            log.write_bytes(bytes(reversed(data)))  # same size, new content
        else:
            with open(log, "ab") as fh:
                fh.write(b"line %d\n" % i * 50)
        wait_converged(src, dsts, timeout=CONVERGE, on_timeout=d.describe)
    assert _count(d, "read-batch") >= 2 * (TARGETS - 1), d.log_tail()  # it did share
    # each change recorded anew (a few may come too soon after a write to
    # be sure of, and go plainly): never one recording replayed throughout
    recorded = set(re.findall(r"--write-batch=[^']*/(shared-\d+)\.batch", d.log_text()))
    assert len(recorded) >= 5, d.log_tail()
    assert "batch failed" not in d.log_text(), d.log_tail()


def test_a_target_missing_the_directories_of_a_listed_name(tmp_path, src, daemon_factory,
                                                            settings):
    dsts = _targets(tmp_path)
    deep = src / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"one")
    conf = {**settings, "log_level": "debug", "max_processes": 1}
    d = daemon_factory([_sync(src, dsts)], settings_override=conf)
    wait_converged(src, dsts, timeout=CONVERGE, on_timeout=d.describe)
    replays = _count(d, "read-batch")
    # behind the daemon's back, the last targets lose the directories;
    # the next batch lists only the file below them
    for dst in dsts[1:]:
        shutil.rmtree(dst / "a")
    (deep / "f").write_bytes(b"two")
    wait_converged(src, dsts, timeout=CONVERGE, on_timeout=d.describe)
    assert _count(d, "read-batch") > replays, d.log_tail()
    assert "batch failed" not in d.log_text(), d.log_tail()


def test_a_recording_that_hangs_holds_the_others_back_only_so_long(tmp_path, src,
                                                                   daemon_factory, settings):
    # The recording rsync stops itself (SIGSTOP) before it starts: the
    # targets waiting for it go plainly once WAIT has passed, the stalled
    # recording is killed for making no progress, and its own target
    # catches up; nothing is left running, and no batch file stays.
    wrapper = tmp_path / "rsync-wrapper"
    wrapper.write_text("#!/bin/sh\n"
                       "for a in \"$@\"; do\n"
                       "  case \"$a\" in --write-batch=*) kill -STOP $$;; esac\n"
                       "done\n"
                       "exec rsync \"$@\"\n")
    wrapper.chmod(0o755)
    dsts = _targets(tmp_path)
    (src / "seed").write_bytes(b"seed")
    conf = {**settings, "log_level": "debug", "max_processes": 8}
    d = daemon_factory([_sync(src, dsts, binary=str(wrapper), timeout=5)],
                       settings_override=conf)
    wait_converged(src, dsts, timeout=CONVERGE, on_timeout=d.describe)
    for i in range(5):
        (src / f"f{i}").write_bytes(b"x" * (1000 + i))
    wait_converged(src, dsts, timeout=CONVERGE, on_timeout=d.describe)
    assert _count(d, "write-batch") >= 1, d.log_tail()
    assert "no progress" in d.log_text(), d.log_tail()
    assert _count(d, "read-batch") == 0, d.log_tail()  # nothing whole to replay
    d.stop()
    assert _leftovers(settings) == []
