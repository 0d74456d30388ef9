"""The syncer's decisions about its slots, behind small ports.

A slot is one target of one sync. Which slot may take a batch (its credit
with the collator), which may start a transfer now (``max_processes``, the
oldest batch first), when an ssh master (one per login) is (re)started and
what a finished batch reports: every such decision is made here, from what
the loop tells and the ``now`` it passes. Nothing here spawns, reads a
socket or talks to an agent: :class:`Lanes` only keeps each slot's phase,
and :class:`Masters` reaches its ssh processes through a :class:`MasterPort`
(the real one is in ``masters.py``; a unit test gives a fake one and a fake
clock, so queueing, credits and the master's backoff run with no process).

What a step's result means for its batch is :class:`~.plan.Plan`'s alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from syncsup import proto
from syncsup.backoff import Backoff
from syncsup.status import shorten
from syncsup.syncer.plan import Finished

__all__ = ["Conn", "Key", "Lanes", "MasterPort", "Masters", "Phase", "Process", "done_message",
           "summary"]

log = logging.getLogger("syncsup.syncer")

Key = tuple[str, int]  # (sync name, target index)

PROGRESS_CHECK = 1.0  # seconds between loop turns while any batch is in hand


class Phase(StrEnum):
    """Where one slot is. A TRANSFER runs a process of its own; an AGENT
    step speaks to a session that outlives it (see :class:`Lanes` for what
    counts against ``max_processes``)."""

    IDLE = "idle"          # no batch: its credit is with the collator
    BETWEEN = "between"    # a batch, no step running (one is being started or settled)
    WAITING = "waiting"    # its next step waits for a process to be free
    TRANSFER = "transfer"  # a step's process runs
    AGENT = "agent"        # an agent step runs


@dataclass
class Lane:
    phase: Phase = Phase.IDLE
    started: float = 0.0  # when its batch came
    session: bool = False  # a remote agent session of this target is open
    used: float = 0.0     # when its session last had a step
    wants: tuple[bool, bool] = (False, False)  # WAITING: (an agent step, on a session)


class Lanes:
    """Every slot's phase: its credit, its place in the queue for a process.

    The collator sends a target a batch only for a credit (a READY, or the
    DONE of its previous batch), so a slot holds at most one batch; one
    that comes anyway is dropped, never queued.

    ``max_processes`` (0: no cap) bounds the targets at work at once
    across all syncs: a target running a transfer, or holding an open
    session of its remote agent (a channel of the ssh master, or an ssh
    client where the master would not carry it, and a Python agent there,
    for as long as the session lives), or both, counts
    one. A local agent runs in the syncer and counts nothing; an agent step
    on a session already open, or a transfer beside it, needs no more room.
    A step that needs room when all of it is taken first closes a session
    that runs nothing (its target's next agent step opens another), the
    one unused longest, a target with no batch first; with none to close
    it waits, and the room freed goes to the slot whose batch came first.
    So the peak is the daemon plus ``max_processes`` targets' processes (a
    session and a transfer each at most), plus one ssh master per login
    in use (:class:`Masters`). Invariant: ``at_work() <=
    max_processes`` after every decision, when capped."""

    def __init__(self, keys: Iterable[Key], max_processes: int) -> None:
        self.lanes = {k: Lane() for k in keys}
        self.max_processes = max_processes
        self.closing: list[Key] = []  # sessions to close now (see take_closing)

    def phase(self, key: Key) -> Phase:
        return self.lanes[key].phase

    def started(self, key: Key) -> float:
        return self.lanes[key].started

    # -- credits ----------------------------------------------------------------------

    def accept(self, key: Key, now: float) -> str | None:
        """Take a batch for ``key``: None, or why it is dropped."""
        lane = self.lanes.get(key)
        if lane is None:
            return "unknown target"
        if lane.phase is not Phase.IDLE:
            return "busy"
        lane.phase, lane.started = Phase.BETWEEN, now
        return None

    def finish(self, key: Key, now: float) -> float:
        """The batch of ``key`` is over (its DONE gives the credit back):
        the seconds it took."""
        lane = self.lanes[key]
        lane.phase = Phase.IDLE
        return now - lane.started

    def idle(self) -> list[Key]:
        """The slots whose credit a (re)started collator must be given."""
        return [k for k, lane in self.lanes.items() if lane.phase is Phase.IDLE]

    def busy(self) -> list[Key]:
        """The slots holding a batch, the oldest batch first: the loop serves
        them in this order."""
        held = [(lane.started, k) for k, lane in self.lanes.items() if lane.phase is not Phase.IDLE]
        return [k for _, k in sorted(held)]

    # -- processes --------------------------------------------------------------------

    def running(self) -> int:
        return sum(1 for lane in self.lanes.values() if lane.phase is Phase.TRANSFER)

    def sessions(self) -> int:
        return sum(1 for lane in self.lanes.values() if lane.session)

    @staticmethod
    def _works(lane: Lane) -> bool:
        return lane.session or lane.phase is Phase.TRANSFER

    def at_work(self) -> int:
        """The targets that count against the cap: a transfer, a session, or both."""
        return sum(1 for lane in self.lanes.values() if self._works(lane))

    def session_ended(self, key: Key) -> None:
        """``key``'s remote agent session ended (idle, lost, closed)."""
        self.lanes[key].session = False

    def _room(self, key: Key) -> bool:
        """Is there room for ``key`` to start a process, or can some be made
        by closing a session that runs nothing (recorded in :attr:`closing`)?"""
        if not self.max_processes or self.at_work() < self.max_processes:
            return True
        idle = [(lane.phase is not Phase.IDLE, lane.used, k) for k, lane in self.lanes.items()
                if k != key and lane.session and lane.phase not in (Phase.AGENT, Phase.TRANSFER)]
        if not idle:
            return False
        victim = min(idle)[2]
        self.lanes[victim].session = False
        self.closing.append(victim)
        return True

    def take_closing(self) -> list[Key]:
        """The sessions the decisions since the last call closed: the loop
        ends each (none of them runs a step)."""
        out, self.closing = self.closing, []
        return out

    def may_start(self, key: Key, *, agent: bool, session: bool = False,
                  now: float = 0.0) -> bool:
        """The slot has its next step: may it start now? ``agent``: an
        agent step; ``session``: on a remote target's session (open now,
        or opened by the step). One that needs no new process always may;
        any other waits (WAITING) while every process is taken and no idle
        session can be closed, and one that waits already keeps its place
        behind the older."""
        lane = self.lanes[key]
        if agent and (not session or lane.session):
            lane.phase, lane.used = Phase.AGENT, now
            return True
        if not agent and lane.session:  # beside its own session: no more room
            lane.phase = Phase.BETWEEN
            return True
        if not any(self._ahead(key)) and self._room(key):
            self._begin(key, agent, session, now)
            return True
        lane.phase, lane.wants = Phase.WAITING, (agent, session)
        return False

    def _begin(self, key: Key, agent: bool, session: bool, now: float) -> None:
        lane = self.lanes[key]
        if agent:
            lane.phase, lane.used = Phase.AGENT, now
            lane.session = lane.session or session
        else:
            lane.phase = Phase.BETWEEN

    def _ahead(self, key: Key) -> Iterable[Key]:
        mine = self.lanes[key].started
        return (k for k, lane in self.lanes.items()
                if k != key and lane.phase is Phase.WAITING and lane.started < mine)

    def take(self, now: float = 0.0) -> Key | None:
        """The slot that may start its waiting step now: the oldest batch's,
        while a process is free or an idle session can be closed; None when
        none may. The loop then starts its step."""
        waiting = [(lane.started, k) for k, lane in self.lanes.items()
                   if lane.phase is Phase.WAITING]
        if not waiting:
            return None
        key = min(waiting)[1]
        if not self.lanes[key].session and not self._room(key):
            return None
        self._begin(key, *self.lanes[key].wants, now)
        return key

    def transfer_started(self, key: Key) -> None:
        self.lanes[key].phase = Phase.TRANSFER

    def step_ended(self, key: Key) -> None:
        """Its step (transfer or agent) ended: its process is free again
        (a session stays open, and counted, until it is closed)."""
        self.lanes[key].phase = Phase.BETWEEN

    def wake_in(self) -> float | None:
        """With a batch in hand, the loop turns at least every second (a
        transfer's progress check, a step waiting, an agent's answer)."""
        return PROGRESS_CHECK if any(lane.phase is not Phase.IDLE
                                     for lane in self.lanes.values()) else None


