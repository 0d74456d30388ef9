"""Kill components at random while the tree churns: nothing may be lost, nothing left behind."""

from __future__ import annotations

import collections
import random
import threading
import time

import pytest

from tests.helpers.churn import Churn, ChurnThread, assert_not_pwned
from tests.helpers.daemon import sync_entry
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import wait_converged

KILLABLE = ("watcher", "collator", "syncer")


class Killer(threading.Thread):
    """SIGKILL the roles in turn (each round in a random order), one every
    0.7-1.4 s, until stopped: every role is killed again and again during
    the churn, whatever the draw."""

    def __init__(self, daemon, seed: int) -> None:
        super().__init__(daemon=True, name="killer")
        self.d = daemon
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.killed: list[tuple[str, str, int]] = []  # (role, name, pid)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            order: list[str] = []
            while not self.stop_event.wait(self.rng.uniform(0.7, 1.4)):
                if not order:
                    order = self.rng.sample(KILLABLE, len(KILLABLE))
                hit = self.d.kill_component(order[0], self.rng)
                if hit is not None:
                    self.killed.append((order.pop(0), hit[0], hit[1]))
        except BaseException as e:
            self.error = e


@pytest.mark.timeout(420)
def test_chaos_kill_components_during_churn(tmp_path, src, dst, sshd, daemon_factory):
    dst_ssh = tmp_path / "dst_ssh"
    dst_ssh.mkdir()
    c = Churn(src, seed=42)
    c.populate(n_files=200, n_dirs=25, big_every=50)
    d = daemon_factory(
        [sync_entry(src, [dst, sshd.target(dst_ssh)], ssh=sshd.ssh_config(), delay=0.2)]
    )

    killer = Killer(d, seed=4242)
    # ~300 ops over ~12 s: about a dozen kills, each role several times (a
    # kill costs the daemon a restart and a rescan; what is proven is that
    # nothing is lost across them, not how long the churn lasts)
    churn = ChurnThread(c, 300, sleep_prob=1.0, max_sleep=0.08)
    t0 = time.monotonic()
    killer.start()
    churn.start()
    churn.join_checked(180)
    # keep killing a little past the end of churn: the tail must not be lost either
    time.sleep(2)
    killer.stop_event.set()
    killer.join(30)
    assert killer.error is None, f"killer thread failed: {killer.error!r}"
    churn_secs = time.monotonic() - t0
    roles = {r for r, _, _ in killer.killed}
    assert roles == set(KILLABLE), f"not every role was killed: {killer.killed}"

    wait_converged(
        src,
        [dst, dst_ssh],
        timeout=180,
        on_timeout=lambda: f"{c.summary()}\nkilled: {killer.killed}\n{d.describe()}",
    )

    by_name = collections.Counter(name for _, name, _ in killer.killed)
    st = d.status()
    comps = {comp["name"]: comp for comp in st["components"]}
    for name, n in by_name.items():
        assert name in comps, f"killed component {name!r} missing from status: {st}"
        assert comps[name]["restarts"] > 0, (
            f"{name!r} was SIGKILLed {n}x but status shows no restart: {comps[name]}"
        )
    print(
        f"churn+kill {churn_secs:.1f}s, {len(killer.killed)} kills, roles {sorted(roles)}; "
        + c.summary()
    )

    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, src, dst, dst_ssh)
