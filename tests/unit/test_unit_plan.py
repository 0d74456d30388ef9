"""The syncer's transfer plan (syncer/plan.py), exhaustively.

Every shape of batch (command mode or not, renames replayed or not, renames,
trees, verifying trees and paths present or not, an empty source or not) is
combined with every kind of step result at every step of its plan, and the
next step or the batch's outcome is compared with a table written out here
from the documented rules, not from the code.
"""

from __future__ import annotations

import itertools
import random

import pytest

from syncsup.proto import Changes, Outcome
from syncsup.syncer.plan import MAX_PATHS_LOCAL, Finished, Plan, Result, Step, StepKind

MOVES, TREE, PATHS, COMMAND = StepKind.MOVES, StepKind.TREE, StepKind.PATHS, StepKind.COMMAND
TIMES = StepKind.TIMES

RENAMES = [(b"src", b"dst"), (b"dst", b"dst2")]
TREES = {"no-trees": set(), "sub": {b"sub"}, "root": {b""}, "rename-dst": {b"dst"}}
VERIFY = {"no-verify": set(), "verify-sub": {b"v"}, "verify-root": {b""}}
PATHS_SETS = {"no-paths": set(), "paths": {b"p", b"src", b"dst", b"\xff\n"}}

SHAPES = list(itertools.product(
    [False, True],   # commands
    [False, True],   # replay_moves
    [False, True],   # renames in the batch
    TREES, VERIFY, PATHS_SETS,
    [False, True],   # source_empty
))

# rsync's exit codes by class (docs in syncer/exitcodes.py)
OK_CODES = {0, 24}
FATAL_CODES = {1, 2, 4, 6, 13}
REFUSAL = "syncsup-target: refused: not the configured ROOT"
RESULTS = {
    "rc0": Result(0), "rc24": Result(24), "rc23": Result(23), "rc25": Result(25),
    "rc1": Result(1), "rc2": Result(2), "rc4": Result(4), "rc6": Result(6), "rc13": Result(13),
    "rc255": Result(255), "refused": Result(1, error=REFUSAL),
    "refused255": Result(255, error=REFUSAL),
    "signal": Result(-9), "stalled": Result(-15, stalled=True),
}


def shape_id(shape: tuple[object, ...]) -> str:
    commands, replay, renames, trees, verify, paths, empty = shape
    return "-".join([
        "commands" if commands else "rsync", "replay" if replay else "no-replay",
        "renames" if renames else "no-renames", str(trees), str(verify), str(paths),
        "empty-source" if empty else "source"])


def changes_of(renames: bool, trees: str, verify: str, paths: str) -> Changes:
    return Changes(paths=set(PATHS_SETS[paths]), trees=set(TREES[trees]),
                   verify=set(VERIFY[verify]), moves=list(RENAMES) if renames else [])


def expected_steps(commands: bool, replay: bool, renames: bool, trees: str, verify: str,
                   paths: str, empty: bool) -> list[Step]:
    """The plan, by the documented rules."""
    if commands:
        return [Step(COMMAND)]
    steps = []
    if replay and renames:
        steps.append(Step(MOVES, renames=tuple(RENAMES)))
    names = TREES[trees] | VERIFY[verify]
    # --checksum, in a step of its own first: events were lost (verify), or
    # a replayed rename just moved a directory whose content may have
    # changed under the old name
    sums = set(VERIFY[verify])
    if trees == "rename-dst" and replay and renames:
        sums |= TREES[trees]
    # the rest by the quick check, unless inside one compared already
    quick = {t for t in TREES[trees] if t not in sums and b"" not in sums}
    # --max-delete=0: every tree step of a batch rescanning the root, only
    # when the source is empty now
    for group, checksum in ((sums, True), (quick, False)):
        if group:
            steps.append(Step(TREE, tuple(sorted(group)), checksum=checksum,
                              empty_guard=empty and b"" in names))
    # Every entry here is in the root: its time is sent after them (an entry
    # made, deleted or renamed there changed it), unless a walk of the root
    # does, before any path is written there.
    if paths != "no-paths":
        steps.append(Step(PATHS, tuple(sorted(PATHS_SETS[paths]))))
    if (paths != "no-paths" and PATHS_SETS[paths] - {b""}) or (
            (renames or names - {b""}) and b"" not in names):
        # --max-delete=0 too: a times step deletes towards a receiver that
        # rejects --delete-missing-args, and an empty root must not wipe it
        steps.append(Step(TIMES, (b"",), empty_guard=empty))
    return steps


