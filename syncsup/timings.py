"""Every timeout, interval, backoff and margin of the daemon, in one object.

Why one object: each of these used to be a module constant read where it
was used, so nothing could shorten them. A test that needed a heartbeat to
be missed waited out the production 30 s, and every process kept its own
idea of the same quantity. Now each process is given a :class:`Timings`
(``Config.timings``) and passes it to the parts that wait; production runs
on the defaults written here, tests build a small one.

Users may set any field in the config's ``[timings]`` table. That is advanced
tuning and documented as such: each field has a floor below which the daemon
would spin or misjudge a healthy process, and the parser refuses a value
below it (exit 78, naming the key), as it refuses relations that cannot hold
(a heartbeat timeout shorter than two heartbeats).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TimingError", "Timings"]


def _t(default: float, floor: float, doc: str) -> Any:
    """A field: its default, the smallest value the config may give it, and
    what it times (``doc``: the documentation's text for the key)."""
    return field(default=default, metadata={"floor": floor, "doc": " ".join(doc.split())})


@dataclass(frozen=True)
class Timings:
    """Seconds, all of them. The docstring of each field is its ``doc``
    metadata (which the config documentation shows)."""

    # -- supervision ------------------------------------------------------
    heartbeat_interval: float = _t(10.0, 0.05, """how often each process tells the
        supervisor it is alive.""")
    heartbeat_timeout: float = _t(30.0, 0.2, """a process silent this long is killed with
        its process group and restarted; at least twice `heartbeat_interval`.""")
    stop_grace: float = _t(6.0, 0.1, """at stop, how long the supervisor waits after
        SIGTERM before it SIGKILLs a process group.""")
    notify_interval: float = _t(2.0, 0.1, """under systemd: how often the status line
        (`STATUS=`) is updated.""")
    spawn_answer_timeout: float = _t(10.0, 1.0, """how long the supervisor waits for the
        process that forks its children to answer.""")
    status_query_timeout: float = _t(1.0, 0.05, """how long `syncsup status` waits for each
        process's part before it shows the last one known.""")
    command_timeout: float = _t(5.0, 0.1, """how long a command to the running daemon
        (`status`, `pause`, `resume`, `resync`) waits for its answer before it exits 1;
        more than `status_query_timeout`.""")
    restart_base: float = _t(0.2, 0.01, """a crashing process restarts at once, then after
        this, doubling at each crash.""")
    restart_cap: float = _t(10.0, 0.05, """the longest wait before a restart.""")
    restart_stable_after: float = _t(5.0, 0.05, """up this long, a process's restart
        backoff starts again from zero.""")
    restart_window: float = _t(60.0, 0.1, """more than 10 restarts within this window
        make a process *degraded*.""")
    degraded_cap: float = _t(60.0, 0.1, """a degraded process restarts at least a quarter
        of this after a crash, and at most this.""")
    # -- syncer -----------------------------------------------------------
    step_stop_grace: float = _t(2.0, 0.05, """how long a transfer has after SIGTERM before
        its process group is SIGKILLed.""")
    progress_log: float = _t(30.0, 0.1, """how often a long transfer logs its progress.""")
    agent_timeout: float = _t(30.0, 0.2, """an agent that answers nothing this long while
        answers are due is wedged: it is killed and its paths go by rsync.""")
    agent_restart: float = _t(30.0, 0.05, """an agent lost after it worked starts again at
        once, then after this, doubling up to `agent_retry`.""")
    master_wait: float = _t(15.0, 0.0, """a step over ssh that would open a connection
        waits this long at most for its login's ssh master, started and still
        connecting (a start, a master started again), instead of connecting by
        itself: one handshake and one ssh client fewer a target. A master still not
        listening by then (a slow login, a hung server) is passed by: steps connect
        directly. `0`: never wait.""")
    master_retry: float = _t(2.0, 0.05, """an ssh master connection (shared by the
        transfers and agent sessions of every remote target with the same login) that
        ended is started again after this, doubling up to `master_retry_cap`; transfers
        connect directly meanwhile.""")
    master_retry_cap: float = _t(60.0, 0.05, """the longest wait before starting an ssh
        master connection again.""")
    agent_retry: float = _t(600.0, 0.1, """a target whose agent cannot start is tried
        again this much later (rsync carries everything meanwhile); so is the proof of a
        remote target whose ctimes could not be read (the directories that arrive
        meanwhile are compared by content).""")
    proof_margin: float = _t(2.0, 2.0, """a proof (a first start, a directory that
        arrived) takes a target file for current without reading it only if the target's
        copy changed at least this long after the source file did (coarse timestamps,
        filesystems that keep whole seconds, a file still being written when it was
        copied).""")
    # -- collator ---------------------------------------------------------
    retry_base: float = _t(0.5, 0.01, """a failed transfer is retried after this, doubling
        at each failure in a row.""")
    retry_cap: float = _t(30.0, 0.05, """the longest wait before retrying a failed
        transfer, while the failures differ or the target cannot be reached.""")
    stuck_cap: float = _t(300.0, 0.1, """a target that fails the same way again and again
        with nothing changed is retried from `retry_cap`, doubling up to this.""")
    journal_idle: float = _t(10.0, 0.05, """a sync's journal is closed after this long with
        nothing pending, and opened again at the next change.""")
    # -- watcher ----------------------------------------------------------
    write_hold: float = _t(0.5, 0.0, """a file open for writing is held back until it is
        closed, or this long at most.""")
    resend_after: float = _t(5.0, 0.05, """changes the collator has not acknowledged in
        this long are sent again.""")
    seen_delay: float = _t(6.0, 0.05, """a sync idle this long records that all its
        changes are in the journal (its seen-point); more than `seen_margin`.""")
    seen_margin: float = _t(5.0, 1.0, """a recovery compares by content every file whose
        ctime is within this of the seen-point (coarse clocks and timestamps).""")
    reboot_margin: float = _t(600.0, 60.0, """the same after a reboot (writes the page cache
        had not flushed, clocks set at boot).""")
    root_poll: float = _t(2.0, 0.05, """how often a missing source root is looked for.""")
    root_check: float = _t(10.0, 0.05, """how often each watched root is checked to still be
        the directory watched.""")
    unwatched_rescan: float = _t(10.0, 0.05, """how often subtrees that could not be
        watched are compared again.""")
    mount_rescan: float = _t(60.0, 0.1, """how often filesystems mounted inside a source
        are compared again (inotify does not see into them).""")
    final_ack_wait: float = _t(2.0, 0.0, """at stop, how long the watcher waits for the
        collator to acknowledge its last changes.""")
    # -- probes -----------------------------------------------------------
    probe_timeout: float = _t(30.0, 1.0, """how long the check of the local rsync's
        behaviour may take at start.""")
    check_timeout: float = _t(20.0, 1.0, """`syncsup check`: how long each remote probe may
        take.""")

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise TimingError(*problem)

    def problem(self) -> tuple[str, str] | None:
        """The first field that breaks a floor or a relation, as (key,
        problem); None if all hold."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or isinstance(value, bool) \
                    or not math.isfinite(value):
                return f.name, "must be a number of seconds"
            if value < f.metadata["floor"]:
                return f.name, f"must be at least {f.metadata['floor']:g} seconds"
        if self.heartbeat_timeout < 2 * self.heartbeat_interval:
            return "heartbeat_timeout", "must be at least twice heartbeat_interval"
        if self.command_timeout <= self.status_query_timeout:
            return "command_timeout", "must be more than status_query_timeout"
        if self.seen_delay <= self.seen_margin:
            return "seen_delay", "must be more than seen_margin"
        if self.restart_cap < self.restart_base:
            return "restart_cap", "must be at least restart_base"
        if self.retry_cap < self.retry_base or self.stuck_cap < self.retry_cap:
            return "retry_cap", "must be between retry_base and stuck_cap"
        if self.agent_retry < self.agent_restart:
            return "agent_retry", "must be at least agent_restart"
        if self.master_retry_cap < self.master_retry:
            return "master_retry_cap", "must be at least master_retry"
        return None


class TimingError(ValueError):
    """A ``[timings]`` value the daemon refuses: ``key`` names the field."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem

