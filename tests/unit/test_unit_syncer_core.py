"""The syncer's slot decisions (syncer/core.py) on a fake clock and a fake
master port: credits, ``max_processes`` queueing (the oldest batch first,
the cap held, a local agent's steps not counted, a remote agent's open
sessions counted and the idle ones closed for others), the ssh master's
loss and backoff,
and what a finished batch reports, with no process at all."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from syncsup import proto
from syncsup.backoff import Backoff
from syncsup.syncer.core import Conn, Key, Lanes, Masters, Phase, Process, done_message, summary
from syncsup.syncer.plan import Finished

A, B, C, D = ("a", 0), ("a", 1), ("b", 0), ("c", 0)


def lanes(cap: int) -> Lanes:
    return Lanes([A, B, C, D], cap)


# -- credits ------------------------------------------------------------------------------


def test_a_batch_is_taken_only_against_a_credit() -> None:
    ln = lanes(0)
    assert ln.idle() == [A, B, C, D]  # every slot's READY at start
    assert ln.accept(A, 10.0) is None
    assert ln.accept(A, 11.0) == "busy"  # a second batch before the DONE: dropped
    assert ln.accept(("x", 0), 11.0) == "unknown target"
    assert ln.idle() == [B, C, D]  # a restarted collator is given these credits again
    assert ln.finish(A, 12.5) == 2.5  # the DONE, and its seconds since the batch came
    assert ln.idle() == [A, B, C, D]
    assert ln.accept(A, 13.0) is None


def test_an_idle_syncer_does_not_turn_every_second() -> None:
    ln = lanes(0)
    assert ln.wake_in() is None
    ln.accept(A, 0.0)
    assert ln.wake_in() == 1.0


# -- max_processes -----------------------------------------------------------------------


def test_the_cap_holds_and_the_oldest_batch_is_served_first() -> None:
    ln = lanes(2)
    for t, key in enumerate([A, B, C, D]):
        ln.accept(key, float(t))
    assert ln.busy() == [A, B, C, D]
    # D's batch came last but its step is ready first: the cap is not reached
    assert ln.may_start(D, agent=False)
    ln.transfer_started(D)
    assert ln.may_start(C, agent=False)
    ln.transfer_started(C)
    assert ln.running() == 2
    assert not ln.may_start(B, agent=False)
    assert not ln.may_start(A, agent=False)
    assert ln.phase(A) is Phase.WAITING and ln.phase(B) is Phase.WAITING
    assert ln.take() is None  # both taken
    ln.step_ended(D)
    assert ln.running() == 1
    assert ln.take() == A  # the oldest batch, although B asked first
    ln.transfer_started(A)
    assert ln.take() is None and ln.running() == 2
    ln.step_ended(C)
    assert ln.take() == B
    ln.transfer_started(B)
    assert ln.running() == 2 and ln.take() is None


def test_a_younger_step_does_not_pass_an_older_one_waiting() -> None:
    """A transfer freed in the loop's turn goes to the slot waiting longest,
    not to a younger slot whose own step happens to end first."""
    ln = lanes(1)
    ln.accept(A, 0.0)
    ln.accept(B, 1.0)
    assert ln.may_start(B, agent=False)
    ln.transfer_started(B)
    assert not ln.may_start(A, agent=False)
    ln.step_ended(B)  # B's step ends: its next step asks
    assert not ln.may_start(B, agent=False)
    assert ln.take() == A
    ln.transfer_started(A)
    assert ln.take() is None
    ln.step_ended(A)
    assert ln.take() == B


def test_agent_steps_neither_count_nor_wait() -> None:
    ln = lanes(1)
    ln.accept(A, 0.0)
    ln.accept(B, 1.0)
    ln.accept(C, 2.0)
    assert ln.may_start(A, agent=False)
    ln.transfer_started(A)
    assert ln.may_start(B, agent=True)  # the cap is reached, yet the agent step runs
    assert ln.phase(B) is Phase.AGENT
    assert ln.running() == 1
    assert not ln.may_start(C, agent=False)
    ln.step_ended(B)  # the agent step's end frees no transfer
    assert ln.take() is None
    ln.step_ended(A)
    assert ln.take() == C


def test_no_cap_starts_everything() -> None:
    ln = lanes(0)
    for t, key in enumerate([A, B, C, D]):
        ln.accept(key, float(t))
        assert ln.may_start(key, agent=False)
        ln.transfer_started(key)
    assert ln.running() == 4


def test_a_finished_batch_leaves_the_queue() -> None:
    ln = lanes(1)
    ln.accept(A, 0.0)
    ln.accept(B, 1.0)
    assert ln.may_start(A, agent=False)
    ln.transfer_started(A)
    assert not ln.may_start(B, agent=False)
    ln.step_ended(A)
    ln.finish(A, 5.0)
    assert ln.busy() == [B]
    assert ln.take() == B


def test_remote_sessions_count_and_an_idle_one_is_closed_for_another_target() -> None:
    ln = lanes(2)
    for t, key in enumerate([A, B, C, D]):
        ln.accept(key, float(t))
    assert ln.may_start(A, agent=True, session=True, now=10.0)
    assert ln.may_start(B, agent=True, session=True, now=11.0)
    assert ln.sessions() == 2
    # both sessions run a step: C's agent step waits, nothing is closed
    assert not ln.may_start(C, agent=True, session=True, now=12.0)
    assert ln.phase(C) is Phase.WAITING and ln.take_closing() == []
    assert ln.take(12.5) is None
    # A's step ends; its session stays open (and counted) until closed
    ln.step_ended(A)
    assert ln.sessions() == 2
    assert ln.take(13.0) == C  # A's idle session is closed for it
    assert ln.take_closing() == [A]
    assert ln.phase(C) is Phase.AGENT and ln.sessions() == 2
    # an agent step on a session open already needs no new process
    ln.step_ended(B)
    assert ln.may_start(B, agent=True, session=True, now=14.0)
    assert ln.take_closing() == [] and ln.sessions() == 2


def test_the_session_closed_is_of_a_target_with_no_batch_then_the_one_unused_longest() -> None:
    ln = lanes(3)
    for key, t in ((A, 0.0), (B, 1.0), (C, 2.0)):
        ln.accept(key, t)
        assert ln.may_start(key, agent=True, session=True, now=10.0 + t)
        ln.step_ended(key)
    ln.finish(C, 20.0)  # C's batch is over: its session is the first to go
    ln.accept(D, 21.0)
    assert ln.may_start(D, agent=False)
    assert ln.take_closing() == [C]
    ln.transfer_started(D)
    ln.accept(C, 22.0)
    assert ln.may_start(C, agent=False)  # A's session was unused longer than B's
    assert ln.take_closing() == [A]
    ln.transfer_started(C)
    assert ln.at_work() == 3


def test_a_transfer_runs_beside_its_own_session_and_takes_no_more_room() -> None:
    ln = lanes(1)
    ln.accept(A, 0.0)
    ln.accept(B, 1.0)
    assert ln.may_start(A, agent=True, session=True, now=1.0)
    assert not ln.may_start(B, agent=True, session=True, now=1.5)  # the cap: one target
    ln.step_ended(A)
    assert ln.may_start(A, agent=False)  # what the agent did not take goes to rsync
    assert ln.take_closing() == []  # its own session stays open
    ln.transfer_started(A)
    assert ln.running() == 1 and ln.sessions() == 1 and ln.at_work() == 1
    assert ln.take(2.0) is None  # A's session runs nothing, but A is at work
    ln.step_ended(A)
    ln.finish(A, 3.0)
    assert ln.take(3.0) == B and ln.take_closing() == [A]


def test_a_session_that_ended_by_itself_frees_its_process() -> None:
    ln = lanes(1)
    ln.accept(A, 0.0)
    ln.accept(B, 1.0)
    assert ln.may_start(A, agent=True, session=True, now=1.0)
    assert not ln.may_start(B, agent=False)
    ln.step_ended(A)
    ln.session_ended(A)  # lost, or closed after agent_idle
    assert ln.take(2.0) == B and ln.take_closing() == []


def test_the_cap_holds_for_transfers_and_sessions_under_random_steps() -> None:
    """Whatever the order of steps, ends and sessions lost, the targets at
    work never pass the cap, and every step waiting runs once room is
    free."""
    import random

    rng = random.Random(7)
    keys = [(f"s{i}", 0) for i in range(8)]
    for cap in (1, 2, 3):
        ln = Lanes(keys, cap)
        now = 0.0
        for _ in range(3000):
            now += 0.1
            key = rng.choice(keys)
            phase = ln.phase(key)
            move = rng.random()
            if phase is Phase.IDLE:
                ln.accept(key, now)
            elif phase is Phase.BETWEEN:
                if move < 0.2:
                    ln.finish(key, now)
                elif (ln.may_start(key, agent=move < 0.6, session=move < 0.5, now=now)
                      and move >= 0.6):
                    ln.transfer_started(key)
            elif phase in (Phase.TRANSFER, Phase.AGENT):
                ln.step_ended(key)
                if move < 0.1:
                    ln.session_ended(key)
            while (due := ln.take(now)) is not None:
                if ln.phase(due) is Phase.BETWEEN:
                    ln.transfer_started(due)
            ln.take_closing()
            assert ln.at_work() <= cap
        # drain: every step ends, and what waited gets to run
        for _ in range(100):
            for key in keys:
                if ln.phase(key) in (Phase.TRANSFER, Phase.AGENT):
                    ln.step_ended(key)
            while (due := ln.take(now)) is not None:
                if ln.phase(due) is Phase.BETWEEN:
                    ln.transfer_started(due)
            assert ln.at_work() <= cap
        assert all(ln.phase(k) is not Phase.WAITING for k in keys)


# -- ssh masters ---------------------------------------------------------------------------


@dataclass
class FakeProcess:
    rc: int | None = None

    def poll(self) -> int | None:
        return self.rc


@dataclass
class FakeMasterPort:
    procs: list[tuple[Conn, FakeProcess]] = field(default_factory=list)
    stopped: list[Process] = field(default_factory=list)
    broken: bool = False  # ssh cannot be run at all

    def start(self, conn: Conn) -> FakeProcess:
        if self.broken:
            raise OSError(2, "No such file or directory: 'ssh'")
        p = FakeProcess()
        self.procs.append((conn, p))
        return p

    def stop(self, process: Process) -> None:
        assert isinstance(process, FakeProcess)
        self.stopped.append(process)
        process.rc = -15

    def starts(self, key: Key) -> int:
        """Masters started for ``key``'s connection (each target of these
        tests has its own unless a test says otherwise)."""
        return sum(1 for c, _ in self.procs if c == conn(key))

    def last(self, key: Key) -> FakeProcess:
        return [p for c, p in self.procs if c == conn(key)][-1]


def conn(key: Key) -> Conn:
    return f"/state/cm-{key[0]}-{key[1]}"


def masters(port: FakeMasterPort) -> Masters:
    m = Masters(port, Backoff(2.0, 16.0), spawn_retry=30.0)
    m.add(A, conn(A), "target A")
    m.add(B, conn(B), "target B")
    return m


def test_a_target_with_no_master_yet_has_one_started_at_once() -> None:
    port = FakeMasterPort()
    m = masters(port)
    assert not m.up(A)
    assert m.wake_in(100.0) == 0.0  # due now: the loop does not sleep past it
    m.tend(100.0)
    assert m.up(A) and m.up(B)
    assert port.starts(A) == 1
    assert m.wake_in(100.0) is None  # all up: only SIGCHLD wakes the loop
    m.tend(101.0)
    assert port.starts(A) == 1  # a live master is left alone
    assert not m.up(C)  # a local target has none


def test_a_lost_master_backs_off_without_a_tight_loop_and_comes_back() -> None:
    port = FakeMasterPort()
    m = masters(port)
    now = 100.0
    m.tend(now)
    delays = []
    for _ in range(5):
        port.last(A).rc = 255  # the connection ended (the target unreachable)
        m.tend(now)
        assert not m.up(A)
        wait = m.wake_in(now)
        assert wait is not None
        delays.append(wait)
        # many loop turns before it is due start nothing
        for step in range(10):
            m.tend(now + wait * step / 10)
        starts = port.starts(A)
        now += wait
        m.tend(now)
        assert port.starts(A) == starts + 1  # started again once due
        assert m.up(A)
    assert delays == [2.0, 4.0, 8.0, 16.0, 16.0]  # doubling, capped
    assert port.starts(B) == 1  # another target's master is not disturbed
    m.tend(now + 1000)
    assert m.up(A) and port.starts(A) == 6  # back: nothing more is started


def test_a_master_up_as_long_as_the_longest_wait_starts_its_backoff_over() -> None:
    """Losses in a row wait longer and longer; a master that then stays up
    for the longest wait has recovered, and its next loss waits the
    shortest time again, not the cap (a login shared by many targets would
    otherwise go without a master for a minute at every later blip)."""
    port = FakeMasterPort()
    m = masters(port)
    now = 100.0
    m.tend(now)
    for _ in range(4):
        port.last(A).rc = 255
        m.tend(now)
        wait = m.wake_in(now)
        assert wait is not None
        now += wait
        m.tend(now)
    port.last(A).rc = 255
    m.tend(now)
    assert m.wake_in(now) == 16.0  # the fifth loss in a row: the cap
    now += 16.0
    m.tend(now)
    m.tend(now + 15.9)  # up, not yet as long as the cap
    port.last(A).rc = 255
    m.tend(now + 15.9)
    assert m.wake_in(now + 15.9) == 16.0
    now += 15.9 + 16.0
    m.tend(now)
    m.tend(now + 16.0)  # up for the cap: recovered
    port.last(A).rc = 255
    m.tend(now + 16.0)
    assert m.wake_in(now + 16.0) == 2.0


def test_ssh_that_cannot_run_is_tried_again_after_the_spawn_retry() -> None:
    port = FakeMasterPort(broken=True)
    m = masters(port)
    m.tend(100.0)
    assert not m.up(A) and port.starts(A) == 0
    assert m.wake_in(100.0) == 30.0
    m.tend(129.0)
    port.broken = False
    m.tend(129.5)
    assert not m.up(A)
    m.tend(130.0)
    assert m.up(A)


def test_an_unused_master_is_closed_after_its_idle_time_and_opened_by_the_next_batch(
        ) -> None:
    """A target at rest keeps no ssh process: its master closes once no
    batch came or ended for ``idle`` seconds (no failure, no backoff), the
    loop is woken for it, and the next batch opens it at once."""
    port = FakeMasterPort()
    m = Masters(port, Backoff(2.0, 16.0), spawn_retry=30.0)
    m.add(A, conn(A), "target A", idle=300.0, now=0.0)
    m.add(B, conn(B), "target B", now=0.0)  # idle 0: never closed
    m.tend(0.0)
    assert m.up(A) and m.up(B)
    m.use(A, 10.0, busy=True)     # a batch in hand: wanted however long it runs
    m.tend(1000.0)
    assert m.up(A) and m.wake_in(1000.0) is None
    m.use(A, 1000.0, busy=False)  # its end: idle from now
    assert m.wake_in(1000.0) == 300.0
    m.tend(1299.0)
    assert m.up(A)
    m.tend(1300.0)
    assert not m.up(A) and port.stopped == [port.last(A)]
    assert m.up(B)
    m.tend(5000.0)  # unused: not started again, nothing to wake for
    assert not m.up(A) and port.starts(A) == 1 and m.wake_in(5000.0) is None
    m.use(A, 5000.0, busy=True)   # the next batch: opened at once, no backoff
    assert m.up(A) and port.starts(A) == 2


def test_a_batch_for_a_master_backing_off_does_not_start_it_early() -> None:
    port = FakeMasterPort()
    m = Masters(port, Backoff(2.0, 16.0), spawn_retry=30.0)
    m.add(A, conn(A), "target A", idle=300.0, now=0.0)
    m.tend(0.0)
    port.last(A).rc = 255
    m.tend(1.0)  # ended: backing off 2 s
    m.use(A, 1.5, busy=True)
    assert not m.up(A) and port.starts(A) == 1
    m.tend(3.0)
    assert m.up(A) and port.starts(A) == 2


def test_targets_on_one_login_share_one_master_kept_while_any_of_them_wants_it() -> None:
    """Three targets reached with the same ssh command start one master,
    not three; it stays open while any of them has a batch or had one
    within the longest idle time, closes only when all are at rest, and a
    loss backs off once for all of them."""
    port = FakeMasterPort()
    m = Masters(port, Backoff(2.0, 16.0), spawn_retry=30.0)
    shared = "/state/cm-host1"
    m.add(A, shared, "ssh host1", idle=100.0, now=0.0)
    m.add(B, shared, "ssh host1", idle=300.0, now=0.0)  # the longer idle wins
    m.add(C, conn(C), "ssh host2", idle=100.0, now=0.0)
    m.tend(0.0)
    assert [c for c, _ in port.procs] == [shared, conn(C)]
    assert m.up(A) and m.up(B)
    m.use(A, 10.0, busy=True)
    m.use(B, 10.0, busy=True)
    m.use(B, 20.0, busy=False)     # B at rest, A still busy: wanted
    m.tend(1000.0)
    assert m.up(B) and not m.up(C)  # C's own master, at rest 1000 s, closed
    assert m.wake_in(1000.0) is None  # the shared one is in use: nothing to wake for
    m.use(A, 1000.0, busy=False)  # both at rest: idle from now, for 300 s
    assert m.wake_in(1000.0) == 300.0
    m.tend(1299.0)
    assert m.up(A)
    m.tend(1300.0)
    assert not m.up(A) and not m.up(B) and len(port.stopped) == 2  # C's, then the shared
    m.use(B, 2000.0, busy=True)   # either target's batch opens it for both
    assert m.up(A) and len([c for c, _ in port.procs if c == shared]) == 2
    port.procs[-1][1].rc = 255
    m.tend(2001.0)
    assert not m.up(A) and not m.up(B) and m.wake_in(2001.0) == 2.0  # one backoff
    m.tend(2003.0)
    assert m.up(A) and m.up(B) and len([c for c, _ in port.procs if c == shared]) == 3


def test_an_idle_of_zero_on_one_target_keeps_the_shared_master_open() -> None:
    port = FakeMasterPort()
    m = Masters(port, Backoff(2.0, 16.0), spawn_retry=30.0)
    m.add(A, "/state/cm-h", "ssh h", idle=10.0, now=0.0)
    m.add(B, "/state/cm-h", "ssh h", idle=0.0, now=0.0)
    m.tend(0.0)
    m.tend(10_000.0)
    assert m.up(A) and not port.stopped and m.wake_in(10_000.0) is None


def test_stop_all_ends_every_live_master() -> None:
    port = FakeMasterPort()
    m = masters(port)
    m.tend(0.0)
    port.last(B).rc = 0
    m.tend(0.0)  # B ended
    m.stop_all()
    assert port.stopped == [port.last(A)]
    assert not m.up(A)


# -- what a finished batch reports -------------------------------------------------------------


def batch() -> proto.Batch:
    ch = proto.Changes(paths={b"a", b"b"}, trees={b"d"})
    return proto.Batch(batch_id=7, sync="s", target=1, changes=ch)


def test_done_carries_the_outcome_and_the_counts() -> None:
    end = Finished(proto.Outcome.RETRY, 23, "some files vanished")
    done = done_message(batch(), end, moves_done=3, sent=1234, seconds=1.5, incarnation="x")
    assert (done.batch_id, done.sync, done.target) == (7, "s", 1)
    assert (done.outcome, done.rc, done.error) == (proto.Outcome.RETRY, 23, "some files vanished")
    assert (done.moves_done, done.bytes, done.seconds, done.incarnation) == (3, 1234, 1.5, "x")


@pytest.mark.parametrize(("end", "level", "tail"), [
    (Finished(proto.Outcome.OK), logging.INFO, ": ok"),
    (Finished(proto.Outcome.FATAL, 2, "line one\nline two"), logging.WARNING,
     ": fatal (rc 2: line one | line two)"),
])
def test_the_summary_line(end: Finished, level: int, tail: str) -> None:
    got_level, line = summary("target t", batch(), end, moves_done=0, sent=10, seconds=0.25)
    assert got_level == level
    assert line.startswith("target t: batch 7, 2 paths, 1 trees, 0 renames, 10 bytes, 0.25s")
    assert line.endswith(tail)


def test_a_batch_for_a_target_with_no_master_yet_is_not_held_for_it():
    """Transfers connect directly while the master is down (ControlMaster=no
    falls back): the batch starts at once, and the master comes when due."""
    port = FakeMasterPort()
    m = masters(port)
    m.tend(100.0)
    port.last(A).rc = 255
    m.tend(100.0)  # lost: next start in 2 s
    ln = lanes(1)
    ln.accept(A, 100.5)
    assert not m.up(A)
    assert ln.may_start(A, agent=False)  # not held for the master
    ln.transfer_started(A)
    m.tend(101.0)
    assert not m.up(A)
    m.tend(102.0)
    assert m.up(A) and ln.phase(A) is Phase.TRANSFER


def test_a_step_waits_for_a_master_still_starting_but_never_past_the_wait() -> None:
    """A master started moments ago may not listen yet: a step would make
    a connection of its own beside it (at a start, one per target), so the
    loop looks for its socket then, and only then. Not for a master that is
    down (it backs off: steps connect directly meanwhile), a target with
    none, or past the wait (the master is failing: the step's own
    connection says how)."""
    port = FakeMasterPort()
    m = masters(port)
    assert not m.starting(A, 100.0, 15.0)  # none started yet
    m.tend(100.0)
    assert m.starting(A, 100.1, 15.0)
    assert m.starting(A, 114.9, 15.0)
    assert not m.starting(A, 115.0, 15.0)
    assert not m.starting(A, 100.1, 0.0)
    assert not m.starting(C, 100.1, 15.0)  # local: no master
    port.last(A).rc = 255
    m.tend(101.0)
    assert not m.starting(A, 101.0, 15.0)
    m.tend(103.0)  # started again: the wait counts from then
    assert m.starting(A, 117.9, 15.0)
    assert not m.starting(A, 118.0, 15.0)
