"""What the syncer's loop asks around each step, answered here from what it
observed, so that the loop itself decides nothing:

* before a batch, :func:`plan_batch`: which renames are replayed (those the
  rules send, and only while the target's agent can take them), which
  directories a retyped entry makes rescanned, which proofs a local target
  makes needless, and whether the paths go to the agent;
* before a step, :func:`agent_names` and :func:`rsync_names`: the names it
  sends (a name under a path that is no longer a directory becomes that
  path; names below an excluded directory are dropped; the times step of
  an old receiver lists directories with their entries), and whether the
  step must delete nothing (the source root was found empty);
* after a step, :func:`interpret`: what its result says beyond its exit
  code (an old receiver's 2 to ``--delete-missing-args``; an empty source
  refused), before :meth:`~syncsup.syncer.plan.Plan.advance`, the only
  place an outcome is decided, sees it.

They read the source tree (a name's type, whether the root is empty: what
rsync will find there), never a socket or a process; the source root's
emptiness is asked through a callable, so that it is looked at only when
it matters.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from syncsup import config as cfg
from syncsup import proto
from syncsup.filters import RuleList
from syncsup.syncer.deletions import with_contents
from syncsup.syncer.moves import replayable, retyped_parents
from syncsup.syncer.plan import Plan, Result, Step, StepKind
from syncsup.syncer.prove import how_proven

__all__ = ["Receiver", "agent_names", "covered", "files_from", "interpret", "nearest_sendable",
           "plan_batch", "rsync_names", "source_empty"]

log = logging.getLogger("syncsup.syncer")

OLD_RECEIVER_RC = 2  # rsync's "protocol incompatibility": a receiver before 3.4.4
REFUSED_EMPTY_RC = 25  # rsync's --max-delete stop: the empty source guard held


def source_empty(source: str | os.PathLike[str]) -> bool:
    """True if the source root has no entries (or is not there at all)."""
    try:
        with os.scandir(source) as it:
            return next(it, None) is None
    except OSError:
        return True


def plan_batch(batch: proto.Batch, sync: cfg.Sync, target: cfg.Target, rules: RuleList, *,
               empty: bool, agent_writes: bool, agent_renames: bool,
               provable: bool = True, now: float = 0.0) -> Plan:
    """The plan of ``batch`` for ``target``. ``empty``: the source root has
    no entries now; ``agent_writes``: the target's agent takes the paths it
    can; ``agent_renames``: it can replay renames now (without, they travel
    as a delete and a create: the plan has no moves step and counts them
    done); ``provable``: the target's ctimes may be read now (not a remote
    agent known to be off, no proof failed lately): else the proofs of
    arrived directories are content comparisons from the start, as a
    failed proof would make them (an rsync daemon's, all of them); ``now``
    (monotonic) dates what is learned of the source's arrived directories.
    May add to ``batch.changes`` (rescans a rule makes necessary, proofs
    made needless or impossible), which are the batch's own."""
    changes = batch.changes
    if sync.runs_commands:
        return Plan.make(changes, commands=True, replay_moves=False, source_empty=empty)
    source = os.fsencode(sync.source)
    replay: list[tuple[bytes, bytes]] = []
    if sync.moves_on_target and agent_renames:
        replay = replayable(changes.moves, rules, source)
    changes.trees |= retyped_parents(changes.paths, rules, source)
    how_proven(changes, sync, target, rules, provable=provable, startup=batch.startup, now=now)
    return Plan.make(changes, commands=False, replay_moves=sync.moves_on_target, replay=replay,
                     source_empty=empty, agent=agent_writes,
                     gone=_gone(source, [src for src, _dst in changes.moves]))


def _gone(root: bytes, names: list[bytes]) -> frozenset[bytes]:
    """Those of ``names`` no longer in the source."""
    is_dir: dict[bytes, bool] = {b"": True}  # shared: the names share directories
    return frozenset(n for n in names if not _exists(root, n, is_dir))


def _exists(root: bytes, rel: bytes, is_dir: dict[bytes, bool]) -> bool:
    """Is ``rel`` in the source, below real directories (a parent swapped
    for a symlink is never followed: the name is gone)?"""
    if _first_non_directory(root, rel.rpartition(b"/")[0], is_dir) is not None:
        return False
    try:
        os.lstat(os.path.join(root, rel))
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        pass  # (unreadable: not known to be gone)
    return True


def nearest_sendable(root: bytes, paths: list[bytes]) -> list[bytes]:
    """Replace each path whose parent is no longer a directory in the source
    by its first ancestor that is not one (a file, a symlink, or gone).

    rsync fails on ``a/b`` when ``a`` became a file ("Not a directory", exit
    23, retried forever); sending ``a`` itself is what the target needs: it
    replaces the old directory (``--force``) or deletes it. (A symlinked
    ``a`` is not followed either way where it matters: rsync 3.5.0's
    sender refuses another user's symlinks in parent components; it trusts
    root's and its own user's, who could read the file anyway. Whether the
    rsync in use does is probed at start: ``syncsup.rsync_probe``.)"""
    is_dir: dict[bytes, bool] = {b"": True}
    # parent -> its first ancestor (itself included) that is not a
    # directory, or None: the answer depends on the parent alone, and a
    # batch's names share a few parents
    stop: dict[bytes, bytes | None] = {b"": None}
    out: dict[bytes, None] = {}
    for path in paths:
        parent = path.rpartition(b"/")[0]
        if parent in stop:
            chosen = stop[parent]
        else:
            chosen = stop[parent] = _first_non_directory(root, parent, is_dir)
        out[path if chosen is None else chosen] = None
    return list(out)


def _first_non_directory(root: bytes, directory: bytes, is_dir: dict[bytes, bool]
                         ) -> bytes | None:
    """The first of ``directory`` and its ancestors, top down, that is not a
    directory in the source (``lstat``: a symlink is not one), or None;
    ``is_dir`` keeps what was looked up."""
    prefix = b""
    for part in directory.split(b"/"):
        prefix = prefix + b"/" + part if prefix else part
        known = is_dir.get(prefix)
        if known is None:
            try:
                known = stat.S_ISDIR(os.lstat(os.path.join(root, prefix)).st_mode)
            except OSError:
                known = False
            is_dir[prefix] = known
        if not known:
            return prefix
    return None


def agent_names(sync: cfg.Sync, plan: Plan, step: Step) -> tuple[list[bytes], frozenset[bytes]]:
    """The names an agent step reads from the source, and those among them
    there only for their directory's time. A changed name under a path that
    is no longer a directory becomes that path (:func:`nearest_sendable`),
    which is then a change of its own; a name there for its time stays as
    it is, whatever became of its parents: it is never made a deletion of
    an ancestor (a source emptied under a burst's rsync run would have had
    a parent's parent deleted on the target). A step of times alone leaves
    out the directories the rsync step before it set (``plan.implied``);
    any other agent step writes, and what rsync set before it no longer
    holds."""
    if step.times_only:
        times = frozenset(n for n in step.times if n not in plan.implied)
        return sorted(times), times
    plan.implied = frozenset()
    changed = nearest_sendable(os.fsencode(sync.source),
                               [n for n in step.names if n not in step.times])
    names = dict.fromkeys(changed)
    times = frozenset(n for n in step.times if n not in names)
    return [*names, *sorted(times)], times


def covered(names: list[bytes], rules: RuleList) -> frozenset[bytes]:
    """The directories a paths step sending ``names`` sets itself: each
    name that rsync sends for certain and every directory above it, the
    root too.

    ``--files-from`` implies ``--relative``: rsync lists the directories
    above each name it sends (its implied directories, and the root for a
    ``./`` name) with their attributes, and its receiver sets a listed
    directory's time after the step's writes and deletions there, so a
    times step after it would change nothing for them; a name itself is
    made the source's (or deleted: nothing is left to set). A name the
    rules exclude brings no directory of its own (rsync drops it before its
    parents), nor does one whose fate they leave in doubt
    (``RuleList.sent``); its directory keeps its place in the times step."""
    sent = names if rules.sends_everything else [n for n in names if rules.sent(n) is True]
    out = set(sent)
    for parent in {name.rpartition(b"/")[0] for name in sent}:
        while parent not in out:
            out.add(parent)
            if not parent:
                break
            parent = parent.rpartition(b"/")[0]
    return frozenset(out)


@dataclass(frozen=True)
class RsyncNames:
    """What an rsync step sends: ``step`` as it runs (guarded if the source
    root was found empty right before), its ``names`` (none: nothing rsync
    would send, the step is done), and whether deletions go through
    ``--delete-missing-args``."""

    step: Step
    names: list[bytes]
    missing_args: bool


def rsync_names(plan: Plan, step: Step, changes: proto.Changes, rules: RuleList, source: bytes,
                *, missing_args: bool, empty: Callable[[], bool], deletes: bool = True,
                implied_dirs: bool = False) -> RsyncNames:
    """The names of a tree, paths or times ``step`` of ``plan``.
    ``missing_args``: the receiver takes ``--delete-missing-args``;
    ``empty`` tells whether the source root is empty now (asked only when
    the root's entries would be deleted by a listing); ``deletes``: the
    batch deletes on the target; ``implied_dirs``: rsync was found to set
    the directories above the names of a paths step (:func:`covered`),
    which the times step right after it then leaves out. Only when that
    step passes ``--delete-missing-args`` (deletes, towards a receiver
    that takes it): with ``--ignore-missing-args`` rsync drops a missing
    name together with its directories, and without the option the times
    step is where deletions are made."""
    names = [n for n in nearest_sendable(source, list(step.names))
             if not rules.below_excluded(n)]
    # a batch planned for the agent has no times step of its own: what it
    # leaves to rsync keeps --delete-missing-args
    missing_args = missing_args or any(s.kind is StepKind.AGENT for s in plan.steps)
    if step.kind is StepKind.PATHS:
        plan.implied = (covered(names, rules) if implied_dirs and deletes and missing_args
                        else frozenset())
    elif step.kind is StepKind.TREE:
        plan.implied = frozenset()
    elif missing_args:
        names = [n for n in names if n not in plan.implied]
    if names and step.kind is StepKind.TIMES and not missing_args:
        names = with_contents(source, changes.paths | changes.trees, names)
        if b"" in names and not step.empty_guard and empty():
            # the root's entries go with ``--delete``: a source emptied
            # since the batch was planned deletes nothing (rsync's 25)
            step = plan.guard_empty(step)
    return RsyncNames(step, names, missing_args)


def files_from(paths: list[bytes]) -> bytes:
    """The ``--files-from`` list. Every name gets a ``./`` prefix: rsync
    skips list entries starting with ``#`` or ``;`` as comments, even with
    ``--from0``, and ``./`` is harmless for every other name."""
    return b"".join((b"./" + p if p else b".") + b"\0" for p in paths)


@dataclass
class Receiver:
    """What the syncer has learned of one target's rsync receiver: whether
    it takes ``--delete-missing-args`` (a local one is probed at start; a
    remote one is assumed to until it answers 2 to it), and whether a paths
    step sets the directories above its names (``implied_dirs``: probed at
    start with the local rsync, see :func:`covered`)."""

    missing_args: bool = True
    implied_dirs: bool = False


def interpret(step: Step, result: Result, *, receiver: Receiver, sync: cfg.Sync,
              target: cfg.Target, startup: bool, label: str) -> Result:
    """``result`` of ``step`` with what it says beyond its exit code, for
    :meth:`Plan.advance`; ``receiver`` learns from it.

    rsync's 2 ("protocol incompatibility") to a paths or tree step that
    asked a remote unconfined receiver for ``--delete-missing-args`` is
    what receivers before 3.4.4 answer: from now on deletions go through
    directory listings, and the batch is retried that way (a confined
    target's rsync is checked at ``syncsup check`` instead: its
    ``syncsup-target`` refuses the listings). An empty-guarded step's 25
    is the mirror kept from an empty source: said loudly, once a try."""
    if (result.rc == OLD_RECEIVER_RC and receiver.missing_args and target.is_remote
            and not target.confined and step.kind in (StepKind.PATHS, StepKind.TREE)
            and sync.deletes(startup)):
        receiver.missing_args = False
        log.warning("%s: its rsync rejects --delete-missing-args (rsync before 3.4.4, "
                    "exit 2): deletions go through directory listings from now on", label)
        return dataclasses.replace(
            result, old_receiver=True,
            error="the target's rsync rejects --delete-missing-args (before 3.4.4): "
                  "retrying with deletions through directory listings")
    if step.empty_guard and result.rc == REFUSED_EMPTY_RC:
        log.error("source %s is empty but %s is not: refusing to delete the mirror (an "
                  "unmounted disk?); retrying until the source is back", sync.source, label)
    return result