# -- ssh masters ---------------------------------------------------------------------


class Process(Protocol):
    def poll(self) -> int | None:
        """Its exit code once it has ended, else None."""


Conn = str  # one ssh connection: its control path, the same for every target that shares it


class MasterPort(Protocol):
    """What :class:`Masters` asks of the operating system."""

    def start(self, conn: Conn) -> Process:
        """Start the ssh master of the connection ``conn``. Raises OSError."""

    def stop(self, process: Process) -> None:
        """End it and its process group."""


@dataclass
class Master:
    label: str
    idle: float = 0.0     # seconds unused before it is closed (0: never)
    process: Process | None = None
    failures: int = 0     # ends in a row; each one waits longer, up to the cap
    next_start: float = 0.0
    started: float = 0.0  # when the process running now was started
    used: float = 0.0     # when a batch of one of its targets last came or ended
    busy: set[Key] = field(default_factory=set)  # its targets with a batch in hand


class Masters:
    """One multiplexing ssh connection per login, shared by every remote
    target reached with the same ssh command (user, host, port, key and
    options; ``StateDir.control_path`` names it), so a transfer costs no
    handshake and 32 targets on one host keep one ssh process and one sshd
    session, not 32. One that is down is no error: transfers connect
    directly (ControlMaster=no falls back, as it does for a session the
    server's ``MaxSessions`` refuses), and it is started again after the
    :class:`~syncsup.backoff.Backoff` of its ends, so a host that cannot be
    reached costs one ssh now and then, never a tight loop.

    A master none of whose targets has a batch in hand, or had one within
    its ``idle`` seconds, is closed, which is no failure, and opened again
    by the next batch (:meth:`use`): targets at rest cost no process on
    either side. Invariant: a master is wanted while one of its targets has
    a batch or had one within ``idle``."""

    def __init__(self, port: MasterPort, backoff: Backoff, spawn_retry: float) -> None:
        self.port = port
        self.backoff = backoff
        self.spawn_retry = spawn_retry  # after ssh itself could not be run
        self.masters: dict[Conn, Master] = {}
        self.conn_of: dict[Key, Conn] = {}

    def add(self, key: Key, conn: Conn, label: str, idle: float = 0.0,
            now: float = 0.0) -> None:
        """``key``'s target reaches its host through ``conn``. Targets that
        share it keep it open for as long as the one that wants it longest
        (an idle of 0, never closed, wins)."""
        self.conn_of[key] = conn
        m = self.masters.get(conn)
        if m is None:
            self.masters[conn] = Master(label, idle, used=now)
        elif m.idle and (not idle or idle > m.idle):
            m.idle = idle

    def up(self, key: Key) -> bool:
        conn = self.conn_of.get(key)
        return conn is not None and self.masters[conn].process is not None

    def starting(self, key: Key, now: float, wait: float) -> bool:
        """Is ``key``'s master running, started less than ``wait`` seconds
        ago? If it does not listen yet, a step started now would make a
        connection of its own (a handshake on both ends, an ssh client
        here, a session process there): at a start, one per target beside
        the master. The step waits instead (the loop looks for the socket),
        and a master that fails or stalls past ``wait`` lets it connect by
        itself. False for a target with no master, or one backing off."""
        conn = self.conn_of.get(key)
        if conn is None:
            return False
        m = self.masters[conn]
        return m.process is not None and now - m.started < wait

    def use(self, key: Key, now: float, *, busy: bool) -> None:
        """A batch came (``busy``) or ended for ``key``'s target: its
        master is wanted, and started now if it is down and due."""
        conn = self.conn_of.get(key)
        if conn is None:
            return
        m = self.masters[conn]
        m.used = now
        if busy:
            m.busy.add(key)
        else:
            m.busy.discard(key)
        if busy and m.process is None and now >= m.next_start:
            self._start(conn, m, now)

    def _wanted(self, m: Master, now: float) -> bool:
        return not m.idle or bool(m.busy) or now - m.used < m.idle

    def _start(self, conn: Conn, m: Master, now: float) -> None:
        try:
            m.process = self.port.start(conn)
            m.started = now
        except OSError as exc:
            log.error("cannot run ssh: %s", exc)
            m.next_start = now + self.spawn_retry

    def tend(self, now: float) -> None:
        """Notice each master that ended; close each one unused for its
        idle time; start each one that is due and wanted."""
        for conn, m in self.masters.items():
            if m.process is not None:
                rc = m.process.poll()
                if rc is None:
                    if m.failures and now - m.started >= self.backoff.cap:
                        m.failures = 0  # up as long as the longest wait: the next loss waits little
                    if not self._wanted(m, now):
                        self.port.stop(m.process)
                        m.process = None
                        log.debug("%s: ssh master connection closed after %.0f s unused",
                                  m.label, m.idle)
                    continue
                m.process = None
                m.failures += 1
                m.next_start = now + self.backoff.raw(m.failures)
                log.info("%s: ssh master connection ended (rc %d); direct connections until "
                         "it is back", m.label, rc)
                continue
            if now < m.next_start or not self._wanted(m, now):
                continue
            self._start(conn, m, now)

    def wake_in(self, now: float) -> float | None:
        """Seconds until the next master is due to start or to close (an
        ending one wakes the loop through SIGCHLD)."""
        due = []
        for m in self.masters.values():
            if m.process is None and self._wanted(m, now):
                due.append(max(0.0, m.next_start - now))
            elif m.process is not None and m.idle and not m.busy:
                due.append(max(0.0, m.used + m.idle - now))
        return min(due) if due else None

    def stop_all(self) -> None:
        for m in self.masters.values():
            if m.process is not None:
                self.port.stop(m.process)
                m.process = None


