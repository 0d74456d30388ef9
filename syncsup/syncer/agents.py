"""Which targets get an agent, and the agent steps of a batch.

Every target but an rsync daemon's has an agent channel when its sync
writes through the agent or replays renames (modes ``rsyncssh`` and
``direct``): renames are the agent's only way to the target (in-process
for a local target, the long-lived session over ssh for a remote one,
confined or not), so a rename batch costs no process of its own. Writing
through the agent is a separate permission: a sync whose settings the
agent cannot honour exactly (:func:`unusable`) writes everything with
rsync, but still replays its renames through the agent, since a rename
does not depend on rsync's options.

A remote target whose agent cannot be started (``syncsup-target`` missing
there, refused, no confinement) uses rsync for everything, renames too (a
delete and a create), tried again every ``Timings.agent_retry`` seconds.
What the agent does not take in a step (larger files, special files, what
failed) goes to rsync in the same batch.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from syncsup import config as cfg
from syncsup.backoff import Backoff
from syncsup.filters import DirFilter, plain_excludes
from syncsup.syncer.agent_ops import prepare
from syncsup.syncer.agent_session import LocalAgent, RemoteAgent, idle_for
from syncsup.syncer.argv import ssh_argv
from syncsup.syncer.plan import MAX_PATHS_LOCAL, MAX_PATHS_REMOTE, Result
from syncsup.syncer.readonce import SHARED
from syncsup.timings import Timings

__all__ = ["MAX_PATHS_LOCAL", "MAX_PATHS_REMOTE", "AgentUse", "Channel", "agent_command",
           "agent_session_argv", "agent_use", "unusable", "watched_fds"]

log = logging.getLogger("syncsup.syncer")


def unusable(sync: cfg.Sync, target: cfg.Target | None = None) -> str | None:
    """Why the agent cannot mirror exactly what rsync would for ``sync``, or
    for its ``target`` (None: it can). An rsync daemon's target has no agent:
    nothing runs there but the daemon."""
    if target is not None and target.is_daemon:
        return "an rsync daemon target"
    opts = sync.rsync
    if sync.agent_max_size == 0:
        return "agent_max_size = 0"
    if sync.runs_commands:
        return "command mode"
    if not opts.archive:
        return "[sync.rsync] archive = false"
    for key in ("chown", "chmod", "usermap", "groupmap", "bwlimit"):
        if getattr(opts, key) is not None:
            return f"[sync.rsync] {key}"
    if opts.compress:
        return "[sync.rsync] compress"
    if opts.extra:
        return "[sync.rsync] extra"
    if sync.max_delete:
        return "max_delete"
    if plain_excludes(sync) is None:
        return "filter rules other than plain excludes"
    return None


@dataclass(frozen=True)
class AgentUse:
    """What a target's agent is for: ``writes`` (its sync's paths go to
    it), ``renames`` (it replays the sync's renames); ``why`` the agent may
    not write, if it may not."""

    writes: bool
    renames: bool
    why: str | None

    @property
    def wanted(self) -> bool:
        return self.writes or self.renames


def agent_use(sync: cfg.Sync, target: cfg.Target) -> AgentUse:
    """What ``target``'s agent is for. Renames depend on no rsync option:
    every target of a mode that replays them has an agent for them, but an
    rsync daemon's, which has none."""
    why = unusable(sync, target)
    return AgentUse(writes=why is None,
                    renames=sync.moves_on_target and not target.is_daemon, why=why)


def agent_command(target: cfg.Target, program: str, verb: str = "agent") -> str:
    """The remote command that starts syncsup's agent for ``target``'s
    path (``verb``: ``agent``, which writes, or ``stats``, which only
    reads): ``program`` for an unconfined login (``[sync.ssh]
    target_command``); for a confined key sshd runs the forced command
    instead and reads this as the request, so there it is always
    ``syncsup-target``."""
    program = "syncsup-target" if target.confined else program
    return f"{shlex.quote(program)} {shlex.quote(target.path)} {verb}"


def agent_session_argv(sync: cfg.Sync, target: cfg.Target,
                       verb: str = "agent") -> tuple[str, list[str]]:
    """A remote session with ``target``'s agent: its command (what the
    ssh master is asked to run) and the direct ssh that runs it where no
    master carries it."""
    command = agent_command(target, sync.ssh.target_command, verb)
    return command, [*ssh_argv(sync), "--", target.login, command]


def watched_fds(channels: Iterable[Channel]) -> tuple[set[int], set[int]]:
    """The remote sessions' pipes the poll loop watches: (to read: stdout,
    always; to write: stdin, while there is something to write)."""
    reads: set[int] = set()
    writes: set[int] = set()
    for channel in channels:
        rfds, wfd = channel.fds()
        reads.update(rfds)
        if wfd is not None:
            writes.add(wfd)
    return reads, writes


class Channel:
    """The agent of one target, local or remote. ``writes``: the sync may
    write through it (:func:`unusable` says nothing against it); without,
    it only replays renames."""

    def __init__(self, sync: cfg.Sync, target: cfg.Target, control_path: str | None,
                 errfile: IO[bytes], timings: Timings, *, writes: bool = True) -> None:
        self.sync, self.target = sync, target
        self.writes = writes
        self.renaming = False  # the step running is a rename replay
        self.told = False      # "no agent there" was logged since the last session that worked
        self.timings = timings
        self.restarts = Backoff(timings.agent_restart, timings.agent_retry)
        self.control_path = control_path
        self.errfile = errfile
        excludes = plain_excludes(sync) or []
        self.filter = DirFilter(excludes)
        self.keep_trees = bool(excludes)
        if writes:
            SHARED.join()
        self.local = LocalAgent(target.path) if not target.is_remote else None
        self.remote: RemoteAgent | None = None
        self.off_until = 0.0
        self.ever_ready = False
        self.start_failures = 0  # sessions in a row that ended before their hello
        self._fallback: tuple[bytes, ...] = ()
        self.sent = 0  # content bytes of the current step

    @property
    def label(self) -> str:
        return f"target {self.target.spec}"

    def available(self, now: float) -> bool:
        return self.local is not None or now >= self.off_until

    def may_write(self, now: float) -> bool:
        """May the batch planned now hand its paths to the agent?"""
        return self.writes and self.available(now)

    def transport(self, now: float) -> str:
        """How the target's content travels now (status): renames are not
        content."""
        return "agent" if self.may_write(now) else "rsync"

    def fds(self) -> tuple[tuple[int, ...], int | None]:
        """(fds to read, fd to write) for the poll loop; none when idle.
        To read: the session's stdout, and the ssh master's control socket
        while its answer to the session's opening is due."""
        r = self.remote
        if r is None or r.dead:
            return (), None
        control = r.link.control_fd
        reads = (r.stdout_fd,) if control is None else (r.stdout_fd, control)
        return reads, (r.stdin_fd if r.out else None)

    def begin(self, names: list[bytes], startup: bool, now: float,
              times: frozenset[bytes] = frozenset()) -> Result | None:
        """Start the agent step for ``names``: its result now (local, or
        nothing to do), or None if the answers are awaited (see poll). A
        batch of more than :data:`MAX_PATHS_LOCAL` (:data:`MAX_PATHS_REMOTE`)
        paths goes to rsync whole. ``times``: the names sent only for their
        directory's time (:func:`~.agent_ops.prepare`)."""
        self.sent, self.renaming = 0, False
        if len(names) > (MAX_PATHS_LOCAL if self.local is not None else MAX_PATHS_REMOTE):
            return Result(rc=0, fallback=tuple(names))
        if (self.local is None and times and times.issuperset(names)
                and not self.session_open()):
            # directories' times alone, and no session to say them on: one
            # rsync costs less than opening a session (a login and an agent)
            return Result(rc=0, fallback=tuple(names))
        deletes = self.sync.deletes(startup)
        try:
            root_fd = os.open(self.sync.source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            return Result(rc=1, error=f"cannot open the source: {exc.strerror}")
        try:
            prep = prepare(root_fd, names, max_size=self.sync.agent_max_size, deletes=deletes,
                           excluded=self.filter.excluded, keep_trees=self.keep_trees,
                           links=self.local is not None or not self.target.confined,
                           cache=SHARED if SHARED.worth else None, times=times)
        finally:
            os.close(root_fd)
        self._fallback = tuple(prep.fallback)
        self.sent = prep.size
        if not prep.ops:
            return Result(rc=0, fallback=self._fallback)
        if self.local is not None:
            return self._merge(self.local.apply(prep.ops))
        session = self._session(now)
        if session is None:
            return Result(rc=255, error="no agent")
        session.start_step(prep.ops, now)
        session.flush()
        return None

    def rename(self, renames: list[tuple[bytes, bytes]], now: float) -> Result | None:
        """Start replaying ``renames`` (in order): the result now (local,
        or no session to be had), or None if the answers are awaited (see
        poll). A rename that fails is no error: the transfers that follow
        repair it. Without a session now (no agent there, or one being
        waited for) nothing is replayed: the renames travel as a delete
        and a create, by the transfers (rc 0)."""
        self.sent, self.renaming, self._fallback = 0, True, ()
        ops = [{"op": "rename", "src": a, "dst": b} for a, b in renames]
        if self.local is not None:
            return self._merge(self.local.apply(ops))
        session = self._session(now)
        if session is None:
            return Result(rc=0, error="no agent session: renames not replayed")
        session.start_step(ops, now)
        session.flush()
        return None

    def poll(self, now: float) -> Result | None:
        r = self.remote
        if r is None:
            return Result(rc=255, error="no agent")
        r.flush()
        r.read(now)
        result = r.result(now)
        if result is None:
            return None
        if r.dead:
            answered = r.answered and not r.ready
            self._lost(r, now)
            if self.renaming and r.ready and not result.stalled:
                # some renames may have been applied: never replayed again
                # (rsync's 255 is for a session that renamed nothing)
                result = Result(rc=1, error=result.error)
            elif self.renaming and answered:
                # the target answered that it has no agent (not installed,
                # refused): nothing was renamed, and retrying would only
                # find the same; the transfers carry the renames, as a
                # delete and a create
                result = Result(rc=0, error="no agent there: renames not replayed")
        elif r.ready:
            self.ever_ready, self.start_failures, self.told = True, 0, False
        return self._merge(result)

    def _merge(self, result: Result) -> Result:
        if result.rc != 0 or result.stalled:
            return result
        return Result(rc=0, fallback=tuple(result.fallback) + self._fallback)

    def _session(self, now: float) -> RemoteAgent | None:
        if self.remote is not None and not self.remote.dead:
            return self.remote
        if now < self.off_until:
            return None
        command, direct = agent_session_argv(self.sync, self.target)
        try:
            self.remote = RemoteAgent(f"{self.label}: agent", direct, self.errfile, now,
                                      self.timings, control_path=self.control_path,
                                      command=command)
        except OSError as exc:
            log.warning("%s: cannot start the agent (%s); using rsync", self.label, exc)
            self.off_until = now + self.timings.agent_retry
            return None
        return self.remote

    def _lost(self, r: RemoteAgent, now: float) -> None:
        """A session ended. One that never answered its hello, where the
        target itself ended it (``syncsup-target`` not installed, refused),
        or where no session ever worked and ssh's code is unknown, means no
        agent there: rsync only, tried again later. A connection that failed
        (ssh's 255, the client killed), or one lost where a session worked
        before: a new session soon, then backing off."""
        transient = r.exit_code is not None and not r.answered
        if not r.ready and (r.answered or (not self.ever_ready and not transient)):
            if not self.told:  # once, not at every try
                log.warning("%s: no agent there (%s); rsync does everything, the agent is "
                            "tried again in %.0f minutes; %s", self.label, r.dead,
                            self.timings.agent_retry / 60, self._remedy())
                self.told = True
            self.off_until = now + self.timings.agent_retry
        elif not r.ready:
            # Again at once the first time, then backing off up to agent_retry.
            self.start_failures += 1
            wait = self.restarts.raw(self.start_failures - 1)
            log.info("%s: an agent session ended before it started (%s); the next one starts "
                     "in %.0f s", self.label, r.dead, wait)
            self.off_until = now + wait
        else:
            log.info("%s: the agent session ended (%s); a new one starts with the next batch",
                     self.label, r.dead)
        self.remote = None

    def _remedy(self) -> str:
        """What to do about a target with no agent, in the log line."""
        what = ("renames travel as a delete and a create" if self.sync.moves_on_target
                else "small changes cost an rsync each")
        if self.target.confined:
            return f"{what} until the confined key serves it (run syncsup check)"
        return (f"{what} until syncsup-target is installed on {self.target.host} (or "
                "[sync.ssh] target_command names it)")

    def rest(self, now: float) -> None:
        """Between batches: close a remote session idle for ``[sync.ssh]
        agent_idle`` seconds (the next batch opens another). Called on every
        turn of the syncer's loop, which turns at least once a heartbeat."""
        r, idle = self.remote, self.sync.ssh.agent_idle
        if r is None or r.dead or not idle:
            return
        if idle_for(r.busy(), r.last_progress, now) >= idle:
            log.debug("%s: the agent session was idle for %.0f s: closed", self.label,
                      now - r.last_progress)
            r.close()
            self.remote = None

    def session_open(self) -> bool:
        """Does a remote session of this target live (it counts against
        ``max_processes``)?"""
        return self.remote is not None and not self.remote.dead

    def end_session(self) -> None:
        """Close the remote session between steps, to free its process for
        another target (the next agent step opens a new one)."""
        if self.remote is not None:
            log.debug("%s: the agent session was closed for another target", self.label)
            self.remote.close()
            self.remote = None

    def read_ready(self, now: float) -> None:
        """The agent's stdout is readable outside a step: an end, or garbage."""
        r = self.remote
        if r is not None:
            r.read(now)
            if r.dead:
                self._lost(r, now)

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()
            self.remote = None
        if self.local is not None:
            self.local.close()