def expected_after(steps: list[Step], i: int, r: Result, renames: int
                   ) -> tuple[Step | Finished, int]:
    """(what follows step ``i`` ending with ``r``, moves_done), all earlier
    steps having succeeded. ``renames`` is how many the plan counts."""
    step = steps[i]
    moved_before = renames if any(s.kind is MOVES for s in steps[:i]) else 0
    nxt: Step | Finished = steps[i + 1] if i + 1 < len(steps) else Finished(Outcome.OK)
    if r.stalled:
        # a stalled MOVES step may have applied some renames: they count as done
        return Finished(Outcome.RETRY, r.rc, "no progress: transfer killed, will retry"), (
            renames if step.kind is MOVES else moved_before)
    if step.kind is COMMAND:
        if r.rc == 0:
            return Finished(Outcome.OK), renames
        return Finished(Outcome.RETRY, r.rc, r.error or f"command exited with {r.rc}"), 0
    if step.kind is MOVES:
        if r.rc == 255:
            return Finished(Outcome.RETRY, 255, r.error or "ssh failed"), 0
        # a failed rename (a refused session too) is repaired by the transfers
        return nxt, renames
    if step.empty_guard and r.rc == 25:
        return Finished(Outcome.RETRY, 25,
                        "the source is empty: refusing to delete the mirror"), moved_before
    default = r.error or f"{step.kind.value} transfer exited with {r.rc}"
    if r.rc in OK_CODES:
        return nxt, moved_before
    if r.rc in FATAL_CODES:
        return Finished(Outcome.FATAL, r.rc, default), moved_before
    if r.rc == 25:
        return Finished(Outcome.HALT, 25, default), moved_before
    if step.kind is TREE and r.rc == 23 and i + 1 < len(steps):
        return nxt, moved_before  # a partial tree transfer holds back nothing after it
    return Finished(Outcome.RETRY, r.rc, default), moved_before


def test_a_partial_tree_transfer_lets_the_paths_go_and_then_fails_the_batch() -> None:
    """rsync's 23 on the tree step (one subtree it cannot send, such as a
    path longer than it takes): the paths of the batch are still sent, and
    the batch ends in that failure (retried), not in success."""
    changes = Changes(trees={b"deep"}, paths={b"beside"})
    plan = Plan.make(changes, commands=False, replay_moves=False, source_empty=False)
    tree, paths, times = plan.steps  # times: the root holds "beside"
    assert times.kind is StepKind.TIMES and times.names == (b"",)
    assert plan.advance(tree, Result(23, error="too long")) == paths
    assert plan.advance(paths, Result(0)) == times
    assert plan.advance(times, Result(0)) == Finished(Outcome.RETRY, 23, "too long")
    plan = Plan.make(changes, commands=False, replay_moves=False, source_empty=False)
    plan.advance(tree, Result(23, error="too long"))
    assert plan.advance(paths, Result(12, error="stream")) == Finished(Outcome.RETRY, 12, "stream")


@pytest.mark.parametrize("shape", SHAPES, ids=[shape_id(s) for s in SHAPES])
def test_every_result_at_every_step(shape: tuple[bool, bool, bool, str, str, str, bool]
                                    ) -> None:
    commands, replay, renames, trees, verify, paths, empty = shape
    changes = changes_of(renames, trees, verify, paths)
    steps = expected_steps(*shape)
    counted = len(RENAMES) if renames and (commands or replay) else 0

    plan = Plan.make(changes, commands=commands, replay_moves=replay, source_empty=empty)
    assert plan.steps == steps
    assert plan.moves == counted
    assert plan.moves_done == 0
    assert plan.first() == (steps[0] if steps else Finished(Outcome.OK))
    assert isinstance(plan.first(), Finished) == (not steps)

    for i, step in enumerate(steps):
        for name, result in RESULTS.items():
            plan = Plan.make(changes, commands=commands, replay_moves=replay,
                             source_empty=empty)
            for j in range(i):  # everything before succeeded
                assert plan.advance(steps[j], Result(0)) == steps[j + 1]
            want, moves_done = expected_after(steps, i, result, counted)
            got = plan.advance(step, result)
            where = f"{step.kind.value} step #{i} with {name}"
            assert got == want, where
            assert plan.done == [s.kind for s in steps[:i + 1]], where
            if not (result.stalled and step.kind is MOVES):
                assert plan.moves_done == moves_done, where


