"""The syncer process: one slot per target of every sync, each running at
most one step of one batch at a time, as decided by its :class:`Plan`.

This loop only does the I/O: it receives batches, spawns steps, polls them
and the agents, and sends DONEs. Every decision is made elsewhere, from
what it observed: which slot may take a batch or start a transfer, and
when an ssh master is started again, in ``core.py``; a batch's plan, the
names a step sends and what a result says, in ``steps.py``; what a result
means for the batch, in ``plan.py`` (:meth:`Plan.advance`, called only from
:meth:`Syncer.settle`).

One loop thread: children are polled, never waited on, so one hung transfer
cannot stall the other targets, the heartbeats or a stop request; SIGCHLD
wakes the loop when a child ends. Every child runs in its own process group
with PR_SET_PDEATHSIG, so killing the syncer (or its whole group) never
leaves a transfer behind. The one other thread is a first start's proof
(``proof_step.py``): the loop reads its result and progress, and may only
signal its session (the rules are in that module); it wakes the loop as a
child's end does.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import IO

import msgpack
import zmq

from syncsup import config as cfg
from syncsup import proto
from syncsup.backoff import Backoff
from syncsup.child import ChildRuntime
from syncsup.logs import setup_logging
from syncsup.privilege import super_receiver
from syncsup.processes import drain_fd
from syncsup.sockets import Reconnects, new_socket, receive, send
from syncsup.sourceroot import root_problem
from syncsup.statedir import StateDir
from syncsup.status import StatusPart, TransferStatus, TransportStatus
from syncsup.syncer.agents import watched_fds
from syncsup.syncer.argv import rsync_argv
from syncsup.syncer.core import Conn, Key, Lanes, Masters, Phase, done_message, summary
from syncsup.syncer.masters import SshMasters
from syncsup.syncer.plan import Finished, Result, Step, StepKind
from syncsup.syncer.proof_step import ProofStep
from syncsup.syncer.prove import NO_PROOF
from syncsup.syncer.readonce import SHARED
from syncsup.syncer.sharedbatch import MAX_WAITS, SharedBatches, Use, batch_key, shares
from syncsup.syncer.sharedbatch import Key as BatchKey
from syncsup.syncer.slots import Slot, make_slots
from syncsup.syncer.steps import (
    agent_names,
    files_from,
    interpret,
    plan_batch,
    rsync_names,
    source_empty,
)
from syncsup.syncer.transfer import Transfer

__all__ = ["Syncer", "main"]

# rsync: some files not transferred (23), some vanished before they could be (24)
AS_PLAIN = frozenset({23, 24})
HOLD_POLL = 0.05  # s: how often a step held (for its master, or for its batch) looks again

log = logging.getLogger("syncsup.syncer")


class Syncer:
    def __init__(self, conf: cfg.Config) -> None:
        self.config_path = conf.path
        self.timings = conf.timings
        self.super_receiver = super_receiver()  # the capabilities do not change
        self.state = StateDir(conf.settings.state_dir)
        self.rt = ChildRuntime(self.state, "syncer", conf.timings.heartbeat_interval)
        self.state.tmp.mkdir(mode=0o700, exist_ok=True)
        self.sock = new_socket(self.rt.ctx, zmq.DEALER)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_CONNECTED)
        self.sock.connect(self.state.endpoint("dispatch"))
        self.slots = make_slots(conf, self.state)
        self.lanes = Lanes(self.slots, conf.settings.max_processes)
        self.masters = Masters(SshMasters(self._master_of, conf.timings.step_stop_grace),
                               Backoff(conf.timings.master_retry, conf.timings.master_retry_cap),
                               conf.timings.master_retry_cap)
        started = time.monotonic()
        for slot in self.slots.values():
            if slot.control_path is not None:
                self.masters.add(slot.key, slot.control_path, f"ssh {slot.target.login}",
                                 slot.sync.ssh.master_idle, started)
        # the remote agents (with or without an ssh master: a state_dir
        # path too long for a control socket has none)
        self.agents = [s for s in self.slots.values()
                       if s.channel is not None and s.channel.local is None]
        self.files: dict[tuple[str, int], tuple[IO[bytes], IO[bytes]]] = {}
        # one rsync batch file replayed to the other local targets of a step
        self.shared = SharedBatches(self.state.tmp)
        self.sharing = {sync.name for sync in conf.syncs if shares(sync)}
        # slots whose step waits for its batch's recording: until when, for
        # which batch, how many times the step has waited so far
        self.awaiting: dict[Key, tuple[float, BatchKey, int]] = {}
        self.reconnects = Reconnects(self.monitor)
        # slots whose next step waits for their login's master to listen
        self.held: set[tuple[str, int]] = set()

    def _master_of(self, conn: Conn) -> tuple[cfg.Sync, cfg.Target]:
        """A target that reaches its host through ``conn`` (all of them
        share one ssh command)."""
        slot = next(s for s in self.slots.values() if s.control_path == conn)
        return slot.sync, slot.target

    # -- collator ------------------------------------------------------------------

    def ready(self, slot: Slot) -> None:
        send(self.sock, proto.Ready(sync=slot.sync.name, target=slot.index,
                                    incarnation=self.rt.incarnation), log=log)

    def on_batch(self, batch: proto.Batch) -> None:
        now = time.monotonic()
        why = self.lanes.accept((batch.sync, batch.target), now)
        if why is not None:
            log.warning("dropped batch %d for %s/%d: %s", batch.batch_id, batch.sync,
                        batch.target, why)
            return
        self.masters.use((batch.sync, batch.target), now, busy=True)
        slot = self.slots[(batch.sync, batch.target)]
        slot.batch, ch = batch, slot.channel
        slot.plan = plan_batch(batch, slot.sync, slot.target, slot.rules,
                               empty=source_empty(slot.sync.source),
                               agent_writes=ch is not None and ch.may_write(now),
                               agent_renames=ch is not None and ch.available(now),
                               provable=(ch is None or ch.available(now))
                               and now >= slot.unprovable_until, now=now)
        slot.sent = 0
        self.proceed(slot, slot.plan.first())

    def proceed(self, slot: Slot, nxt: Step | Finished) -> None:
        """Start ``nxt`` or report the batch's outcome. A step the lanes
        hold back waits (the slot keeps it) until the loop is given it."""
        if isinstance(nxt, Finished):
            self.finish(slot, nxt)
            return
        slot.step = nxt
        on_open_session = (nxt.by_agent and slot.channel is not None
                           and slot.channel.session_open())
        if not on_open_session and self._master_coming(slot, time.monotonic()):
            if slot.key not in self.held:
                log.debug("%s: waits for its ssh master to listen", slot.label)
            self.held.add(slot.key)  # taken up again by the loop (see run)
            return
        remote = slot.channel is not None and slot.channel.local is None
        may = self.lanes.may_start(slot.key, agent=nxt.by_agent, session=remote,
                                   now=time.monotonic())
        self._close_sessions()
        if may:
            self.start(slot, nxt)

    def _master_coming(self, slot: Slot, now: float) -> bool:
        """Its login's master started moments ago and does not listen yet
        (the socket is looked for only then, not at every step)."""
        path = slot.control_path
        return (path is not None
                and self.masters.starting(slot.key, now, self.timings.master_wait)
                and not os.path.exists(path))

    def _awaits(self, key: Key, now: float) -> bool:
        """Does the slot still wait for the recording of its step's batch?"""
        waits = self.awaiting.get(key)
        return waits is not None and now < waits[0] and self.shared.writing(waits[1])

    def _close_sessions(self) -> None:
        """End the idle agent sessions the lanes closed to free a process."""
        for key in self.lanes.take_closing():
            channel = self.slots[key].channel
            if channel is not None:
                channel.end_session()

    def _files(self, slot: Slot) -> tuple[IO[bytes], IO[bytes]]:
        key = (slot.sync.name, slot.index)
        if key not in self.files:
            base = self.state.tmp / f"{slot.sync.name}-{slot.index}"
            self.files[key] = (open(f"{base}.err", "w+b"), open(f"{base}.out", "w+b"))  # noqa: SIM115
        return self.files[key]

    def start(self, slot: Slot, step: Step) -> None:
        """Start ``step`` (an agent step on a local target is done at once)."""
        waits = self.awaiting.pop(slot.key, None)
        problem = root_problem(slot.sync.source)
        if problem is not None:
            # rsync would follow a symlink put at the root and mirror the
            # tree it points to: never; the batch waits for the root.
            self.settle(slot, Result(rc=-1, error=problem, unstarted=True))
            return
        try:
            self._start(slot, step, waited=waits[2] if waits is not None else 0)
        except OSError as exc:
            # state_dir full or unwritable (the file lists live there): the
            # batch goes back to pending and is retried with backoff.
            self.settle(slot, Result(rc=-1, unstarted=True,
                                     error=f"cannot prepare the transfer: {exc.strerror or exc}"))

    def _start(self, slot: Slot, step: Step, waited: int = 0) -> None:
        assert slot.batch is not None and slot.plan is not None
        changes = slot.batch.changes
        if step.by_agent:
            assert slot.channel is not None
            now = time.monotonic()
            if step.kind is StepKind.MOVES:
                done = slot.channel.rename(list(step.renames), now)
            else:
                names, times = agent_names(slot.sync, slot.plan, step)
                if not names:  # times alone, all set by the rsync step before it
                    self.settle(slot, Result(rc=0))
                    return
                done = slot.channel.begin(names, slot.batch.startup, now, times)
            slot.sent += slot.channel.sent
            if done is not None:
                self.settle(slot, done)
            return
        if step.kind is StepKind.PROVE:
            try:
                slot.transfer = ProofStep(slot.label, slot.sync, slot.target,
                                          step.names, slot.control_path, self._files(slot)[0],
                                          time.monotonic(), self.timings, slot.rules)
            except RuntimeError as exc:  # no thread to be had (a cgroup's pids.max)
                self.settle(slot, Result(rc=NO_PROOF, error=f"prove: cannot start: {exc}: "
                                                            "comparing every file's content"))
                return
            self.lanes.transfer_started(slot.key)
            return
        lst = self.state.tmp / f"{slot.sync.name}-{slot.index}-{step.kind.value}.list"
        key, names = None, []
        if step.kind is StepKind.COMMAND:
            write_new(lst, msgpack.packb({"changes": proto.to_wire(changes),
                                           "startup": slot.batch.startup}, use_bin_type=True))
            argv = [sys.executable, "-P", "-m", "syncsup.syncer.action_runner",
                    str(self.config_path), slot.sync.name, str(slot.index), str(lst)]
        else:
            sends = rsync_names(slot.plan, step, changes, slot.rules,
                                os.fsencode(slot.sync.source),
                                missing_args=slot.receiver.missing_args,
                                empty=lambda: source_empty(slot.sync.source),
                                deletes=slot.sync.deletes(slot.batch.startup),
                                implied_dirs=slot.receiver.implied_dirs)
            if not sends.names:  # nothing rsync would send, or nothing left to set
                self.settle(slot, Result(rc=0))
                return
            step = slot.step = sends.step
            listed = files_from(sends.names)
            write_new(lst, listed)
            argv = rsync_argv(slot.sync, slot.target, step, str(lst), slot.batch.startup,
                              slot.control_path, sends.missing_args, self.super_receiver)
            if slot.sync.name in self.sharing:
                key = batch_key(step, slot.target, argv, listed,
                                (slot.sync.name, slot.batch.journal))
                names = sends.names
        now = time.monotonic()
        use = self.shared.use(key, argv, os.fsencode(slot.sync.source), names, now,
                              generation=slot.batch.generation, wait=waited < MAX_WAITS)
        if use.waits and use.key is not None:
            # its batch is being recorded by another target: taken up again
            # by the loop when that ends (or after WAIT), holding no process
            self.awaiting[slot.key] = (use.waits, use.key, waited + 1)
            self.held.add(slot.key)
            return
        self._spawn(slot, step, use)

    def _spawn(self, slot: Slot, step: Step, use: Use) -> None:
        """Run ``step``'s process (``use.argv``: plain, or a shared batch's)."""
        log.debug("%s: %s", slot.label, use.argv)
        try:
            err, out = self._files(slot)
            slot.transfer = Transfer(f"{slot.label}: {step.kind.value} transfer", use.argv, err,
                                     out, time.monotonic(), self.timings)
        except OSError as exc:
            self.shared.ended(use, False, time.monotonic())  # a recording that never ran
            if not isinstance(exc, FileNotFoundError):
                raise
            if use.argv != use.plain:
                self._spawn(slot, step, Use(use.plain, use.plain))
                return
            self.settle(slot, Result(rc=127, error=f"cannot run {use.argv[0]}: {exc}",
                                     unstarted=True))
            return
        slot.use = use
        self.lanes.transfer_started(slot.key)

    def poll(self, slot: Slot, now: float) -> None:
        """Look at the step running in ``slot``, if one is."""
        phase = self.lanes.phase(slot.key)
        if phase is Phase.AGENT:
            assert slot.channel is not None
            done = slot.channel.poll(now)
            if done is not None:
                self.settle(slot, done)
            return
        if phase is not Phase.TRANSFER or slot.transfer is None:
            return
        result = slot.transfer.poll()
        if result is None:
            slot.transfer.check(now, slot.sync.rsync.timeout)
            return
        slot.sent += slot.transfer.sent_bytes()
        slot.transfer = None
        use, slot.use = slot.use, None
        if use is not None and use.shared and slot.step is not None:
            ok = result.rc == 0 and not result.stalled
            self.shared.ended(use, ok, now)
            # A recording is a plain run that also writes the batch: files
            # that vanished or changed while it read them (24, 23) end it as
            # they end a plain run, whose result it then is; any other
            # failure may be the batch's own (its file: 11, 12, SIGXFSZ).
            as_plain = use.writes is not None and result.rc in AS_PLAIN
            if not ok and not result.stalled and not as_plain:
                # the plain run's result is the step's, whatever sharing did
                if use.writes is None:
                    self.shared.failed(use)
                log.info("%s: the %s batch failed (rsync exit %d: %s); sending directly",
                         slot.label, "recorded" if use.writes else "shared", result.rc,
                         result.error or "no message")
                try:
                    self._spawn(slot, slot.step, Use(use.plain, use.plain))
                except OSError as exc:
                    self.settle(slot, Result(rc=-1, unstarted=True, error="cannot start the "
                                             f"transfer: {exc.strerror or exc}"))
                return
        self.settle(slot, result)

    def settle(self, slot: Slot, result: Result) -> None:
        """The one place a step's result meets its plan: ``Plan.advance``
        decides what it means (the next step, or the batch's outcome)."""
        assert slot.plan is not None and slot.step is not None and slot.batch is not None
        self.lanes.step_ended(slot.key)
        result = interpret(slot.step, result, receiver=slot.receiver, sync=slot.sync,
                           target=slot.target, startup=slot.batch.startup, label=slot.label)
        if slot.step.kind is StepKind.PROVE and slot.target.is_remote:
            # a remote target whose ctimes could not be read (no agent, an
            # older one, a wedged one): its arrived directories are compared
            # for a while rather than tried again at every batch
            slot.unprovable_until = (time.monotonic() + self.timings.agent_retry
                                     if result.rc == NO_PROOF else 0.0)
        self.proceed(slot, slot.plan.advance(slot.step, result))

    def finish(self, slot: Slot, end: Finished) -> None:
        batch, plan = slot.batch, slot.plan
        assert batch is not None and plan is not None
        now = time.monotonic()
        seconds = self.lanes.finish(slot.key, now)
        self.masters.use(slot.key, now, busy=False)
        level, line = summary(slot.label, batch, end, moves_done=plan.moves_done,
                              sent=slot.sent, seconds=seconds)
        log.log(level, "%s", line)
        send(self.sock, done_message(batch, end, moves_done=plan.moves_done, sent=slot.sent,
                                     seconds=seconds, incarnation=self.rt.incarnation), log=log)
        slot.batch = slot.plan = slot.step = None

    # -- loop --------------------------------------------------------------------------

    def status(self) -> StatusPart:
        now = time.monotonic()
        running = [TransferStatus(sync=s.sync.name, target=s.target.spec,
                                  phase=s.step.kind.value if s.step else "",
                                  seconds=now - self.lanes.started(s.key),
                                  io_bytes=max(0, s.transfer.io_seen) if s.transfer else 0)
                   for s in self.slots.values() if s.batch is not None]
        transports = [TransportStatus(sync=s.sync.name, target=s.target.spec,
                                      transport=s.channel.transport(now) if s.channel else "rsync")
                      for s in self.slots.values()]
        return StatusPart(role="syncer", transfers=running, transports=transports)

    def timeout(self, now: float, beat_in: float) -> float:
        """Idle, only the heartbeat and the ssh masters' retries wake us (a
        master that ends wakes us through SIGCHLD)."""
        due = [beat_in, self.lanes.wake_in(), self.masters.wake_in(now),
               HOLD_POLL if self.held else None]
        return min(d for d in due if d is not None)

    def _poll_agents(self, poller: zmq.Poller, polled: dict[int, int]) -> dict[int, int]:
        """Keep the poller watching the remote agents' pipes."""
        reads, writes = watched_fds(s.channel for s in self.agents if s.channel is not None)
        wanted: dict[int, int] = {**dict.fromkeys(reads, int(zmq.POLLIN)),
                                  **dict.fromkeys(writes, int(zmq.POLLOUT))}
        for fd in polled.keys() - wanted.keys():
            poller.unregister(fd)
        for fd, flags in wanted.items():
            if polled.get(fd) != flags:
                poller.register(fd, flags)
        return wanted

    def on_connected(self) -> None:
        """(Re)connected to the collator: a restarted one knows no credits."""
        if self.reconnects.again():
            for key in self.lanes.idle():
                self.ready(self.slots[key])

    def run(self) -> int:
        self.masters.tend(time.monotonic())
        for slot in self.slots.values():
            self.ready(slot)
        exits = self.rt.watch_children()
        poller = zmq.Poller()
        for sock in (self.sock, self.monitor, self.rt.control):
            poller.register(sock, zmq.POLLIN)
        poller.register(exits, zmq.POLLIN)
        polled: dict[int, int] = {}
        while not self.rt.stopping:
            now = time.monotonic()
            beat_in = self.rt.heartbeat(now)
            polled = self._poll_agents(poller, polled)
            events = dict(poller.poll(int(self.timeout(now, beat_in) * 1000) + 1))
            if exits in events:
                drain_fd(exits)
            if self.sock in events:
                for _peer, msg in receive(self.sock, log, limit=100):
                    if isinstance(msg, proto.Batch):
                        self.on_batch(msg)
                        # a local agent step runs here, in this thread: beat
                        # between batches, not only once per loop turn
                        self.rt.heartbeat(time.monotonic())
                    else:
                        log.warning("dropped unexpected %s", type(msg).__name__)
            if self.monitor in events:
                self.on_connected()
            if self.rt.control in events:
                self.rt.on_control(log, self.status)
            now = time.monotonic()
            SHARED.prune()  # file content kept for other targets: not at rest
            self.shared.expire(now)  # and batch files
            for slot in self.agents:
                if slot.channel is None:
                    continue
                if slot.batch is None:
                    slot.channel.rest(now)
                # A session speaks or ends outside an agent step (between
                # batches, or during the slot's rsync step): read it now.
                # Left unread, its readable pipe would wake this poll at
                # once, turn after turn, a core spent until the step ends.
                if self.lanes.phase(slot.key) is not Phase.AGENT:
                    rfds, _ = slot.channel.fds()
                    if any(fd in events for fd in rfds):
                        slot.channel.read_ready(now)
                if not slot.channel.session_open():
                    self.lanes.session_ended(slot.key)
            for key in self.lanes.busy():
                self.poll(self.slots[key], now)
            for key in sorted(self.held, key=self.lanes.started):
                slot = self.slots[key]
                if slot.step is None or slot.batch is None:
                    self.held.discard(key)  # (never: a held batch waits for this loop)
                elif not self._master_coming(slot, now) and not self._awaits(key, now):
                    self.held.discard(key)
                    self.proceed(slot, slot.step)
            # the transfers freed go to the steps waiting, the oldest batch's first
            while (due := self.lanes.take(now)) is not None:
                self._close_sessions()
                slot = self.slots[due]
                assert slot.step is not None
                self.start(slot, slot.step)
            self.masters.tend(now)
        self.kill_all()
        self.monitor.close()
        self.rt.close()
        return 0

    def kill_all(self) -> None:
        for slot in self.slots.values():
            if slot.channel is not None:
                slot.channel.close()
            if slot.transfer is not None:
                slot.transfer.kill()
        self.shared.clear()
        self.masters.stop_all()


def write_new(path: Path, data: bytes) -> None:
    """Write ``path`` as a new file, the last one removed first: ext4 flushes
    a file that was truncated and written again when it is closed
    (``auto_da_alloc``), which cost the syncer's one thread 1 to 2 ms a
    step under a burst to a hundred targets, and a list needs no such care
    (a crash loses it with the step it was for)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def main(config_path: str, run_id: str) -> int:
    """Run the whole process; ``run_id`` names this run of the supervisor."""
    conf = cfg.load_for_child(config_path)
    setup_logging(conf.settings, "syncer")
    # A proof's walk holds a descriptor per level of depth (a tree may be
    # 2,000 deep), beside each target's pipes and sessions: the soft limit
    # (often 1,024) is raised to the hard one, which the system granted.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return Syncer(conf).run()
