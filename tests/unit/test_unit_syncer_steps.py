"""The syncer's decisions around each step (syncer/steps.py) and the agent
channel's rename replay (syncer/agents.py), with no process: real trees in
tmp_path for what the source holds, a fake session for a remote agent."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from syncsup.config import Mode, RsyncOptions, Sync, Target
from syncsup.filters import RuleList
from syncsup.proto import Batch, Changes
from syncsup.syncer import prove as prove_module
from syncsup.syncer.agents import Channel, agent_command, agent_use
from syncsup.syncer.plan import Plan, Result, Step, StepKind
from syncsup.syncer.steps import (
    Receiver,
    agent_names,
    covered,
    files_from,
    interpret,
    nearest_sendable,
    plan_batch,
    rsync_names,
)
from syncsup.timings import Timings

LOCAL = Target("/dst", "/dst")
REMOTE = Target("h:/dst", "/dst", host="h")
CONFINED = Target("h:/dst", "/dst", host="h", confined=True)


def sync_of(src: Path, target: Target = LOCAL, **kw: Any) -> Sync:
    return Sync(name="s", source=src, targets=(target,), **kw)


def batch_of(**changes: Any) -> Batch:
    return Batch(batch_id=1, sync="s", target=0, changes=Changes(**changes))


def kinds(plan: Plan) -> list[StepKind]:
    return [s.kind for s in plan.steps]


# ------------------------------------------------------------------ names sent
def test_files_from_names_are_never_comments() -> None:
    assert files_from([b"", b"#hash", b";semi", b"a/b"]) == b".\0./#hash\0./;semi\0./a/b\0"


def test_paths_below_a_non_directory_become_that_ancestor(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "file").write_text("now a file")
    os.symlink(tmp_path / "d", tmp_path / "link")
    root = os.fsencode(tmp_path)
    got = nearest_sendable(root, [b"d/e/x", b"file/old/y", b"file/z", b"link/e", b"gone/q",
                                  b"top"])
    assert got == [b"d/e/x", b"file", b"link", b"gone", b"top"]


def _nearest_one_by_one(root: bytes, paths: list[bytes]) -> list[bytes]:
    """What nearest_sendable answers, path by path with nothing kept."""
    out: dict[bytes, None] = {}
    for path in paths:
        parts, chosen = path.split(b"/"), path
        for i in range(1, len(parts)):
            prefix = b"/".join(parts[:i])
            if not os.path.isdir(os.path.join(root, prefix)) or os.path.islink(
                    os.path.join(root, prefix)):
                chosen = prefix
                break
        out[chosen] = None
    return list(out)


def test_nearest_sendable_answers_as_each_path_asked_alone(tmp_path: Path) -> None:
    """The answer is kept per parent directory: shuffled names of the same
    and of nested directories, below files, symlinks and missing entries,
    get what each would get alone, in the order first seen."""
    for d in ("a/b/c", "a/d", "e"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "a" / "f").write_text("file")
    (tmp_path / "g").write_text("file")
    os.symlink(tmp_path / "a", tmp_path / "lnk")
    root = os.fsencode(tmp_path)
    parents = [b"", b"a", b"a/b", b"a/b/c", b"a/d", b"a/f", b"a/f/x", b"g", b"g/h", b"lnk",
               b"lnk/b", b"gone", b"gone/deeper", b"e", b"a/gone/x"]
    paths = [b"/".join(p for p in (parent, leaf) if p) for parent in parents
             for leaf in (b"x", b"y", b"")]
    rng = random.Random(3)
    for _ in range(20):
        rng.shuffle(paths)
        assert nearest_sendable(root, paths) == _nearest_one_by_one(root, paths)


def never_asked() -> bool:
    raise AssertionError("the source root's emptiness was asked when it cannot matter")


def test_names_below_an_excluded_directory_are_not_sent(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    sync = sync_of(tmp_path, exclude=("cache/",))
    plan = Plan([Step(StepKind.PATHS, (b"cache/x", b"y"))])
    got = rsync_names(plan, plan.steps[0], Changes(paths={b"cache/x", b"y"}), RuleList(sync),
                      os.fsencode(tmp_path), missing_args=True, empty=never_asked)
    assert got.names == [b"y"] and got.missing_args and got.step is plan.steps[0]


def test_an_old_receivers_times_step_lists_directories_with_their_entries(tmp_path: Path
                                                                          ) -> None:
    """A directory that lost an entry is listed with a slash (rsync then
    deletes what is gone there); the root, listed, is guarded when the
    source is empty right before the step."""
    (tmp_path / "d").mkdir()
    (tmp_path / "kept").mkdir()
    sync = sync_of(tmp_path)
    step = Step(StepKind.TIMES, (b"", b"d", b"kept"))
    plan = Plan([Step(StepKind.PATHS, (b"d/gone", b"kept/x")), step])
    (tmp_path / "kept" / "x").write_text("x")
    asked: list[bool] = []

    def empty() -> bool:
        asked.append(True)
        return True

    got = rsync_names(plan, step, Changes(paths={b"d/gone", b"kept/x"}), RuleList(sync),
                      os.fsencode(tmp_path), missing_args=False, empty=empty)
    assert got.names == [b"", b"d/", b"kept"] and not got.missing_args
    assert asked and got.step.empty_guard and plan.steps[1] is got.step


def test_a_receiver_taking_missing_args_lists_directories_alone(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    step = Step(StepKind.TIMES, (b"", b"d"))
    plan = Plan([step])
    got = rsync_names(plan, step, Changes(paths={b"d/gone"}), RuleList(sync_of(tmp_path)),
                      os.fsencode(tmp_path), missing_args=True, empty=never_asked)
    assert got.names == [b"", b"d"] and not got.step.empty_guard


def test_covered_is_each_sent_name_with_every_directory_above_it(tmp_path: Path) -> None:
    """What rsync's paths step sets itself: the names it sends and their
    implied directories, the root too; a name the rules exclude, or leave
    in doubt, brings none of its directories."""
    plain = RuleList(sync_of(tmp_path))
    assert covered([b"a/b/c", b"a/x", b"top"], plain) == {
        b"", b"a", b"a/b", b"a/b/c", b"a/x", b"top"}
    assert covered([], plain) == frozenset()
    rules = RuleList(sync_of(tmp_path, exclude=("*.tmp",)))
    assert covered([b"d/e/f.tmp", b"g/h"], rules) == {b"", b"g", b"g/h"}
    assert covered([b"d/e/f.tmp"], rules) == frozenset()
    doubt = RuleList(sync_of(tmp_path, filter=(": .rules",)))  # a merge file: not read
    assert covered([b"a/b"], doubt) == frozenset()


def test_covered_matches_a_walk_of_every_name(tmp_path: Path) -> None:
    """The early stops (a name or directory already in) change nothing:
    the same set as every name's ancestors, over random lists."""
    rules = RuleList(sync_of(tmp_path, exclude=("x*",)))
    rng = random.Random(5)
    for _ in range(300):
        names = [b"/".join(rng.choice([b"a", b"b", b"xa"]) for _ in range(rng.randint(1, 4)))
                 for _ in range(rng.randint(0, 8))]
        want: set[bytes] = set()
        for n in names:
            if b"x" in n:  # a component starting with x: excluded, or below one
                continue
            parts = n.split(b"/")
            want |= {b"/".join(parts[:i]) for i in range(len(parts) + 1)}
        assert covered(names, rules) == want, names


