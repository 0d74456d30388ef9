"""A batch as a plan of steps, pure: which transfers run in which order, and
what each step's result means.

::

    Batch ──> [moves] ──> [tree] ──> [agent] ──> [paths] ──> ok
                 │          │                     │
                 └──────────┴─────────────────────┴──> outcome (retry / fatal / halt)

    command mode:  Batch ──> [command] ──> ok | retry

* ``moves`` (modes that replay renames: rsyncssh, direct) renames on the
  target first, so that what follows finds the data where it now belongs.
  A rename that fails is repaired by the transfers (both ends are dirty
  too), so only "could not reach the target" (ssh's 255) fails the batch,
  and a confined target that refuses us fails it for good. Once attempted,
  renames count as done (``moves_done``) whatever happens next.
* ``tree`` rescans subtrees recursively with deletes; with ``--checksum``
  when events were lost there (``verify``) or when a replayed rename just
  moved the directory (content changed under the old name may have kept
  size and mtime). An empty source root looks like an unmounted disk: the
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
* A step that was killed for making no progress is a retry.

:meth:`Plan.advance` takes the result of the step that ran and gives the
next step or the batch's outcome; nothing else decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from syncsup.proto import Changes, Outcome
from syncsup.syncer.exitcodes import classify

__all__ = ["Finished", "Plan", "Result", "Step", "StepKind"]

PARTIAL = 23  # rsync: partial transfer due to error


class StepKind(StrEnum):
    MOVES = "moves"
    TREE = "tree"
    AGENT = "agent"
    PATHS = "paths"
    COMMAND = "command"


@dataclass(frozen=True)
class Step:
    """One process to run: ``names`` are the entries it covers (relative
    paths; renames for ``moves`` are in the batch's changes)."""

    kind: StepKind
    names: tuple[bytes, ...] = ()
    checksum: bool = False
    empty_guard: bool = False


@dataclass(frozen=True)
class Result:
    """How a step ended: ``rc`` its exit code (negative: the signal),
    ``stalled`` if the syncer killed it for making no progress, ``error``
    the last lines of its stderr, ``refused`` if a confined target refused
    the request itself."""

    rc: int
    stalled: bool = False
    error: str = ""
    refused: bool = False
    fallback: tuple[bytes, ...] = ()  # an agent step: the paths left to rsync


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

    @classmethod
    def make(cls, changes: Changes, *, commands: bool, replay_moves: bool,
             source_empty: bool, agent: bool = False) -> Plan:
        """The plan for ``changes``. ``replay_moves``: the mode renames on
        the target; ``source_empty``: the source root has no entries now;
        ``agent``: the target's agent takes the paths it can."""
        if commands:
            return cls([Step(StepKind.COMMAND)], moves=len(changes.moves))
        steps = []
        moved_to: set[bytes] = set()
        if replay_moves and changes.moves:
            steps.append(Step(StepKind.MOVES))
            moved_to = {dst for _src, dst in changes.moves}
        trees = sorted(changes.trees | changes.verify)
        if trees:
            steps.append(Step(
                StepKind.TREE, tuple(trees),
                checksum=bool(changes.verify) or bool(moved_to & changes.trees),
                empty_guard=b"" in trees and source_empty))
        if changes.paths:
            kind = StepKind.AGENT if agent else StepKind.PATHS
            steps.append(Step(kind, tuple(sorted(changes.paths))))
        return cls(steps, moves=len(changes.moves) if replay_moves else 0)

    def first(self) -> Step | Finished:
        return self.steps[0] if self.steps else Finished(Outcome.OK)

    def advance(self, step: Step, result: Result) -> Step | Finished:
        """The next step after ``step`` ended with ``result``, or the outcome."""
        self.done.append(step.kind)
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
            if result.rc == 255:  # ssh could not reach the target: nothing was renamed
                return Finished(Outcome.RETRY, result.rc, result.error or "ssh failed")
            if result.refused:  # wrong ROOT, no confinement there: retrying cannot help
                return Finished(Outcome.FATAL, result.rc, result.error)
            self.moves_done = self.moves
            return self._next(step)
        if step.kind is StepKind.AGENT:
            # A dead or wedged agent hands everything to rsync; a working one
            # hands over what it does not do.
            left = step.names if result.rc != 0 or result.stalled else result.fallback
            if left:
                nxt = Step(StepKind.PATHS, tuple(sorted(set(left))))
                self.steps.insert(self.steps.index(step) + 1, nxt)
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

    def _next(self, step: Step) -> Step | Finished:
        i = self.steps.index(step)
        if i + 1 < len(self.steps):
            return self.steps[i + 1]
        return self.partial or Finished(Outcome.OK)