def test_the_table_covers_every_combination() -> None:
    assert len(SHAPES) == 2 * 2 * 2 * 4 * 3 * 2 * 2
    assert len(set(SHAPES)) == len(SHAPES)
    kinds = {s.kind for shape in SHAPES for s in expected_steps(*shape)}
    # the agent's and the proof's own tables are below
    assert kinds == set(StepKind) - {StepKind.AGENT, StepKind.PROVE}


# ------------------------------------------------------------------- the agent
AGENT_RESULTS = {
    "all done": (Result(0), ()),
    "some left": (Result(0, fallback=(b"\xff\n", b"p")), (b"p", b"\xff\n")),
    "dead": (Result(255, error="agent gone"), "all"),
    "stalled": (Result(-9, stalled=True), "all"),
    "refused": (Result(1, error=REFUSAL), "all"),
}


@pytest.mark.parametrize("renames", [False, True])
@pytest.mark.parametrize("trees", ["no-trees", "root"])
@pytest.mark.parametrize("outcome", list(AGENT_RESULTS))
def test_the_agent_step_never_decides_the_batch(renames: bool, trees: str, outcome: str) -> None:
    """Paths go to the agent; whatever it leaves (or all of them, if it
    died, stalled or was refused) goes to an rsync paths step; the agent's
    own failure is never the batch's outcome."""
    changes = changes_of(renames, trees, "no-verify", "paths")
    plan = Plan.make(changes, commands=False, replay_moves=True, source_empty=False, agent=True)
    kinds = [s.kind for s in plan.steps]
    assert kinds[-1] is StepKind.AGENT and PATHS not in kinds
    parents = {b""}  # the paths' directory: written after any tree step
    assert plan.steps[-1].names == tuple(sorted(changes.paths | parents))
    step: Step | Finished = plan.first()
    while isinstance(step, Step) and step.kind is not StepKind.AGENT:
        step = plan.advance(step, Result(0))
    assert isinstance(step, Step) and step.kind is StepKind.AGENT
    result, left = AGENT_RESULTS[outcome]
    nxt = plan.advance(step, result)
    expected = tuple(sorted(changes.paths)) if left == "all" else left
    if expected:
        # what the agent left, then the directories' times (never by -I):
        # by the agent if it answered, else by rsync
        assert nxt == Step(PATHS, expected)
        nxt = plan.advance(nxt, Result(0))
        if parents:
            assert nxt == (Step(StepKind.AGENT, (b"",), times=frozenset({b""}))
                           if result.rc == 0 else Step(TIMES, (b"",)))
            nxt = plan.advance(nxt, Result(0))
    assert nxt == Finished(Outcome.OK)
    assert plan.moves_done == (len(RENAMES) if renames else 0)


@pytest.mark.parametrize("trees", ["no-trees", "rename-dst"])
def test_a_stalled_moves_step_counts_its_renames_as_attempted(trees: str) -> None:
    changes = changes_of(True, trees, "no-verify", "paths")
    plan = Plan.make(changes, commands=False, replay_moves=True, source_empty=False)
    assert plan.steps[0] == Step(MOVES, renames=tuple(RENAMES))
    end = plan.advance(plan.steps[0], Result(-15, stalled=True))
    assert end == Finished(Outcome.RETRY, -15, "no progress: transfer killed, will retry")
    assert plan.moves_done == len(RENAMES)


@pytest.mark.parametrize("kind", [TREE, PATHS, COMMAND])
def test_a_stalled_step_keeps_its_own_error_text(kind: StepKind) -> None:
    plan = Plan([Step(kind)])
    end = plan.advance(Step(kind), Result(-15, stalled=True, error="no progress for 30s"))
    assert end == Finished(Outcome.RETRY, -15, "no progress for 30s")


@pytest.mark.parametrize("kind", [TREE, PATHS])
@pytest.mark.parametrize("rc", sorted(FATAL_CODES | {23, 25, 30, 255, -9}))
def test_a_failed_transfer_reports_its_stderr(kind: StepKind, rc: int) -> None:
    plan = Plan([Step(kind), Step(PATHS if kind is TREE else TREE)])
    end = plan.advance(plan.steps[0], Result(rc, error="rsync: connection unexpectedly closed"))
    if kind is TREE and rc == 23:  # the paths go first; the batch still ends in the failure
        assert end == plan.steps[1]
        end = plan.advance(plan.steps[1], Result(0))
    assert isinstance(end, Finished)
    assert end.error == "rsync: connection unexpectedly closed"
    assert end.rc == rc
    assert end.outcome is not Outcome.OK


