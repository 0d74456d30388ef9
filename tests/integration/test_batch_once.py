"""One change, one batch: a watcher message that is sent again because its
acknowledgement came late (a collator held up, e.g. by a slow disk, for
longer than the watcher's resend interval) is recorded once, so the change
is transferred, and logged, once and not twice."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.helpers.daemon import sync_entry
from tests.helpers.tree import wait_converged

pytestmark = pytest.mark.timeout(240)

BATCH = re.compile(r"batch (\d+), (\d+) paths, (\d+) trees")


def test_a_message_sent_again_is_recorded_once(tmp_path, src, dst, daemon_factory):
    # A short resend interval: the collator is held up for a few of them,
    # so the change is sent again more than once (and never for as long
    # as the heartbeat timeout, which would restart it).
    d = daemon_factory([sync_entry(src, [dst], delay=0)], timings={"resend_after": 0.5})
    d.wait_idle()
    collator = d.components("collator")[0]["pid"]
    before = len(BATCH.findall(d.log_text()))
    os.kill(collator, signal.SIGSTOP)
    try:
        (src / "new.txt").write_bytes(b"one change\n")
        # The watcher sends the change, gets no ack, and sends it again.
        time.sleep(3 * d.timings.resend_after + 1.0)
    finally:
        os.kill(collator, signal.SIGCONT)
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    d.wait_idle()
    time.sleep(1)  # a second batch, if one were queued, would start now (delay 0)
    d.wait_idle()
    batches = BATCH.findall(d.log_text())[before:]
    assert len(batches) == 1 and batches[0][1:] == ("1", "0"), (
        f"one change made {len(batches)} batches: {batches}\n{d.log_tail()}")
    assert d.components("collator")[0]["pid"] == collator, "the collator was restarted"