def test_a_times_step_after_a_paths_step_leaves_out_what_it_set(tmp_path: Path) -> None:
    """With a receiver that sets implied directories and takes
    --delete-missing-args, the times step lists only what the paths step
    did not set; a tree step in between, or an old receiver, keeps all."""
    for d in ("a/b", "c", "e"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "a/b/f").write_text("f")
    source = os.fsencode(tmp_path)
    rules = RuleList(sync_of(tmp_path, exclude=("*.tmp",)))
    changes = Changes(paths={b"a/b/f", b"c/gone", b"e/x.tmp"})
    parents = (b"", b"a/b", b"c", b"e")

    def run(plan: Plan, implied: bool, missing: bool = True, deletes: bool = True
            ) -> list[bytes]:
        got: list[bytes] = []
        for step in plan.steps:
            sends = rsync_names(plan, step, changes, rules, source, missing_args=missing,
                                empty=lambda: False, deletes=deletes, implied_dirs=implied)
            got = sends.names
        return got

    def plan() -> Plan:
        return Plan([Step(StepKind.PATHS, tuple(sorted(changes.paths))),
                     Step(StepKind.TIMES, parents)])

    assert run(plan(), implied=True) == [b"e"]  # only the excluded name's directory
    assert run(plan(), implied=False) == list(parents)
    # deletions off: --ignore-missing-args drops c/gone with its directory
    assert run(plan(), implied=True, deletes=False) == list(parents)
    assert run(plan(), implied=True, missing=False) == [b"", b"a/b", b"c/", b"e/"]
    rescanned = Plan([Step(StepKind.PATHS, tuple(sorted(changes.paths))),
                      Step(StepKind.TREE, (b"a",)), Step(StepKind.TIMES, parents)])
    assert run(rescanned, implied=True) == list(parents)