def test_command_mode_counts_renames_even_without_replaying_them() -> None:
    changes = Changes(paths={b"a", b"b"}, moves=[(b"a", b"b")])
    plan = Plan.make(changes, commands=True, replay_moves=False, source_empty=True)
    assert plan.steps == [Step(COMMAND)]  # nothing else, even with an empty source
    assert plan.moves == 1
    assert plan.advance(plan.steps[0], Result(0)) == Finished(Outcome.OK)
    assert plan.moves_done == 1


def test_an_empty_batch_is_done_at_once() -> None:
    plan = Plan.make(Changes(), commands=False, replay_moves=True, source_empty=True)
    assert plan.steps == []
    assert plan.first() == Finished(Outcome.OK, 0, "")
    assert plan.moves_done == 0
    # ``created`` alone never makes a transfer: it only qualifies paths.
    assert Plan.make(Changes(created={b"x"}), commands=False, replay_moves=False,
                     source_empty=False).steps == []


def test_the_empty_guard_is_only_for_the_root() -> None:
    for trees in ({b"sub"}, {b"a", b"b/c"}):
        step = Plan.make(Changes(trees=trees), commands=False, replay_moves=False,
                         source_empty=True).steps[0]
        assert not step.empty_guard
    steps = Plan.make(Changes(trees={b"sub"}, verify={b""}), commands=False,
                      replay_moves=False, source_empty=True).steps
    assert steps == [Step(TREE, (b"",), checksum=True, empty_guard=True)]


def test_checksum_only_for_trees_that_are_rename_destinations() -> None:
    changes = Changes(trees={b"other"}, paths={b"a", b"b"}, moves=[(b"a", b"b")])
    plan = Plan.make(changes, commands=False, replay_moves=True, source_empty=False)
    assert plan.steps[1] == Step(TREE, (b"other",))  # b is a path here, not a tree
    changes.trees.add(b"b")
    plan = Plan.make(changes, commands=False, replay_moves=True, source_empty=False)
    assert plan.steps[1:3] == [Step(TREE, (b"b",), checksum=True), Step(TREE, (b"other",))]
    # a directory that arrived there (proven elsewhere) is compared too
    changes = Changes(prove={b"b"}, moves=[(b"a", b"b")])
    plan = Plan.make(changes, commands=False, replay_moves=True, source_empty=False)
    assert plan.steps[1:] == [Step(TREE, (b"b",), checksum=True), Step(TIMES, (b"",))]
    # The source of a rename is no reason: nothing new arrived there.
    changes = Changes(trees={b"a"}, moves=[(b"a", b"b")])
    plan = Plan.make(changes, commands=False, replay_moves=True, source_empty=False)
    assert plan.steps[1] == Step(TREE, (b"a",))


# ------------------------------------------------- renames left to the transfers
def test_only_the_renames_given_are_replayed_and_all_count_as_done() -> None:
    """The renames the rules would not make (an end excluded) are left to
    the transfers: not in the moves step, yet counted as done, so a retry
    does not offer them again."""
    changes = changes_of(True, "no-trees", "no-verify", "paths")
    plan = Plan.make(changes, commands=False, replay_moves=True, source_empty=False,
                     replay=RENAMES[1:])
    assert plan.steps[0] == Step(MOVES, renames=tuple(RENAMES[1:]))
    assert plan.advance(plan.steps[0], Result(0)) == plan.steps[1]
    assert plan.moves_done == len(RENAMES)


def test_no_moves_step_when_no_rename_is_replayed() -> None:
    changes = changes_of(True, "no-trees", "no-verify", "paths")
    plan = Plan.make(changes, commands=False, replay_moves=True, source_empty=False, replay=[])
    assert [s.kind for s in plan.steps] == [PATHS, TIMES]
    assert plan.moves_done == len(RENAMES)


