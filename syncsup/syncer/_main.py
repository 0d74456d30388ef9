"""The syncer process: one slot per target of every sync, each running at
most one step of one batch at a time, as decided by its :class:`Plan`.
Which slot may take a batch or start a transfer, and when an ssh master is
started again, is decided in ``core.py``; this loop does the I/O.

Single-threaded: children are polled, never waited on, so one hung transfer
cannot stall the other targets, the heartbeats or a stop request; SIGCHLD
wakes the loop when a child ends. Every child runs in its own process group
with PR_SET_PDEATHSIG, so killing the syncer (or its whole group) never
leaves a transfer behind.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgpack
import zmq

from syncsup import config as cfg
from syncsup import proto
from syncsup.backoff import Backoff
from syncsup.child import ChildRuntime
from syncsup.filters import RuleList
from syncsup.logs import setup_logging
from syncsup.processes import drain_fd, stop_group
from syncsup.sockets import Reconnects, new_socket, receive, send
from syncsup.sourceroot import root_problem
from syncsup.statedir import StateDir
from syncsup.status import StatusPart, TransferStatus, TransportStatus
from syncsup.syncer.agents import Channel, unusable
from syncsup.syncer.argv import expand_rule_files, rsync_argv, ssh_argv
from syncsup.syncer.core import Key, Lanes, Masters, Phase, Process, done_message, summary
from syncsup.syncer.deletions import receiver_takes_missing_args, with_contents
from syncsup.syncer.moves import (
    agent_command,
    agent_requests,
    local_renames,
    remote_rename_command,
    replayable,
    retyped_parents,
)
from syncsup.syncer.plan import Finished, Plan, Result, Step, StepKind
from syncsup.syncer.prove import nothing_to_prove, proven
from syncsup.syncer.readonce import SHARED
from syncsup.syncer.transfer import Transfer, spawn

__all__ = ["Slot", "Syncer", "main"]

log = logging.getLogger("syncsup.syncer")


@dataclass
class Slot:
    """One target of one sync: its batch, plan and running step (its phase
    is :class:`~.core.Lanes`'s)."""

    sync: cfg.Sync
    index: int
    target: cfg.Target
    control_path: str | None
    batch: proto.Batch | None = None
    plan: Plan | None = None
    step: Step | None = None
    transfer: Transfer | None = None
    sent: int = 0
    channel: Channel | None = None  # the target's agent, if the sync can use one
    rules: RuleList = field(default_factory=RuleList)
    missing_args: bool = True  # the receiver takes --delete-missing-args

    @property
    def label(self) -> str:
        return f"target {self.target.spec}"

    @property
    def key(self) -> Key:
        return (self.sync.name, self.index)


class SshMasters:
    """The real :class:`~.core.MasterPort`: ``ssh -M`` in its own process
    group, ended with the step grace."""

    def __init__(self, slots: dict[Key, Slot], grace: float) -> None:
        self.slots, self.grace = slots, grace

    def start(self, key: Key) -> Process:
        slot = self.slots[key]
        assert slot.control_path is not None
        return spawn([*ssh_argv(slot.sync), "-M", "-N", "-o",
                      f"ControlPath={slot.control_path}", "-o", "ControlPersist=no", "--",
                      slot.target.login])

    def stop(self, process: Process) -> None:
        assert isinstance(process, subprocess.Popen)
        stop_group(process, self.grace)


def _names(paths: list[bytes]) -> bytes:
    """The ``--files-from`` list. Every name gets a ``./`` prefix: rsync
    skips list entries starting with ``#`` or ``;`` as comments, even with
    ``--from0``, and ``./`` is harmless for every other name."""
    return b"".join((b"./" + p if p else b".") + b"\0" for p in paths)


def _nearest_sendable(root: bytes, paths: list[bytes]) -> list[bytes]:
    """Replace each path whose parent is no longer a directory in the source
    by its first ancestor that is not one (a file, a symlink, or gone).

    rsync fails on ``a/b`` when ``a`` became a file ("Not a directory", exit
    23, retried forever); sending ``a`` itself is what the target needs: it
    replaces the old directory (``--force``) or deletes it. (A symlinked
    ``a`` is never followed either way: rsync's sender refuses symlinks in
    parent components.)"""
    is_dir: dict[bytes, bool] = {b"": True}
    out: dict[bytes, None] = {}
    for path in paths:
        parts = path.split(b"/")
        prefix = b""
        chosen = path
        for part in parts[:-1]:
            prefix = prefix + b"/" + part if prefix else part
            known = is_dir.get(prefix)
            if known is None:
                try:
                    known = stat.S_ISDIR(os.lstat(os.path.join(root, prefix)).st_mode)
                except OSError:
                    known = False
                is_dir[prefix] = known
            if not known:
                chosen = prefix
                break
        out[chosen] = None
    return list(out)


def _empty(source: Path) -> bool:
    """True if the source root has no entries (or is not there at all)."""
    try:
        with os.scandir(source) as it:
            return next(it, None) is None
    except OSError:
        return True


class Syncer:
    def __init__(self, conf: cfg.Config) -> None:
        self.config_path = conf.path
        self.timings = conf.timings
        self.state = StateDir(conf.settings.state_dir)
        self.rt = ChildRuntime(self.state, "syncer", conf.timings.heartbeat_interval)
        self.state.tmp.mkdir(mode=0o700, exist_ok=True)
        self.sock = new_socket(self.rt.ctx, zmq.DEALER)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_CONNECTED)
        self.sock.connect(self.state.endpoint("dispatch"))
        self.slots: dict[Key, Slot] = {}
        for raw in conf.syncs:
            sync = expand_rule_files(raw)
            rules = RuleList(sync)
            for i, t in enumerate(sync.targets):
                cp = self.state.control_path(sync.name, i) if t.over_ssh else None
                slot = self.slots[(sync.name, i)] = Slot(sync, i, t, cp, rules=rules)
                why = unusable(sync, t)
                if why is None:
                    slot.channel = Channel(sync, t, cp, self._agent_errfile(slot),
                                           conf.timings)
                elif i == 0 or t.is_daemon:
                    log.info("%s: every change goes through rsync (%s)", sync.name, why)
                slot.missing_args = receiver_takes_missing_args(sync, t)
        self.lanes = Lanes(self.slots, conf.settings.max_processes)
        self.masters = Masters(SshMasters(self.slots, conf.timings.step_stop_grace),
                               Backoff(conf.timings.master_retry, conf.timings.master_retry_cap),
                               conf.timings.master_retry_cap)
        for slot in self.slots.values():
            if slot.control_path is not None:
                self.masters.add(slot.key, slot.label)
        self.agents = [s for s in self.slots.values()
                       if s.control_path is not None and s.channel is not None]
        self.files: dict[tuple[str, int], tuple[IO[bytes], IO[bytes]]] = {}
        self.transfers = 0
        self.reconnects = Reconnects(self.monitor)

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
        slot = self.slots[(batch.sync, batch.target)]
        slot.batch = batch
        replay = None
        source = os.fsencode(slot.sync.source)
        if slot.sync.moves_on_target and not slot.sync.runs_commands:
            replay = replayable(batch.changes.moves, slot.rules, source)
        if not slot.sync.runs_commands:
            batch.changes.trees |= retyped_parents(batch.changes.paths, slot.rules, source)
            nothing_to_prove(batch.changes, slot.target)
        slot.plan = Plan.make(batch.changes, commands=slot.sync.runs_commands,
                              replay_moves=slot.sync.moves_on_target, replay=replay,
                              source_empty=_empty(slot.sync.source),
                              agent=slot.channel is not None and slot.channel.available(now))
        slot.sent = 0
        self.proceed(slot, slot.plan.first())

    def proceed(self, slot: Slot, nxt: Step | Finished) -> None:
        """Start ``nxt`` or report the batch's outcome. A step the lanes
        hold back waits (the slot keeps it) until the loop is given it."""
        if isinstance(nxt, Finished):
            self.finish(slot, nxt)
            return
        slot.step = nxt
        if self.lanes.may_start(slot.key, agent=nxt.kind is StepKind.AGENT):
            self.start(slot, nxt)

    def _agent_errfile(self, slot: Slot) -> IO[bytes]:
        return open(self.state.tmp / f"{slot.sync.name}-{slot.index}.agent.err", "w+b")

    def _files(self, slot: Slot) -> tuple[IO[bytes], IO[bytes]]:
        key = (slot.sync.name, slot.index)
        if key not in self.files:
            base = self.state.tmp / f"{slot.sync.name}-{slot.index}"
            self.files[key] = (open(f"{base}.err", "w+b"), open(f"{base}.out", "w+b"))  # noqa: SIM115
        return self.files[key]

    def start(self, slot: Slot, step: Step) -> None:
        """Start ``step`` (or, for renames on a local target, do it)."""
        problem = root_problem(slot.sync.source)
        if problem is not None:
            # rsync would follow a symlink put at the root and mirror the
            # tree it points to: never; the batch waits for the root.
            self.settle(slot, Result(rc=-1, error=problem, unstarted=True))
            return
        try:
            self._start(slot, step)
        except OSError as exc:
            # state_dir full or unwritable (the file lists live there): the
            # batch goes back to pending and is retried with backoff.
            self.settle(slot, Result(rc=-1, unstarted=True,
                                     error=f"cannot prepare the transfer: {exc.strerror or exc}"))

    def _start(self, slot: Slot, step: Step) -> None:
        assert slot.batch is not None and slot.plan is not None
        changes = slot.batch.changes
        if step.kind is StepKind.AGENT:
            assert slot.channel is not None
            names = _nearest_sendable(os.fsencode(slot.sync.source), list(step.names))
            done = slot.channel.begin(names, slot.batch.startup, time.monotonic())
            slot.sent += slot.channel.sent
            if done is not None:
                self.settle(slot, done)
            return
        lst = self.state.tmp / f"{slot.sync.name}-{slot.index}-{step.kind.value}.list"
        stdin: Path | None = None
        t = slot.target
        if step.kind is StepKind.MOVES and not t.is_remote:
            applied = local_renames(t.path, [[a, b] for a, b in step.renames])
            log.debug("%s: %d of %d renames replayed", slot.label, applied, len(step.renames))
            self.settle(slot, Result(rc=0))
            return
        if step.kind is StepKind.MOVES:
            moves = [[a, b] for a, b in step.renames]
            if t.confined:
                lst.write_bytes(agent_requests(moves))
                command = agent_command(t.path)
            else:
                lst.write_bytes(b"".join(a + b"\0" + b + b"\0" for a, b in moves))
                command = remote_rename_command(t.path)
            argv = [*ssh_argv(slot.sync, slot.control_path), "--", t.login, command]
            stdin = lst
        elif step.kind is StepKind.PROVE:
            lst.write_bytes(_names(list(step.names)))
            argv = [sys.executable, "-P", "-m", "syncsup.syncer.prove", str(self.config_path),
                    slot.sync.name, str(slot.index), str(lst), f"{lst}.out",
                    slot.control_path or ""]
        elif step.kind is StepKind.COMMAND:
            lst.write_bytes(msgpack.packb({"changes": proto.to_wire(changes),
                                           "startup": slot.batch.startup}, use_bin_type=True))
            argv = [sys.executable, "-P", "-m", "syncsup.syncer.action_runner",
                    str(self.config_path), slot.sync.name, str(slot.index), str(lst)]
        else:
            names = [n for n in _nearest_sendable(os.fsencode(slot.sync.source), list(step.names))
                     if not slot.rules.below_excluded(n)]
            if not names:  # all below excluded directories: nothing rsync would send
                self.settle(slot, Result(rc=0))
                return
            # a batch planned for the agent has no times step of its own
            missing_args = slot.missing_args or any(s.kind is StepKind.AGENT
                                                    for s in slot.plan.steps)
            if step.kind is StepKind.TIMES and not missing_args:
                names = with_contents(os.fsencode(slot.sync.source),
                                      changes.paths | changes.trees, names)
                if b"" in names and not step.empty_guard and _empty(slot.sync.source):
                    # the root's entries go with ``--delete``: a source emptied
                    # since the batch was planned deletes nothing (rsync's 25)
                    step = slot.step = slot.plan.guard_empty(step)
            lst.write_bytes(_names(names))
            argv = rsync_argv(slot.sync, t, step, str(lst), slot.batch.startup,
                              slot.control_path, missing_args)
        log.debug("%s: %s", slot.label, argv)
        err, out = self._files(slot)
        try:
            slot.transfer = Transfer(f"{slot.label}: {step.kind.value} transfer", argv, err, out,
                                     time.monotonic(), self.timings, stdin_path=stdin)
        except FileNotFoundError as exc:
            self.settle(slot, Result(rc=127, error=f"cannot run {argv[0]}: {exc}", unstarted=True))
            return
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
        self.settle(slot, result)

    def settle(self, slot: Slot, result: Result) -> None:
        """The one place a step's result meets its plan: ``Plan.advance``
        decides what it means (the next step, or the batch's outcome)."""
        assert slot.plan is not None and slot.step is not None
        self.lanes.step_ended(slot.key)
        if slot.step.kind is StepKind.PROVE:
            result = proven(result, self.state.tmp / f"{slot.sync.name}-{slot.index}-prove.list")
        if (result.rc == 2 and slot.missing_args and slot.target.is_remote
                and not slot.target.confined and slot.step.kind in (StepKind.PATHS, StepKind.TREE)
                and slot.batch is not None and slot.sync.deletes(slot.batch.startup)):
            # rsync's 2 ("protocol incompatibility") to a step that asked for
            # --delete-missing-args: what receivers before 3.4.4 answer
            slot.missing_args = False
            log.warning("%s: its rsync rejects --delete-missing-args (rsync before 3.4.4, "
                        "exit 2): deletions go through directory listings from now on",
                        slot.label)
            result = dataclasses.replace(
                result, old_receiver=True,
                error="the target's rsync rejects --delete-missing-args (before 3.4.4): "
                      "retrying with deletions through directory listings")
        if slot.step.empty_guard and result.rc == 25:
            log.error("source %s is empty but %s is not: refusing to delete the mirror (an "
                      "unmounted disk?); retrying until the source is back", slot.sync.source,
                      slot.label)
        self.proceed(slot, slot.plan.advance(slot.step, result))

    def finish(self, slot: Slot, end: Finished) -> None:
        batch, plan = slot.batch, slot.plan
        assert batch is not None and plan is not None
        seconds = self.lanes.finish(slot.key, time.monotonic())
        self.transfers += 1
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
        due = [beat_in, self.lanes.wake_in(), self.masters.wake_in(now)]
        return min(d for d in due if d is not None)

    def _poll_agents(self, poller: zmq.Poller, polled: dict[int, int]) -> dict[int, int]:
        """Keep the poller watching the remote agents' pipes: stdout always,
        stdin while there is something to write."""
        wanted: dict[int, int] = {}
        for slot in self.agents:
            assert slot.channel is not None
            rfd, wfd = slot.channel.fds()
            if rfd is not None:
                wanted[rfd] = zmq.POLLIN
            if wfd is not None:
                wanted[wfd] = zmq.POLLOUT
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
            for slot in self.agents:
                if slot.batch is None and slot.channel is not None:
                    slot.channel.rest(now)
                    rfd, _ = slot.channel.fds()
                    if rfd is not None and rfd in events:
                        slot.channel.read_ready(now)  # an idle session ended or spoke
            for key in self.lanes.busy():
                self.poll(self.slots[key], now)
            # the transfers freed go to the steps waiting, the oldest batch's first
            while (due := self.lanes.take()) is not None:
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
        self.masters.stop_all()


def main(config_path: str, run_id: str) -> int:
    """Run the whole process; ``run_id`` names this run of the supervisor."""
    conf = cfg.load_for_child(config_path)
    setup_logging(conf.settings, "syncer")
    return Syncer(conf).run()