# -- what a finished batch reports -----------------------------------------------------


def done_message(batch: proto.Batch, end: Finished, *, moves_done: int, sent: int,
                 seconds: float, incarnation: str) -> proto.Done:
    """The DONE for ``batch`` (which is also the slot's next credit)."""
    return proto.Done(batch_id=batch.batch_id, sync=batch.sync, target=batch.target,
                      outcome=end.outcome, rc=end.rc, error=end.error, seconds=seconds,
                      moves_done=moves_done, bytes=sent, incarnation=incarnation)


def summary(label: str, batch: proto.Batch, end: Finished, *, moves_done: int, sent: int,
            seconds: float) -> tuple[int, str]:
    """The log level and line for a finished batch: INFO when it went
    through, WARNING with the error's first 300 characters when not."""
    ch = batch.changes
    ok = end.outcome is proto.Outcome.OK
    why = "" if ok else f" (rc {end.rc}: {shorten(' | '.join(end.error.splitlines()), 300)})"
    line = (f"{label}: batch {batch.batch_id}, {len(ch.paths)} paths, "
            f"{len(ch.trees | ch.verify | ch.prove)} trees, {moves_done} renames, {sent} bytes, "
            f"{seconds:.2f}s: {end.outcome.value}{why}")
    return (logging.INFO if ok else logging.WARNING), line