def test_the_directories_holding_the_entries_are_sent_outside_trees() -> None:
    """Each entry's directory has its time sent (the root too), except a
    directory inside a tree, whose walk sets it; a path's directory is sent
    even inside one: the paths step writes there after the tree step."""
    changes = Changes(paths={b"a/b/c", b"a/d", b"t/in/x", b"top"},
                      trees={b"t", b"n/new", b"u"}, moves=[(b"m/old", b"k/new")])
    plan = Plan.make(changes, commands=False, replay_moves=False, source_empty=False)
    parents = {b"a/b", b"a", b"", b"n", b"m", b"k", b"t/in"}
    assert plan.steps[-2:] == [Step(PATHS, tuple(sorted(changes.paths))),
                               Step(TIMES, tuple(sorted(parents)))]
    agent = Plan.make(changes, commands=False, replay_moves=False, source_empty=False,
                      agent=True)
    assert agent.steps[-1] == Step(StepKind.AGENT, tuple(sorted(changes.paths | parents)),
                                   times=frozenset(parents))


def test_the_root_goes_to_the_times_step_never_by_paths() -> None:
    """rsync sends a listed root with its whole content (and -I resends every
    file there): the root's own attributes go by the times step."""
    changes = Changes(paths={b"", b"a"})
    plan = Plan.make(changes, commands=False, replay_moves=False, source_empty=False)
    assert plan.steps == [Step(PATHS, (b"a",)), Step(TIMES, (b"",))]
    agent = Plan.make(Changes(paths={b""}), commands=False, replay_moves=False,
                      source_empty=False, agent=True)
    assert agent.steps == [Step(StepKind.AGENT, (b"",))]
    assert agent.advance(agent.steps[0], Result(255)) == Step(TIMES, (b"",))


def test_a_root_handed_back_for_its_attributes_gets_rsyncs_times_step() -> None:
    """The agent hands back a root that changed itself (a chmod: no agent
    operation sets a root's mode): the times step is then rsync's, which
    sends the listed root whole, not the agent's, which would set its time
    alone. A root that is only a parent in a burst past the agent leaves
    the times to the agent."""
    plan = Plan.make(Changes(paths={b"", b"a"}), commands=False, replay_moves=False,
                     source_empty=False, agent=True)
    (agent,) = plan.steps
    assert plan.advance(agent, Result(0, fallback=(b"",))) == Step(TIMES, (b"",))
    plan, agent, parents = burst_plan(MAX_PATHS_LOCAL + 1, 10)
    assert b"" not in agent.names
    root_file = Plan.make(Changes(paths=set(agent.names) - set(parents) | {b"top"}),
                          commands=False, replay_moves=False, source_empty=False, agent=True)
    (whole,) = root_file.steps
    assert b"" in whole.names and b"" in whole.times  # the root: a parent only
    paths = root_file.advance(whole, Result(0, fallback=whole.names))
    assert root_file.advance(paths, Result(0)).kind is StepKind.AGENT


def test_a_directory_the_agent_left_goes_by_name() -> None:
    """A directory gone from the source that the agent would not delete
    (it may hold the target's excluded files) is also a parent: it still
    goes to the paths step, where rsync deletes it, then the times."""
    changes = Changes(paths={b"d/gone/f"})
    plan = Plan.make(changes, commands=False, replay_moves=False, source_empty=False,
                     agent=True)
    nxt = plan.advance(plan.steps[0], Result(0, fallback=(b"d/gone",)))
    assert nxt == Step(PATHS, (b"d/gone",))
    assert plan.advance(nxt, Result(0)) == Step(StepKind.AGENT, (b"d/gone",),
                                                times=frozenset({b"d/gone"}))


def burst_plan(files: int, dirs: int) -> tuple[Plan, Step, tuple[bytes, ...]]:
    """A plan for ``files`` new files spread over ``dirs`` directories,
    for a target with an agent; its agent step and the parents."""
    paths = {b"d%d/f%d" % (i % dirs, i) for i in range(files)}
    plan = Plan.make(Changes(paths=paths), commands=False, replay_moves=False,
                     source_empty=False, agent=True)
    parents = tuple(sorted({b"d%d" % j for j in range(min(files, dirs))}))
    return plan, plan.steps[0], parents