def test_an_agent_times_step_leaves_out_what_rsync_set_and_a_writing_one_forgets_it(
        tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    sync = sync_of(tmp_path)
    times = Step(StepKind.AGENT, (b"", b"a", b"c"), times=frozenset({b"", b"a", b"c"}))
    plan = Plan([Step(StepKind.PATHS, (b"a/f",)), times])
    plan.implied = frozenset({b"", b"a", b"a/f"})
    assert agent_names(sync, plan, times) == ([b"c"], frozenset({b"c"}))
    plan.implied = frozenset({b"", b"a", b"c"})
    assert agent_names(sync, plan, times) == ([], frozenset())
    writes = Step(StepKind.AGENT, (b"a", b"a/g"), times=frozenset({b"a"}))
    assert agent_names(sync, plan, writes) == ([b"a/g", b"a"], frozenset({b"a"}))
    assert plan.implied == frozenset()


def test_what_an_agent_leaves_keeps_missing_args(tmp_path: Path) -> None:
    """A batch planned for the agent has no times step of its own: its
    rsync steps delete with --delete-missing-args even for an old receiver."""
    step = Step(StepKind.TIMES, (b"",))
    plan = Plan([Step(StepKind.AGENT, (b"x",)), step])
    got = rsync_names(plan, step, Changes(paths={b"x"}), RuleList(sync_of(tmp_path)),
                      os.fsencode(tmp_path), missing_args=False, empty=never_asked)
    assert got.missing_args and got.names == [b""]


# ---------------------------------------------------------------- batch plans
def test_renames_are_replayed_only_while_the_agent_can_take_them(tmp_path: Path) -> None:
    (tmp_path / "new").write_text("x")
    sync = sync_of(tmp_path, mode=Mode.DIRECT)
    moves = [(b"old", b"new")]
    with_agent = plan_batch(batch_of(paths={b"old", b"new"}, moves=list(moves)), sync, LOCAL,
                            RuleList(sync), empty=False, agent_writes=False, agent_renames=True)
    assert kinds(with_agent)[0] is StepKind.MOVES and with_agent.steps[0].renames == (
        (b"old", b"new"),)
    assert with_agent.moves_done == 0
    without = plan_batch(batch_of(paths={b"old", b"new"}, moves=list(moves)), sync, LOCAL,
                         RuleList(sync), empty=False, agent_writes=False, agent_renames=False)
    # a delete and a create, by the paths step; the rename is never replayed later
    assert kinds(without) == [StepKind.PATHS, StepKind.TIMES]
    assert without.moves == without.moves_done == 1


def test_a_mode_that_does_not_replay_renames_has_no_moves_step(tmp_path: Path) -> None:
    sync = sync_of(tmp_path)
    plan = plan_batch(batch_of(paths={b"a", b"b"}, moves=[(b"a", b"b")]), sync, LOCAL,
                      RuleList(sync), empty=False, agent_writes=True, agent_renames=True)
    assert kinds(plan) == [StepKind.AGENT] and plan.moves == 0


def test_a_rename_into_an_excluded_name_is_not_replayed(tmp_path: Path) -> None:
    sync = sync_of(tmp_path, mode=Mode.DIRECT, exclude=("*.tmp",))
    plan = plan_batch(batch_of(paths={b"a", b"a.tmp"}, moves=[(b"a", b"a.tmp")]), sync, LOCAL,
                      RuleList(sync), empty=False, agent_writes=False, agent_renames=True)
    assert StepKind.MOVES not in kinds(plan) and plan.moves_done == 1


def test_command_mode_runs_the_actions_whatever_the_agent(tmp_path: Path) -> None:
    sync = Sync(name="s", source=tmp_path, targets=(Target("command", ""),), mode=Mode.COMMAND)
    plan = plan_batch(batch_of(paths={b"a"}, moves=[(b"x", b"a")]), sync, sync.targets[0],
                      RuleList(sync), empty=False, agent_writes=False, agent_renames=False)
    assert kinds(plan) == [StepKind.COMMAND] and plan.moves == 1


def test_an_empty_local_target_needs_no_proof(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    target = Target(str(tmp_path / "dst"), str(tmp_path / "dst"))
    sync = sync_of(tmp_path / "src", target)
    plan = plan_batch(batch_of(prove={b""}), sync, target, RuleList(sync), empty=False,
                      agent_writes=False, agent_renames=False)
    assert kinds(plan) == [StepKind.TREE]


# ------------------------------------------------------------ results, judged
def judged(step: StepKind, rc: int, receiver: Receiver, target: Target = REMOTE,
           **kw: Any) -> Result:
    sync = sync_of(Path("/src"), target, **kw)
    return interpret(Step(step), Result(rc, error="x"), receiver=receiver, sync=sync,
                     target=target, startup=False, label="target t")


def test_an_old_receivers_2_retries_the_batch_with_listings_once() -> None:
    receiver = Receiver()
    got = judged(StepKind.PATHS, 2, receiver)
    assert got.old_receiver and "before 3.4.4" in got.error and not receiver.missing_args
    assert Plan([Step(StepKind.PATHS)]).advance(Step(StepKind.PATHS), got).outcome.value == (
        "retry")
    # learned once: a later 2 is rsync's own
    again = judged(StepKind.PATHS, 2, receiver)
    assert not again.old_receiver and again.error == "x"


@pytest.mark.parametrize("case", ["local", "confined", "times", "rc1", "no-deletes"])
def test_a_2_that_is_not_an_old_receivers_is_left_as_it_is(case: str) -> None:
    receiver = Receiver()
    target = {"local": LOCAL, "confined": CONFINED}.get(case, REMOTE)
    step = StepKind.TIMES if case == "times" else StepKind.TREE
    kw: dict[str, Any] = {"delete": False} if case == "no-deletes" else {}
    got = judged(step, 1 if case == "rc1" else 2, receiver, target, **kw)
    assert not got.old_receiver and receiver.missing_args


def test_the_empty_source_guard_is_said_loudly(caplog: pytest.LogCaptureFixture) -> None:
    sync = sync_of(Path("/src"), LOCAL)
    step = Step(StepKind.TREE, (b"",), empty_guard=True)
    with caplog.at_level(logging.ERROR, "syncsup.syncer"):
        got = interpret(step, Result(25), receiver=Receiver(), sync=sync, target=LOCAL,
                        startup=False, label="target t")
    assert got == Result(25)
    assert "refusing to delete the mirror" in caplog.text


# ------------------------------------------------------------- the agent renames
def channel(target: Target, src: Path, *, writes: bool = True, **kw: Any) -> Channel:
    sync = sync_of(src, target, mode=Mode.DIRECT if not target.is_remote else Mode.RSYNCSSH,
                   **kw)
    return Channel(sync, target, None, io.BytesIO(), Timings(), writes=writes)


def test_a_local_target_is_renamed_in_process_without_following_symlinks(tmp_path: Path
                                                                         ) -> None:
    dst = tmp_path / "dst"
    (dst / "d").mkdir(parents=True)
    (dst / "d" / "f").write_text("x")
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", dst / "link")
    ino = (dst / "d" / "f").stat().st_ino
    ch = channel(Target(str(dst), str(dst)), tmp_path, writes=False)
    got = ch.rename([(b"d", b"e"), (b"e/f", b"link/f"), (b"nope", b"x")], 0.0)
    ch.close()
    assert got == Result(rc=0)  # a rename that fails is the transfers' to repair
    assert (dst / "e" / "f").stat().st_ino == ino
    assert not (tmp_path / "outside" / "f").exists()


def test_an_agent_that_may_not_write_still_renames(tmp_path: Path) -> None:
    """Settings only rsync honours (compress here) keep content off the
    agent, not renames: it is there, says rsync as the transport."""
    ch = channel(REMOTE, tmp_path, writes=False, rsync=RsyncOptions(compress=True))
    assert ch.available(0.0) and not ch.may_write(0.0) and ch.transport(0.0) == "rsync"
    assert channel(REMOTE, tmp_path).transport(0.0) == "agent"


class FakeSession:
    """What Channel asks of a remote session."""

    def __init__(self, *, ready: bool, dead: str | None, result: Result | None,
                 exit_code: int | None = None) -> None:
        self.ready, self.dead, self._result = ready, dead, result
        self.exit_code = exit_code
        self.steps: list[list[dict[str, Any]]] = []
        self.closed = False

    def start_step(self, ops: list[dict[str, Any]], now: float) -> None:
        self.steps.append(ops)

    def flush(self) -> None:
        pass

    def read(self, now: float) -> None:
        pass

    def result(self, now: float) -> Result | None:
        return self._result

    def close(self) -> None:
        self.closed = True

    @property
    def answered(self) -> bool:
        return self.exit_code is not None and 0 <= self.exit_code < 255


def remote_channel(tmp_path: Path, session: FakeSession, **kw: Any) -> Channel:
    ch = channel(REMOTE, tmp_path, **kw)
    ch._session = lambda now: session  # type: ignore[assignment,method-assign,return-value]
    ch.remote = session  # type: ignore[assignment]
    return ch


def test_remote_renames_go_to_the_session_in_order(tmp_path: Path) -> None:
    s = FakeSession(ready=True, dead=None, result=Result(0, fallback=()))
    ch = remote_channel(tmp_path, s)
    assert ch.rename([(b"a", b"b"), (b"b", b"c")], 0.0) is None  # answers awaited
    assert s.steps == [[{"op": "rename", "src": b"a", "dst": b"b"},
                        {"op": "rename", "src": b"b", "dst": b"c"}]]
    assert ch.poll(1.0) == Result(0)


def test_a_session_lost_after_its_hello_has_renamed_some(tmp_path: Path) -> None:
    """rsync's 255 means "nothing renamed": the batch is retried and the
    renames replayed again. A session that answered hello may have applied
    some: not 255, so they count as done and the transfers repair."""
    s = FakeSession(ready=True, dead="connection lost", result=Result(255, error="lost"))
    ch = remote_channel(tmp_path, s)
    ch.rename([(b"a", b"b")], 0.0)
    got = ch.poll(1.0)
    assert got is not None and got.rc == 1
    plan = Plan([Step(StepKind.MOVES, renames=((b"a", b"b"),)), Step(StepKind.PATHS)], moves=1)
    assert plan.advance(plan.steps[0], got) == plan.steps[1] and plan.moves_done == 1


def test_a_session_that_never_answered_renamed_nothing(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The target answered (127: no such program there): the rename step
    ends with 0, nothing replayed, and the batch's transfers carry the
    renames as a delete and a create; the target has no agent for now (said
    once, with the remedy), so later batches plan no replay."""
    s = FakeSession(ready=False, dead="sh: 1: syncsup-target: not found", result=Result(255),
                    exit_code=127)
    ch = remote_channel(tmp_path, s, writes=False)
    ch.rename([(b"a", b"b")], 0.0)
    with caplog.at_level(logging.WARNING, "syncsup.syncer"):
        got = ch.poll(1.0)
        assert got is not None and got.rc == 0, got
        assert not ch.available(2.0)
        ch.off_until = 0.0  # the retry period is over, and the agent is still missing
        s2 = FakeSession(ready=False, dead="not found", result=Result(255), exit_code=127)
        ch.remote = s2  # type: ignore[assignment]
        ch.read_ready(3.0)
    lines = [r.getMessage() for r in caplog.records if "no agent there" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "renames travel as a delete and a create until syncsup-target is installed on h" \
        in lines[0]


def test_no_session_now_replays_nothing_and_fails_nothing(tmp_path: Path) -> None:
    ch = channel(REMOTE, tmp_path, writes=False)
    ch.off_until = 100.0
    got = ch.rename([(b"a", b"b")], 0.0)
    assert got is not None and got.rc == 0


def test_the_agent_command_quotes_and_a_confined_key_always_names_syncsup_target() -> None:
    weird = Target("h:/d ir", "/d ir", host="h")
    assert agent_command(weird, "/opt/my tools/syncsup-target") == (
        "'/opt/my tools/syncsup-target' '/d ir' agent")
    assert agent_command(CONFINED, "/opt/x") == "syncsup-target /dst agent"
    # the proof's read-only session: the same command but for its verb
    assert agent_command(CONFINED, "/opt/x", "stats") == "syncsup-target /dst stats"


@pytest.mark.parametrize("mode,target,rsync,want", [
    (Mode.RSYNC, REMOTE, {}, (True, False)),
    (Mode.RSYNC, REMOTE, {"compress": True}, (False, False)),  # rsync does everything
    (Mode.RSYNCSSH, REMOTE, {"compress": True}, (False, True)),  # renames still replayed
    (Mode.RSYNCSSH, CONFINED, {}, (True, True)),
    (Mode.DIRECT, LOCAL, {"extra": ("--inplace",)}, (False, True)),
    (Mode.RSYNC, Target("h::m", "", host="h", module="m"), {}, (False, False)),
])
def test_what_a_targets_agent_is_for(mode: Mode, target: Target, rsync: dict[str, Any],
                                     want: tuple[bool, bool]) -> None:
    use = agent_use(sync_of(Path("/src"), target, mode=mode, rsync=RsyncOptions(**rsync)),
                    target)
    assert (use.writes, use.renames) == want and use.wanted == any(want)
    assert (use.why is None) == use.writes


@pytest.mark.parametrize("exit_code", [255, -9])
def test_a_target_not_reached_is_not_one_without_an_agent(exit_code: int, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    """ssh's 255 (the host down, the login refused) or a killed client:
    the target said nothing about its agent. No "install syncsup-target"
    then, and a new session is tried at once, then backing off."""
    s = FakeSession(ready=False, dead="ssh: connect to host h: Connection refused",
                    result=Result(255), exit_code=exit_code)
    ch = remote_channel(tmp_path, s)
    ch.rename([(b"a", b"b")], 0.0)
    with caplog.at_level(logging.INFO, "syncsup.syncer"):
        got = ch.poll(1.0)
    assert got is not None and got.rc == 255  # nothing renamed: the batch is retried
    assert "no agent there" not in caplog.text and "ended before it started" in caplog.text
    assert ch.available(1.0)  # the first restart is immediate


def test_only_agent_and_moves_steps_run_by_the_agent() -> None:
    assert {k for k in StepKind if Step(k).by_agent} == {StepKind.AGENT, StepKind.MOVES}


def test_a_local_target_replaced_while_held_open_is_opened_again(tmp_path: Path) -> None:
    """The channel keeps the target directory open between batches; one
    replaced since (a new disk mounted there, the directory made again)
    must get the renames, not the old directory that no one sees."""
    dst = tmp_path / "dst"
    (dst / "a").mkdir(parents=True)
    ch = channel(Target(str(dst), str(dst)), tmp_path, writes=False)
    assert ch.rename([(b"a", b"b")], 0.0) == Result(0) and (dst / "b").is_dir()
    dst.rename(tmp_path / "old")
    (dst / "c").mkdir(parents=True)
    assert ch.rename([(b"c", b"d")], 1.0) == Result(0)
    assert (dst / "d").is_dir() and not (dst / "c").exists()
    shutil.rmtree(dst)  # gone: an error for this step (the transfers make the directory)
    got = ch.rename([(b"d", b"e")], 2.0)
    assert got is not None and got.rc == 1 and not (tmp_path / "old" / "e").exists()
    ch.close()


def test_a_list_is_written_as_a_new_file(tmp_path: Path) -> None:
    """A step's list replaces the last one as a new file (a file truncated
    and written again is flushed at its close on ext4), whole, and one that
    was not there is made."""
    from syncsup.syncer._main import write_new

    lst = tmp_path / "www-0-paths.list"
    write_new(lst, b"./a\0./b\0")
    first = os.stat(lst).st_ino
    keep = os.open(lst, os.O_RDONLY)  # the inode stays in use: a new one is another
    try:
        write_new(lst, b"./c\0")
        assert lst.read_bytes() == b"./c\0"
        assert os.stat(lst).st_ino != first
        assert os.read(keep, 100) == b"./a\0./b\0"
    finally:
        os.close(keep)


def test_a_name_there_for_its_time_is_never_made_an_ancestors_deletion(tmp_path: Path
                                                                       ) -> None:
    """A changed name under a path that is no longer a directory becomes
    that path; a name there only for its directory's time stays itself,
    and counts as a change only when a changed name also became it."""
    src = tmp_path / "src"
    (src / "kept" / "x").mkdir(parents=True)
    (src / "file").write_bytes(b"was a directory")
    step = Step(StepKind.AGENT, (b"file", b"file/in", b"gone/a/b", b"gone/c", b"kept/x",
                                 b"kept/x/y"),
                times=frozenset({b"file", b"gone/a/b", b"kept/x"}))
    names, times = agent_names(sync_of(src), Plan([step]), step)
    # "file/in" became "file" (a change: "file" is no time-only name now);
    # "gone/c" became "gone"; the times-only "gone/a/b" stays itself
    assert sorted(names) == [b"file", b"gone", b"gone/a/b", b"kept/x", b"kept/x/y"]
    assert times == {b"gone/a/b", b"kept/x"}


def test_a_source_emptied_before_an_agent_times_step_deletes_nothing(tmp_path: Path
                                                                     ) -> None:
    """The directories' times after a burst's rsync run, the source root
    emptied meanwhile (a disk unmounted under its mount point): the agent
    deletes none of the listed directories, nested ones neither, nor any
    of their ancestors; it has nothing to set, and hands nothing back."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for top in (src, dst):
        for d in ("a/b0", "a/b1", "c"):
            (top / d).mkdir(parents=True)
            (top / d / "f").write_bytes(b"f")
    names = (b"a/b0", b"a/b1", b"c")
    plan = Plan.make(Changes(paths={b"%s/f" % n for n in names}), commands=False,
                     replay_moves=False, source_empty=False, agent=True)
    (agent,) = plan.steps
    paths = plan.advance(agent, Result(0, fallback=agent.names))  # a burst: all to rsync
    times_step = plan.advance(paths, Result(0))
    assert times_step == Step(StepKind.AGENT, names, times=frozenset(names))
    shutil.rmtree(src)
    src.mkdir()
    ch = channel(Target(str(dst), str(dst)), src)
    try:
        got, times = agent_names(ch.sync, plan, times_step)
        result = ch.begin(got, startup=False, now=0.0, times=times)
    finally:
        ch.close()
    assert result == Result(rc=0)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*")) == [
        "a", "a/b0", "a/b0/f", "a/b1", "a/b1/f", "c", "c/f"]


def test_an_arrived_directory_is_proven_compared_whole_or_left_to_the_quick_check(
        tmp_path: Path) -> None:
    """Where the target's ctimes cannot be read (an rsync daemon, a remote
    agent known to be off or a proof that failed lately), the proof of an
    arrived directory is a content comparison from the start (a start's
    proof of the root is tried all the same but on an rsync daemon); small
    arrived directories on a remote target are compared whole (no
    session), large ones proven; a local target that holds nothing there
    needs neither."""
    src = tmp_path / "src"
    (src / "small" / "d").mkdir(parents=True)
    (src / "small" / "d" / "f").write_bytes(b"f")
    (src / "small2").mkdir()
    for i in range(prove_module.SMALL_DIRS + 1):
        (src / "large" / str(i)).mkdir(parents=True)
    daemon = Target("h::m", "", host="h", module="m")
    local = Target(str(tmp_path / "dst"), str(tmp_path / "dst"))
    both, smalls = {b"small", b"large"}, {b"small", b"small2"}
    cases: list[tuple[Target, bool, bool, set[bytes], set[bytes], set[bytes]]] = [
        # target, provable, startup, proven -> what stays proven, what is compared
        (daemon, True, False, both, set(), both),
        (daemon, True, True, {b""}, set(), {b""}),  # nothing there to answer
        (REMOTE, False, False, both, set(), both),
        (REMOTE, False, True, both | {b""}, {b""}, both),  # the start's root: tried
        (REMOTE, True, False, both, both, set()),  # one proof for all
        (REMOTE, True, False, smalls, set(), smalls),
        (REMOTE, True, False, smalls | {b""}, smalls | {b""}, set()),  # the root's
        (REMOTE, True, True, smalls, smalls, set()),  # the start's: proven
        (local, True, False, both, set(), set()),
    ]
    for target, provable, startup, asked, proven, compared in cases:
        sync = sync_of(src, target)
        batch = batch_of(prove=set(asked))
        batch = dataclasses.replace(batch, startup=startup)
        plan_batch(batch, sync, target, RuleList(sync), empty=False, agent_writes=False,
                   agent_renames=False, provable=provable)
        assert batch.changes.prove == proven, target
        assert batch.changes.verify == compared, target


def test_a_renames_old_name_goes_with_the_compared_step_only_if_gone(tmp_path: Path) -> None:
    """The old name of a replayed rename is rescanned in the compared step
    when it is gone from the source; made again there (a staging directory
    refilled), it keeps its quick check rather than being read twice."""
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    sync = sync_of(src, REMOTE, mode=Mode.RSYNCSSH)
    for again in (False, True):
        if again:
            (src / "a").mkdir()
        plan = plan_batch(batch_of(trees={b"a"}, prove={b"b"}, moves=[(b"a", b"b")]), sync,
                          REMOTE, RuleList(sync), empty=False, agent_writes=False,
                          agent_renames=True)
        trees = [s for s in plan.steps if s.kind is StepKind.TREE]
        assert trees == ([Step(StepKind.TREE, (b"b",), checksum=True),
                          Step(StepKind.TREE, (b"a",))] if again
                         else [Step(StepKind.TREE, (b"a", b"b"), checksum=True)])
    # an old name below a directory swapped for a symlink is gone, whatever
    # the symlink points to (never followed)
    (tmp_path / "elsewhere" / "a").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere", src / "p")
    plan = plan_batch(batch_of(trees={b"p/a"}, prove={b"b"}, moves=[(b"p/a", b"b")]), sync,
                      REMOTE, RuleList(sync), empty=False, agent_writes=False,
                      agent_renames=True)
    assert [s for s in plan.steps if s.kind is StepKind.TREE] == [
        Step(StepKind.TREE, (b"b", b"p/a"), checksum=True)]


def test_no_proof_where_every_tree_step_compares_content(tmp_path: Path) -> None:
    """``[sync.rsync] checksum = true``: a proof would be a walk (over ssh,
    a session) for nothing."""
    src = tmp_path / "src"
    src.mkdir()
    sync = sync_of(src, REMOTE, rsync=RsyncOptions(checksum=True))
    batch = batch_of(prove={b"", b"new"})
    plan = plan_batch(batch, sync, REMOTE, RuleList(sync), empty=False, agent_writes=False,
                      agent_renames=False)
    assert StepKind.PROVE not in kinds(plan)
    assert batch.changes.verify == {b"", b"new"} and not batch.changes.prove
