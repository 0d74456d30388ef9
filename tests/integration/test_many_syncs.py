"""Many ``[[sync]]`` blocks in one daemon: the same fixed set of processes,
syncs that never wait for each other, and nothing lost when any role is
killed while all of them are busy."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.churn import Churn, ChurnThread, assert_not_pwned
from tests.helpers.daemon import COMPONENT_ROLES, sync_entry
from tests.helpers.procs import assert_no_leftovers, descendants
from tests.helpers.tree import wait_converged

KILLABLE = ("watcher", "collator", "syncer")


def python_children(pid: int) -> list[int]:
    """Descendants that are not rsync/ssh (the daemon's own processes)."""
    out = []
    for p in descendants(pid):
        try:
            comm = Path(f"/proc/{p}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith(("syncsup", "python")):
            out.append(p)
    return out


def test_the_process_count_does_not_grow_with_syncs(tmp_path, settings, daemon_factory):
    """30 syncs run in the supervisor and one watcher, collator and syncer."""
    syncs = []
    for i in range(30):
        (tmp_path / f"s{i}").mkdir()
        (tmp_path / f"s{i}" / "f").write_bytes(b"%d" % i)
        syncs.append(sync_entry(tmp_path / f"s{i}", [tmp_path / f"d{i}"], name=f"s{i}"))
    d = daemon_factory(syncs)
    st = d.wait_idle()
    roles = sorted(c["role"] for c in st["components"])
    assert roles == sorted(COMPONENT_ROLES), st["components"]
    assert len(st["syncs"]) == 30
    # at rest: the supervisor and its three children, nothing else
    assert len(python_children(d.pid)) == 3, python_children(d.pid)
    for i in range(30):
        assert (tmp_path / f"d{i}" / "f").read_bytes() == b"%d" % i
    d.stop()
    assert_no_leftovers(tmp_path)


def test_a_slow_sync_never_delays_another(tmp_path, settings, daemon_factory):
    """One sync busy with a long initial transfer (bandwidth-limited) and a
    huge batch, another with a failing target: a third sync's changes still
    arrive while they are busy."""
    big, small, broken = tmp_path / "big", tmp_path / "small", tmp_path / "broken"
    for p in (big, small, broken):
        p.mkdir()
    rng = random.Random(7)
    for i in range(40):
        (big / f"blob{i}").write_bytes(rng.randbytes(256 * 1024))  # 10 MiB at 200 KiB/s
    (broken / "x").write_bytes(b"x")
    slow = sync_entry(big, [tmp_path / "big_dst"], name="big")
    slow["rsync"] = {"bwlimit": "200"}
    unreachable = sync_entry(broken, ["nobody@127.0.0.1:/nonexistent"], name="broken",
                             ssh={"port": 1, "options": ["ConnectTimeout=2"]})
    quick = sync_entry(small, [tmp_path / "small_dst"], name="small")
    d = daemon_factory([slow, unreachable, quick], wait=False)

    def target_state(st, name):
        return next(s for s in st["syncs"] if s["name"] == name)["targets"][0]["state"]

    st = d.wait_for(lambda st: target_state(st, "small") == "idle", "the small sync's startup",
                    timeout=120)
    assert target_state(st, "big") in ("startup", "syncing"), st
    for i in range(20):
        (small / f"n{i}").write_bytes(b"n%d" % i)
        wait_converged(small, tmp_path / "small_dst", timeout=60, on_timeout=d.describe)
    st = d.status()
    # the big sync is still transferring: the small one did not wait for it
    assert target_state(st, "big") in ("startup", "syncing"), (
        "the big transfer finished before the test could show anything; make it slower", st)
    assert target_state(st, "broken") in ("startup", "retrying", "failed"), st
    d.stop()
    assert_no_leftovers(tmp_path)


class Killer(threading.Thread):
    """SIGKILL the roles in turn (each round in a random order), one every
    0.7-1.4 s, until stopped."""

    def __init__(self, daemon, seed: int) -> None:
        super().__init__(daemon=True, name="killer")
        self.d = daemon
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.killed: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            order: list[str] = []
            while not self.stop_event.wait(self.rng.uniform(0.7, 1.4)):
                if not order:
                    order = self.rng.sample(KILLABLE, len(KILLABLE))
                role = order[0]
                if self.d.kill_component(role, self.rng) is not None:
                    self.killed.append(role)
                    order.pop(0)
        except BaseException as e:
            self.error = e


@pytest.mark.timeout(480)
def test_chaos_with_many_busy_syncs(tmp_path, sshd, settings, daemon_factory):
    """Six syncs (local rsync, direct, rsync and rsyncssh over ssh) churn at
    the same time while every role is SIGKILLed again and again: all of
    them converge byte for byte, and nothing is left behind."""
    layout = [("rsync", False), ("rsync", False), ("direct", False), ("rsync", True),
              ("rsyncssh", True), ("rsync", False)]
    syncs, pairs, churns = [], [], []
    for i, (mode, remote) in enumerate(layout):
        src, dst = tmp_path / f"src{i}", tmp_path / f"dst{i}"
        src.mkdir()
        dst.mkdir()
        c = Churn(src, seed=500 + i, hostile_ratio=0.3)
        c.populate(n_files=60, n_dirs=8)
        target = sshd.target(dst) if remote else dst
        syncs.append(sync_entry(src, [target], name=f"s{i}", mode=mode, delay=0.2,
                                ssh=sshd.ssh_config() if remote else None))
        pairs.append((src, dst))
        churns.append(c)
    d = daemon_factory(syncs)
    killer = Killer(d, seed=99)
    # ~150 ops a sync over ~7 s: every role killed twice or more meanwhile
    threads = [ChurnThread(c, 150, sleep_prob=1.0, max_sleep=0.1) for c in churns]
    killer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join_checked(240)
    deadline = time.monotonic() + 60  # the tail must survive kills too, of every role
    while set(killer.killed) != set(KILLABLE) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    killer.stop_event.set()
    killer.join(30)
    assert killer.error is None, repr(killer.error)
    assert set(killer.killed) == set(KILLABLE), f"not every role was killed: {killer.killed}"
    for (src, dst), c in zip(pairs, churns, strict=True):
        wait_converged(src, dst, timeout=180,
                       on_timeout=lambda c=c: f"{c.summary()}\n{d.describe()}")
    st = d.status()
    comps = {c["role"]: c for c in st["components"]}
    for role in set(killer.killed):
        assert comps[role]["restarts"] > 0, comps[role]
    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, *[p for pair in pairs for p in pair])