def test_after_a_burst_past_the_agent_the_agent_sets_the_times() -> None:
    """A burst larger than one agent step goes to rsync whole; the
    directories' times that rsync's writes changed are then set by the
    agent, not by a second rsync (a process, or a login over ssh, for a
    few ``utime`` calls), and the batch ends when it answers."""
    plan, agent, parents = burst_plan(MAX_PATHS_LOCAL + 1, 10)
    paths = plan.advance(agent, Result(0, fallback=agent.names))
    assert paths == Step(PATHS, tuple(n for n in agent.names if n))
    times = plan.advance(paths, Result(0))
    assert times == Step(StepKind.AGENT, parents, times=frozenset(parents))
    assert plan.advance(times, Result(0)) == Finished(Outcome.OK)


@pytest.mark.parametrize("answer", ["some left", "dead", "stalled", "refused"])
def test_what_an_agent_times_step_leaves_goes_to_rsync_once(answer: str) -> None:
    """What the agent's times step leaves (a directory it could not find on
    the target, or all of it if it did not answer) goes to rsync's times
    step, which makes a listed directory that is missing: never to another
    agent step or paths step, so the plan cannot go round."""
    plan, agent, parents = burst_plan(MAX_PATHS_LOCAL + 1, 10)
    times = plan.advance(plan.advance(agent, Result(0, fallback=agent.names)), Result(0))
    assert times.kind is StepKind.AGENT
    result = {"some left": Result(0, fallback=(b"d3",)), "dead": Result(255),
              "stalled": Result(-9, stalled=True), "refused": Result(1, error=REFUSAL)}[answer]
    nxt = plan.advance(times, result)
    assert nxt == Step(TIMES, parents)
    assert plan.advance(Step(TIMES, parents), Result(0)) == Finished(Outcome.OK)


def test_a_directory_gone_that_neither_can_delete_ends_the_batch() -> None:
    """A directory deleted in the source that still holds the target's
    excluded files: the agent will not delete it, nor will rsync ("cannot
    delete non-empty directory"). Each step leaves it again, and the plan
    still ends (equal steps in one plan once sent it round forever)."""
    plan = Plan.make(Changes(paths={b"d", b"d/y"}), commands=False, replay_moves=False,
                     source_empty=False, agent=True)
    step: Step | Finished = plan.first()
    ran = []
    while isinstance(step, Step):
        ran.append(step.kind)
        assert len(ran) < 10, ran
        left = (b"d",) if step.by_agent else ()
        step = plan.advance(step, Result(0, fallback=left))
    assert step == Finished(Outcome.OK)
    assert ran == [StepKind.AGENT, PATHS, StepKind.AGENT, TIMES]


@pytest.mark.parametrize("seed", range(200))
def test_every_plan_ends_whatever_each_step_leaves(seed: int) -> None:
    """Any batch, whatever each agent step answers (nothing left, some of
    its names, all of them, no answer) and whatever rsync exits with,
    ends in a bounded number of steps."""
    rng = random.Random(seed)
    names = [b"", b"a", b"a/b", b"a/b/c", b"d", b"d/e", b"f"]
    changes = Changes(paths=set(rng.sample(names, rng.randint(1, 5))),
                      trees=set(rng.sample(names[1:], rng.randint(0, 1))))
    plan = Plan.make(changes, commands=False, replay_moves=False, source_empty=False,
                     agent=rng.random() < 0.8)
    step: Step | Finished = plan.first()
    for _ in range(12):
        if not isinstance(step, Step):
            break
        if step.by_agent:
            result = rng.choice([Result(0), Result(255), Result(0, fallback=step.names),
                                 Result(0, fallback=tuple(rng.sample(step.names, 1)))])
        else:
            result = Result(rng.choice([0, 0, 0, 23, 24]))
        step = plan.advance(step, result)
    assert isinstance(step, Finished), plan.steps


def test_too_many_directories_for_one_agent_step_go_to_rsync() -> None:
    """Past what one local agent step takes, the times go by rsync (an
    agent step that large would go to rsync whole anyway, by name)."""
    plan, agent, parents = burst_plan(2 * MAX_PATHS_LOCAL, MAX_PATHS_LOCAL + 1)
    assert len(parents) == MAX_PATHS_LOCAL + 1
    paths = plan.advance(agent, Result(0, fallback=agent.names))
    assert plan.advance(paths, Result(0)) == Step(TIMES, parents)
    plan, agent, parents = burst_plan(2 * MAX_PATHS_LOCAL, MAX_PATHS_LOCAL)
    paths = plan.advance(agent, Result(0, fallback=agent.names))
    assert plan.advance(paths, Result(0)).kind is StepKind.AGENT


