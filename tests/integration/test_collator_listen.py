"""The collator reads a batch's DONE at its next wake-up when nothing waits
for it (at most ``delay`` after the batch went out): a status asked
meanwhile still answers what is done, and a collator killed with DONEs
unread loses no change (the batch's rows were never forgotten: it goes
again)."""

from __future__ import annotations

import os
import signal
import time

from tests.helpers.churn import Churn
from tests.helpers.procs import alive, assert_no_leftovers
from tests.helpers.tree import wait_converged, write

from ._modes_helpers import wait_until
from .test_faults import comp_of, target_of


def test_status_answers_a_done_batch_before_the_collator_would_read_it(
        tmp_path, src, dst, daemon_factory):
    """delay = 20: a batch's DONE is not wanted before 20 s after the batch
    went out, yet status, asked once the file arrived, shows nothing
    pending well before then (status reads what the syncer sent first)."""
    d = daemon_factory([{"name": "www", "source": os.fspath(src), "targets": [os.fspath(dst)],
                         "delay": 20.0}])
    wait_converged(src, [dst], timeout=60)
    write(src / "f", b"content")
    wait_until(lambda: (dst / "f").is_file() and (dst / "f").read_bytes() == b"content",
               "f on the target", 120)
    # the agent applies and acknowledges in one go; its DONE would stay
    # unread for up to 20 s more if status did not read it
    t = target_of(d.wait_for(lambda s: target_of(s, dst)["pending"] == 0,
                             "nothing pending in status", timeout=15), dst)
    assert t["pending"] == 0 and t["lag"] is None, t
    wait_converged(src, [dst], timeout=60)
    d.stop()
    assert_no_leftovers(tmp_path)


def test_a_collator_killed_with_outcomes_unread_loses_no_change(
        tmp_path, src, dst, daemon_factory):
    c = Churn(src, seed=41)
    c.populate(n_files=60, n_dirs=8)
    d = daemon_factory([{"name": "www", "source": os.fspath(src), "targets": [os.fspath(dst)],
                         "delay": 1.0}])
    wait_converged(src, [dst], timeout=120)
    for _ in range(4):
        c.run(40, sleep_prob=0.3, max_sleep=0.02)
        time.sleep(1.3)  # a batch went out and came back; its DONE may be unread
        before = comp_of(d.status(), "collator")
        pid = int(before["pid"])
        os.kill(pid, signal.SIGKILL)
        d.wait_for(lambda s, b=before: comp_of(s, "collator")["restarts"] > b["restarts"]
                   and comp_of(s, "collator")["state"] == "running",
                   "the collator restarted", timeout=90)
        wait_until(lambda pid=pid: not alive(pid), "the killed collator gone", 30)
    c.run(40, sleep_prob=0.3, max_sleep=0.02)
    wait_converged(src, [dst], timeout=180, on_timeout=lambda: c.summary() + "\n" + d.describe())
    d.stop()
    assert_no_leftovers(tmp_path)
