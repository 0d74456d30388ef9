"""Fan-out: one source, three targets, one of them unreachable for a while."""

from __future__ import annotations

import pytest

from tests.helpers.churn import Churn, ChurnThread
from tests.helpers.sshd import Sshd

from ._modes_helpers import converge, finish, sync_table

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def own_sshd(tmp_path_factory):
    """An sshd of this test alone (the session one is shared): it gets stopped here.
    Its files live outside tmp_path, so the leftover check only sees the daemon's."""
    s = Sshd(tmp_path_factory.mktemp("fanout-sshd"))
    s.start()
    yield s
    s.close()


def test_unreachable_target_does_not_delay_others(tmp_path, src, own_sshd, daemon_factory):
    dst1, dst2, dst3 = (tmp_path / n for n in ("dst1", "dst2", "dst_ssh"))
    for p in (dst1, dst2, dst3):
        p.mkdir()
    c = Churn(src, 50, hostile_ratio=0.3)
    c.populate(n_files=80, n_dirs=10, big_every=40)
    ssh_spec = own_sshd.target(dst3)
    # retries of the unreachable target at most a second apart: it catches
    # up within a second of its host's return (the backoff's growth is the
    # retry queue's unit tests' and the dead ssh target's fault test's)
    d = daemon_factory([sync_table(src, [dst1, dst2, ssh_spec], delay=0.2,
                                   ssh=own_sshd.ssh_config())],
                       timings={"retry_cap": 1.0})
    converge(d, src, dst1, dst2, dst3)

    # the ssh target's host goes down (listener and open sessions, incl. the ssh master)
    own_sshd.stop(kill_sessions=True)
    t = ChurnThread(c, 200, sleep_prob=0.4, max_sleep=0.02)
    t.start()
    t.join_checked(120)
    # the local targets stay current
    converge(d, src, dst1, dst2)

    def ssh_failing(st):
        for tg in d.targets(st):
            if tg.get("target") == ssh_spec:
                return tg.get("state") == "retrying" and bool(tg.get("last_error"))
        return False

    st = d.wait_for(ssh_failing, "the ssh target to show retrying with a last_error", 120)
    by_spec = {tg["target"]: tg for tg in d.targets(st)}
    assert by_spec[ssh_spec]["pending"], by_spec[ssh_spec]

    # with the source quiet, the local targets settle: idle, no error, nothing pending
    def locals_idle(st):
        by = {tg["target"]: tg for tg in d.targets(st)}
        return all(by[str(p)].get("state") == "idle" and not by[str(p)].get("last_error")
                   and not by[str(p)].get("pending") for p in (dst1, dst2))

    st = d.wait_for(locals_idle, "both local targets idle without error (ssh one down)", 120)
    assert ssh_failing(st), d.targets(st)

    # a second wave while it is still down: the locals keep up again
    c.run(60, sleep_prob=0.3, max_sleep=0.01)
    converge(d, src, dst1, dst2)

    # the host comes back: the broken target catches up
    own_sshd.start()
    converge(d, src, dst1, dst2, dst3, timeout=180)
    d.wait_for(lambda st: all(tg.get("state") == "idle" and not tg.get("last_error")
                              for tg in d.targets(st)),
               "every target idle without error", 120)
    finish(d, tmp_path, src, dst1, dst2, dst3)