# ------------------------------------------------------------------- the proof
PROVE = StepKind.PROVE


@pytest.mark.parametrize("paths", [False, True])
def test_a_proof_comes_first_and_keeps_the_tree_a_quick_check(paths: bool) -> None:
    changes = Changes(prove={b""}, paths={b"p"} if paths else set())
    plan = Plan.make(changes, commands=False, replay_moves=False, source_empty=False)
    assert plan.steps[:2] == [Step(PROVE, (b"",)), Step(TREE, (b"",))]
    # the unproven files: their content compared, right after the tree
    nxt = plan.advance(plan.steps[0], Result(0, fallback=(b"b", b"a")))
    assert nxt == Step(TREE, (b"",))
    assert plan.advance(nxt, Result(0)) == Step(PATHS, (b"a", b"b"), checksum=True)
    assert plan.steps[2:] == [Step(PATHS, (b"a", b"b"), checksum=True)] + (
        [Step(PATHS, (b"p",)), Step(TIMES, (b"",))] if paths else [])


@pytest.mark.parametrize("result", [Result(3, error="prove: no agent"), Result(1),
                                    Result(-9), Result(-15, stalled=True)])
def test_a_proof_that_fails_turns_the_tree_into_a_content_comparison(result: Result) -> None:
    plan = Plan.make(Changes(prove={b""}), commands=False, replay_moves=False,
                     source_empty=True)
    nxt = plan.advance(plan.steps[0], result)
    assert nxt == Step(TREE, (b"",), checksum=True, empty_guard=True)
    assert plan.advance(nxt, Result(0)) == Finished(Outcome.OK)


def test_all_proven_adds_nothing() -> None:
    plan = Plan.make(Changes(prove={b"sub"}), commands=False, replay_moves=False,
                     source_empty=False)
    nxt = plan.advance(plan.steps[0], Result(0))
    assert nxt == Step(TREE, (b"sub",))
    assert plan.advance(nxt, Result(0)) == Step(TIMES, (b"",))
    assert [s.kind for s in plan.steps] == [PROVE, TREE, TIMES]


def test_no_proof_where_the_tree_compares_content_anyway() -> None:
    """A verifying rescan of the root in the same batch (a resync) compares
    every file's content: nothing to prove, and no second walk."""
    plan = Plan.make(Changes(prove={b"", b"p"}, trees={b"t"}, verify={b""}), commands=False,
                     replay_moves=False, source_empty=False)
    assert plan.steps == [Step(TREE, (b"",), checksum=True)]


def test_a_verifying_rescan_of_one_directory_leaves_the_others_to_the_quick_check() -> None:
    """Lost events in one directory (or a small directory that arrived,
    compared whole) must not make the root's proof or rescan read every
    file: the compared subtree goes first, in a step of its own, and the
    rest keep their proof and quick check (a proven or rescanned subtree
    inside the compared one is covered by it). With the source empty,
    every tree step deletes nothing: the compared one would delete its
    part of the mirror."""
    plan = Plan.make(Changes(prove={b"", b"v/in"}, trees={b"t", b"v/sub"}, verify={b"v"}),
                     commands=False, replay_moves=False, source_empty=True)
    assert plan.steps[:3] == [Step(TREE, (b"v",), checksum=True, empty_guard=True),
                              Step(PROVE, (b"",)),
                              Step(TREE, (b"", b"t"), empty_guard=True)]
    nxt = plan.advance(plan.steps[0], Result(0))
    assert nxt == plan.steps[1]
    nxt = plan.advance(nxt, Result(3, error="prove: no agent"))
    assert nxt == Step(TREE, (b"",), checksum=True, empty_guard=True)


