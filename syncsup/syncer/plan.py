"""A batch as a plan of steps, pure: which transfers run in which order, and
what each step's result means.

::

    Batch ──> [moves] ──> [tree --checksum] ──> [prove] ──> [tree] ──┐
      ┌──────────────────────────────────────────────────────────────┘
      └──> [agent] ──> [paths] ──> [times] ──> ok

    (any step but prove and agent may end the batch instead: retry /
    fatal / halt)

    command mode:  Batch ──> [command] ──> ok | retry

* ``moves`` (modes that replay renames: rsyncssh, direct) renames on the
  target first, through the target's agent, so that what follows finds the
  data where it now belongs. A rename that fails is repaired by the
  transfers (both ends are dirty too), so only "nothing was renamed, the
  target could not be reached" (255: the agent's session ended before it
  answered) fails the batch. Once attempted, renames count as done
  (``moves_done``) whatever happens next. A batch planned while the target
  has no agent has no ``moves`` step, and one whose target answers that it
  has none (``syncsup-target`` not installed there, refused) ends its
  ``moves`` step with 0: either way its renames travel as a delete and a
  create, by the transfers.
* ``prove`` (a start with no earlier state, :mod:`syncsup.syncer.prove`)
  reads the ctimes of the ``prove`` subtrees' files on both sides and
  names the files whose target copy they cannot prove current; the
  ``tree`` step then stays a quick check and those files get their content
  compared by a ``paths`` step with ``--checksum`` right after it. A proof
  that cannot be made turns the tree step into a ``--checksum`` one.
* ``tree`` rescans subtrees recursively with deletes. Those whose content
  is compared (``--checksum``: events were lost there, ``verify``, or a
  replayed rename just moved the directory, and content changed under the
  old name may have kept size and mtime) go first, in a step of their
  own; the rest, by the quick check, in a second one (after their proof,
  if they have one). An empty source root looks like an unmounted disk: the
  step then deletes nothing (``--max-delete=0``), and rsync's 25 means
  "refused to wipe the mirror", a retry, not a halt.
* ``agent`` applies the paths through the target's agent (small files,
  directories, symlinks, deletes: no process per batch); what it leaves to
  rsync (larger files, special files, anything that failed) becomes the
  ``paths`` step. An agent that dies or stalls is never the batch's
  outcome: all its paths go to rsync instead.
* ``paths`` sends entries one by one (``-I``, ``--delete-missing-args``).
* A ``tree`` step that ends in a partial transfer (rsync's 23: some files
  could not be sent, e.g. a path longer than rsync takes) does not stop the
  steps after it: one bad subtree must not hold back every other change of
  the batch. The batch still ends in that failure (a retry).
* ``times`` then sends the directories that hold the batch's entries
  (outside its trees), the root too: making, deleting or renaming an entry
  changed their modification times, which no event reports. Without
  ``-I``: a listed root is walked one level deep and its unchanged files
  skipped. A ``paths`` step right before it has set most of them already
  (rsync's implied directories, the root for a ``./`` name, after its
  writes and deletions there: probed at start, ``Plan.implied``): the step
  sends only the rest, and runs only if some are left (a directory whose
  only change is a name the rules exclude; every directory with an rsync
  that does not set them, with deletions off, or towards a receiver
  without ``--delete-missing-args``, whose times step makes the
  deletions).
  After rsync took what a working agent left (a burst larger than one
  agent step), the agent sets those times instead: a second step of its
  own, not another rsync.
* A step that was killed for making no progress is a retry.

:meth:`Plan.advance` takes the result of the step that ran and gives the
next step or the batch's outcome; nothing else decides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from enum import StrEnum

from syncsup.proto import Changes, Outcome
from syncsup.syncer.exitcodes import classify

__all__ = ["MAX_PATHS_LOCAL", "MAX_PATHS_REMOTE", "Finished", "Plan", "Result", "Step",
           "StepKind"]

PARTIAL = 23  # rsync: partial transfer due to error

# The most names one agent step takes, on a local target and a remote one.
# Past this many paths in a batch, one rsync is quicker than the agent: the
# agent costs about 0.2 ms a path in Python (read, write, name, attributes),
# rsync about 0.1 ms in C once started, and starting it costs about 30 ms
# locally and 300 ms over ssh (a remote session and a remote rsync). It also
# runs beside the syncer, which goes on serving the other targets (a local
# agent works in the syncer's own thread). Measured with the burst and
# fan-out benchmarks (docs/benchmarks.md).
MAX_PATHS_LOCAL = 256
MAX_PATHS_REMOTE = 2048


class StepKind(StrEnum):
    MOVES = "moves"
    PROVE = "prove"
    TREE = "tree"
    AGENT = "agent"
    PATHS = "paths"
    TIMES = "times"
    COMMAND = "command"


@dataclass(frozen=True)
class Step:
    """One process to run: ``names`` are the entries it covers (relative
    paths; renames for ``moves`` are in the batch's changes)."""

    kind: StepKind
    names: tuple[bytes, ...] = ()
    checksum: bool = False
    empty_guard: bool = False
    renames: tuple[tuple[bytes, bytes], ...] = ()  # a moves step: (from, to) to replay
    # an agent step: the directories among ``names`` that are there only for
    # their time (holding an entry of the batch, not changed themselves)
    times: frozenset[bytes] = frozenset()

    @property
    def times_only(self) -> bool:
        """An agent step that sets directories' times and nothing else?"""
        return bool(self.times) and self.times >= set(self.names)

    @property
    def by_agent(self) -> bool:
        """Run by the target's agent (no process of its own: it neither
        counts against ``max_processes`` nor waits for a free transfer)."""
        return self.kind in (StepKind.AGENT, StepKind.MOVES)


@dataclass(frozen=True)
class Result:
    """How a step ended: ``rc`` its exit code (negative: the signal),
    ``stalled`` if the syncer killed it for making no progress, ``error``
    the last lines of its stderr, ``unstarted`` if it could not even start
    (its program missing: rc 127; the source root unsafe or the list
    unwritable: any other rc)."""

    rc: int
    stalled: bool = False
    error: str = ""
    unstarted: bool = False
    fallback: tuple[bytes, ...] = ()  # an agent step: the paths left to rsync
    # the receiver rejected --delete-missing-args (an rsync before 3.4.4):
    # the next try deletes through directory listings instead
    old_receiver: bool = False


@dataclass(frozen=True)
class Finished:
    """The batch's outcome, for DONE."""

    outcome: Outcome
    rc: int = 0
    error: str = ""


@dataclass
class Plan:
    """The steps of one batch and how far it got."""

    steps: list[Step]
    moves: int = 0           # renames in the batch
    moves_done: int = 0      # renames attempted (never replayed again)
    partial: Finished | None = None  # a tree step's partial transfer, reported at the end
    done: list[StepKind] = field(default_factory=list)
    parents: set[bytes] = field(default_factory=set)  # directories whose times are sent
    source_empty: bool = False  # the source root had no entries when the batch came
    # the directories the last step that wrote on the target set itself at
    # its end (an rsync paths step's implied directories, the root too): a
    # times step right after it leaves them out (set by the steps' helpers)
    implied: frozenset[bytes] = frozenset()

    @classmethod
    def make(cls, changes: Changes, *, commands: bool, replay_moves: bool,
             source_empty: bool, agent: bool = False,
             replay: Sequence[tuple[bytes, bytes]] | None = None,
             gone: frozenset[bytes] = frozenset()) -> Plan:
        """The plan for ``changes``. ``replay_moves``: the mode renames on
        the target; ``replay``: which of the renames (default: all; the
        others count as done, their ends are dirty paths too);
        ``source_empty``: the source root has no entries now (a tree or
        times step of the root then deletes nothing: a times step deletes
        towards a receiver without ``--delete-missing-args``); ``agent``: the
        target's agent takes the paths it can; ``gone``: names no longer in
        the source (a rename's old name, looked at when the batch came)."""
        if commands:
            return cls([Step(StepKind.COMMAND)], moves=len(changes.moves))
        steps = []
        moved_to: set[bytes] = set()
        renames = tuple(changes.moves if replay is None else replay)
        if replay_moves and renames:
            steps.append(Step(StepKind.MOVES, renames=renames))
            moved_to = {dst for _src, dst in renames}
        trees = sorted(changes.trees | changes.verify | changes.prove)
        # An empty source's rescan of the root deletes nothing, in every
        # tree step of the batch (a subtree's step would delete its part).
        guard = b"" in trees and source_empty
        # Content-compared subtrees in a step of their own, first: the
        # quick-check step after them finds their files alike and skips
        # them, and a verifying rescan of one directory (or a replayed
        # rename's destination) never makes the batch's other trees, the
        # root's rescan among them, read every file on both sides.
        sums = changes.verify | (moved_to & (changes.trees | changes.prove))
        quick = [t for t in trees if not _inside(t, sums)]
        if sums:
            # What is gone from the source (a rename's old name) goes with
            # them: nothing to read there, and a second rsync (over ssh, a
            # login) for its deletion alone is what a renamed directory cost.
            folded = [t for t in quick if _inside(t, gone)]
            sums |= set(folded)
            quick = [t for t in quick if t not in sums]
            steps.append(Step(StepKind.TREE, tuple(sorted(sums)), checksum=True,
                              empty_guard=guard))
        if quick:
            prove = tuple(t for t in quick if t in changes.prove)
            if prove:
                steps.append(Step(StepKind.PROVE, prove))
            steps.append(Step(StepKind.TREE, tuple(quick), empty_guard=guard))
        parents = _parents(changes, set(trees))
        if b"" in changes.paths:
            parents.add(b"")  # rsync sends a listed root with its content: a times step
        if agent and (changes.paths or parents):
            # the agent sets its directories' times itself, after their
            # entries; a directory that is only a parent gets its time and
            # nothing else: a change of its own mode or owner is an event,
            # which puts it in the paths
            steps.append(Step(StepKind.AGENT, tuple(sorted(changes.paths | parents)),
                              times=frozenset(parents - changes.paths)))
        else:
            if changes.paths - {b""}:
                steps.append(Step(StepKind.PATHS, tuple(sorted(changes.paths - {b""}))))
            if parents:
                steps.append(Step(StepKind.TIMES, tuple(sorted(parents)),
                                  empty_guard=b"" in parents and source_empty))
        plan = cls(steps, moves=len(changes.moves) if replay_moves else 0, parents=parents,
                   source_empty=source_empty)
        if not renames:
            plan.moves_done = plan.moves  # none to replay: none to replay again on a retry
        return plan

    def first(self) -> Step | Finished:
        return self.steps[0] if self.steps else Finished(Outcome.OK)

    def advance(self, step: Step, result: Result) -> Step | Finished:
        """The next step after ``step`` ended with ``result``, or the outcome."""
        self.done.append(step.kind)
        if result.unstarted:
            # nothing ran: a missing program will not appear by retrying;
            # a root or a state_dir that is not usable now may be later
            return Finished(Outcome.FATAL if result.rc == 127 else Outcome.RETRY, result.rc,
                            result.error)
        if result.old_receiver:
            return Finished(Outcome.RETRY, result.rc, result.error)
        if step.kind is StepKind.PROVE:
            return self._proven(step, result)
        if result.stalled and step.kind is not StepKind.AGENT:
            if step.kind is StepKind.MOVES:
                self.moves_done = self.moves  # some may have been applied: never replay
            return Finished(Outcome.RETRY, result.rc,
                            result.error or "no progress: transfer killed, will retry")
        if step.kind is StepKind.COMMAND:
            if result.rc == 0:
                self.moves_done = self.moves
                return Finished(Outcome.OK)
            return Finished(Outcome.RETRY, result.rc,
                            result.error or f"command exited with {result.rc}")
        if step.kind is StepKind.MOVES:
            if result.rc == 255:  # the target was not reached: nothing was renamed
                return Finished(Outcome.RETRY, result.rc, result.error or "ssh failed")
            self.moves_done = self.moves
            return self._next(step)
        if step.kind is StepKind.AGENT:
            # A dead or wedged agent hands everything to rsync; a working one
            # hands over what it does not do.
            working = result.rc == 0 and not result.stalled
            left = result.fallback if working else step.names
            if left:
                # rsync's writes and deletes change their directories' times
                # again, so a times step follows. A directory in what is
                # left is one the agent could not make or delete: it goes to
                # the paths step by name (its entry only); the root never
                # does (listed, it is its whole content). What a step of
                # times alone leaves is rsync's times step's, whole (which
                # makes a listed directory that is missing): never a second
                # paths step, equal to the one before it.
                i = self.steps.index(step) + 1
                paths = set() if step.times_only else set(left) - {b""}
                if self.parents:
                    self.steps.insert(i, self._times(step, working, left))
                if paths:
                    self.steps.insert(i, Step(StepKind.PATHS, tuple(sorted(paths))))
            return self._next(step)
        if step.empty_guard and result.rc == 25:
            return Finished(Outcome.RETRY, result.rc,
                            "the source is empty: refusing to delete the mirror")
        outcome = classify(result.rc)
        if outcome is not Outcome.OK:
            failed = Finished(outcome, result.rc,
                              result.error or f"{step.kind.value} transfer exited with {result.rc}")
            if step.kind is StepKind.TREE and result.rc == PARTIAL and self.partial is None:
                self.partial = failed
                return self._next(step)
            return failed
        return self._next(step)

    def _times(self, agent_step: Step, working: bool, left: Sequence[bytes]) -> Step:
        """The times step after rsync took what ``agent_step`` left: by the
        agent, if it answered and the directories fit in one of its steps
        (it sets a directory's time in place, where an rsync is a process,
        or over ssh a login, for a handful of ``utime`` calls; a
        burst past the agent's size reached every target this way); else
        by rsync. By rsync too when the agent handed back the root for its
        own attributes (a mode or an owner the agent cannot set there: rsync
        sends the listed root whole). Never by the agent after an agent
        times step: what that left goes to rsync, so this cannot repeat."""
        names = tuple(sorted(self.parents))
        root_itself = b"" in left and b"" not in agent_step.times
        if (working and not agent_step.times_only and not root_itself
                and len(names) <= MAX_PATHS_LOCAL):
            return Step(StepKind.AGENT, names, times=frozenset(names))
        return Step(StepKind.TIMES, names, empty_guard=b"" in self.parents and self.source_empty)

    def _proven(self, step: Step, result: Result) -> Step | Finished:
        """After the proof: the tree step stays a quick check, and the files
        left unproven (``fallback``) get their content compared in a paths
        step after it. A proof that could not be made (no agent on a remote
        target, an error, a stall) is never the batch's outcome: the tree
        step compares every file's content instead, as without a proof."""
        i = self.steps.index(step) + 1
        tree = self.steps[i]
        if result.rc != 0 or result.stalled:
            # the proven subtrees alone compared, first; the other trees
            # of the step (a restart's rescan of the root) stay quick
            proven = set(step.names)
            rest = tuple(t for t in tree.names if not _inside(t, proven))
            self.steps[i] = Step(StepKind.TREE, step.names, checksum=True,
                                 empty_guard=tree.empty_guard)
            if rest:
                self.steps.insert(i + 1, Step(StepKind.TREE, rest,
                                              empty_guard=tree.empty_guard))
        elif result.fallback:
            self.steps.insert(i + 1, Step(StepKind.PATHS, tuple(sorted(result.fallback)),
                                          checksum=True))
        return self._next(step)

    def guard_empty(self, step: Step) -> Step:
        """``step`` with ``empty_guard`` set, in its place in the plan: the
        source root was found empty right before ``step`` started (it was
        not when the batch was planned), so it must delete nothing."""
        guarded = dataclasses.replace(step, empty_guard=True)
        self.steps[self.steps.index(step)] = guarded
        return guarded

    def _next(self, step: Step) -> Step | Finished:
        i = self.steps.index(step)
        if i + 1 < len(self.steps):
            return self.steps[i + 1]
        return self.partial or Finished(Outcome.OK)


def _parents(changes: Changes, trees: set[bytes]) -> set[bytes]:
    """The directories holding the batch's entries, outside its trees.

    Creating, deleting or renaming an entry changes its directory's mtime
    (on the target, so does rsync's temporary file for any write), and no
    event says so (inotify reports the entry, not the directory's
    own change); rsync sets a directory's time only when the directory is
    in its list, or inside a tree it walks. So each such directory is sent
    too, the root as well: else the target's keeps the time of the last
    change made there, not the source's.

    A path's directory is sent even inside a tree: the paths step runs
    after the tree step, and its write there (a file listed by the
    watcher's ctime scan of a new directory, or changed again since) comes
    after the time the tree step set."""
    out: set[bytes] = set()
    ends = {rel for move in changes.moves for rel in move}
    for rel in changes.paths:
        if rel:
            out.add(rel.rpartition(b"/")[0])
    for rel in trees | ends:
        if not rel:
            continue
        parent = rel.rpartition(b"/")[0]
        if parent not in out and not _inside(parent, trees):
            out.add(parent)
    return out


def _inside(rel: bytes, trees: Set[bytes]) -> bool:
    """Is ``rel`` one of ``trees`` or below one (a walk there sets its time)?"""
    while True:
        if rel in trees:
            return True
        if not rel:
            return False
        rel = rel.rpartition(b"/")[0]