def test_a_failed_proof_compares_only_the_proven_subtrees() -> None:
    """A restart's rescan of the root (a quick check) with a directory that
    arrived meanwhile, whose proof fails (an older agent, a stall): the
    arrived directory alone is compared, first, and the root's rescan
    stays a quick check, never a read of the whole mirror."""
    plan = Plan.make(Changes(trees={b""}, prove={b"app", b"app/sub", b"lib"}),
                     commands=False, replay_moves=False, source_empty=False)
    assert plan.steps[:2] == [Step(PROVE, (b"app", b"app/sub", b"lib")),
                              Step(TREE, (b"", b"app", b"app/sub", b"lib"))]
    nxt = plan.advance(plan.steps[0], Result(3, error="prove: cannot read"))
    assert nxt == Step(TREE, (b"app", b"app/sub", b"lib"), checksum=True)
    assert plan.advance(nxt, Result(0)) == Step(TREE, (b"",))
    assert plan.steps[1:3] == [nxt, Step(TREE, (b"",))]
    # the root's own proof failing: the whole tree compared, as before
    plan = Plan.make(Changes(prove={b"", b"app"}), commands=False, replay_moves=False,
                     source_empty=False)
    assert plan.steps[0] == Step(PROVE, (b"", b"app"))
    nxt = plan.advance(plan.steps[0], Result(-15, stalled=True))
    assert nxt == Step(TREE, (b"", b"app"), checksum=True)
    assert plan.advance(nxt, Result(0)) == Finished(Outcome.OK)


def test_a_renamed_directory_costs_one_tree_step() -> None:
    """A replayed rename compares its destination's content; the old name,
    gone from the source, goes in the same step with what is below it (a
    second rsync, over ssh a login, for its deletion alone is what the
    split would cost). A name there again keeps its own step."""
    changes = Changes(trees={b"a", b"a/x"}, prove={b"b"}, moves=[(b"a", b"b")])
    plan = Plan.make(changes, commands=False, replay_moves=True, source_empty=False,
                     gone=frozenset({b"a"}))
    assert [s.kind for s in plan.steps] == [MOVES, TREE, TIMES]
    assert plan.steps[1] == Step(TREE, (b"a", b"a/x", b"b"), checksum=True)
    plan = Plan.make(changes, commands=False, replay_moves=True, source_empty=False)
    assert plan.steps[1:3] == [Step(TREE, (b"b",), checksum=True), Step(TREE, (b"a", b"a/x"))]


@pytest.mark.parametrize(("rc", "outcome"), [(127, Outcome.FATAL), (-1, Outcome.RETRY)])
@pytest.mark.parametrize("kind", [StepKind.TREE, StepKind.PATHS, StepKind.MOVES,
                                  StepKind.AGENT, StepKind.COMMAND])
def test_a_step_that_could_not_start_ends_the_batch(rc: int, outcome: Outcome,
                                                    kind: StepKind) -> None:
    """Nothing ran: a missing program (127) will not appear by retrying, an
    unsafe root or an unwritable list may be fine later. Decided by the plan
    like every other result, whatever the step."""
    plan = Plan([Step(kind), Step(StepKind.TIMES, (b"",))], moves=2)
    end = plan.advance(plan.steps[0], Result(rc, error="cannot run rsync", unstarted=True))
    assert end == Finished(outcome, rc, "cannot run rsync")
    assert plan.moves_done == 0  # no rename was attempted: they stay to replay


def test_a_source_found_empty_right_before_a_step_makes_it_delete_nothing() -> None:
    """The root was not empty when the batch was planned, and is when its
    times step (which may delete the root's entries) starts: the step gets
    the empty guard in its place, and rsync's 25 is then a retry, never a
    halt nor a deleted mirror."""
    plan = Plan.make(Changes(paths={b"gone"}), commands=False, replay_moves=False,
                     source_empty=False)
    times = next(s for s in plan.steps if s.kind is StepKind.TIMES)
    assert not times.empty_guard
    guarded = plan.guard_empty(times)
    assert guarded.empty_guard and guarded in plan.steps and times not in plan.steps
    end = plan.advance(guarded, Result(25))
    assert isinstance(end, Finished) and end.outcome is Outcome.RETRY
    assert "empty" in (end.error or "")


def test_a_receiver_that_rejects_delete_missing_args_is_a_retry_not_fatal() -> None:
    """rsync's 2 is fatal, but not when the syncer knows it as a receiver
    before 3.4.4 refusing --delete-missing-args: the batch is retried, the
    next try deleting through directory listings."""
    plan = Plan.make(Changes(paths={b"gone"}), commands=False, replay_moves=False,
                     source_empty=False)
    assert plan.advance(plan.steps[0], Result(2)).outcome is Outcome.FATAL  # type: ignore[union-attr]
    plan = Plan.make(Changes(paths={b"gone"}), commands=False, replay_moves=False,
                     source_empty=False)
    end = plan.advance(plan.steps[0], Result(2, error="rejects it", old_receiver=True))
    assert end == Finished(Outcome.RETRY, 2, "rejects it")
