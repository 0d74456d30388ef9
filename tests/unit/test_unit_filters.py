"""The watcher's exclude matching, checked against rsync itself: a directory
the watcher skips must be one rsync never transfers (the reverse — watching
something rsync excludes — only costs a watch)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from syncsup.config import ConfigError, Sync, Target
from syncsup.filters import DirFilter, RuleList, exclude_patterns, expand_rule_files
from syncsup.syncer.argv import rsync_argv
from syncsup.syncer.plan import Step, StepKind

DIRS = ["cache", "a/cache", "a/b/cache", "node_modules", "x/node_modules/y", "build",
        "src/build", "tmp.d", "a/tmp.d", "a/bq/c", "z/a/bq/c", "a/bq/r/c", "deep/x", "q/deep/x",
        "keep/cache", "-dash", "sp ace", "ab[1]"]

PATTERN_SETS = [
    ["/cache/"], ["cache"], ["node_modules/"], ["*.d"], ["a/b*/c"], ["**/deep/x"], ["/build"],
    ["build/***"], ["-dash", "sp ace"], ["ab[[]1]"], ["c?che"], ["[a-c]ache"],
]

rsync = shutil.which("rsync")


def _rsync_sends(src: Path, patterns: list[str], filters: Sequence[str] = ()) -> set[str]:
    argv = [rsync or "rsync", "-a", "--dry-run", "--out-format=%n", *(
        f"--exclude={p}" for p in patterns), *(f"--filter={f}" for f in filters),
        f"{src}/", str(src.parent / "dst") + "/"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return {line.rstrip("/") for line in out.splitlines() if line.strip() and line != "./"}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for d in DIRS:
        (src / d).mkdir(parents=True, exist_ok=True)
        (src / d / "file").write_text("x")
    return src


@pytest.mark.skipif(rsync is None, reason="rsync not installed")
@pytest.mark.parametrize("patterns", PATTERN_SETS)
def test_skipped_dirs_are_never_sent_by_rsync(tree: Path, patterns: list[str]) -> None:
    sent = _rsync_sends(tree, patterns)
    f = DirFilter([p.encode() for p in patterns])
    all_dirs = {str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_dir()}
    skipped = {d for d in all_dirs if f.excluded(os.fsencode(d))}
    assert skipped, f"{patterns} should exclude something in the test tree"
    assert not (skipped & sent), f"watcher skips dirs rsync sends: {sorted(skipped & sent)}"
    # and it is not uselessly timid: every directory rsync leaves out whose
    # parent it sends (the top of an excluded subtree) is skipped too
    top_excluded = {d for d in all_dirs if d not in sent and os.path.dirname(d) in sent | {""}}
    assert top_excluded <= skipped, sorted(top_excluded - skipped)


def _sync(**kw: object) -> Sync:
    return Sync(name="s", source=Path("/src"), targets=(Target("/dst", "/dst"),), **kw)  # type: ignore[arg-type]


def test_only_excludes_before_the_first_include_are_trusted() -> None:
    s = _sync(exclude=("cache/",), filter=("- tmp/", "+ keep/", "- other/"))
    assert exclude_patterns(s) == [b"cache/", b"tmp/"]


def test_target_side_rules_do_not_stop_the_list() -> None:
    s = _sync(filter=("P /protected", "- tmp/", "H hidden", "- more/"))
    assert exclude_patterns(s) == [b"tmp/", b"more/"]


def test_exclude_from_file(tmp_path: Path) -> None:
    f = tmp_path / "ex"
    f.write_text("# comment\n\ncache/\n*.o\n")
    assert exclude_patterns(_sync(exclude_from=f)) == [b"cache/", b"*.o"]


@pytest.mark.parametrize("name", ["exclude_from", "filter_from"])
def test_a_rule_file_gone_is_one_clear_error_for_watcher_and_syncer(tmp_path: Path,
                                                                   name: str) -> None:
    """The watcher's filter, the syncer's rule list and rsync's argv read
    rule files through one reader: a file that cannot be read (removed after
    the config was checked) is the same config error naming the key for
    each, never a guess at the rules."""
    sync = _sync(**{name: tmp_path / "gone"})
    for read in (exclude_patterns, RuleList, expand_rule_files):
        with pytest.raises(ConfigError) as exc:
            read(sync)
        assert exc.value.key == f"sync 's'.{name}"
        assert f"cannot read {tmp_path / 'gone'}" in str(exc.value)


def test_root_is_never_excluded() -> None:
    assert not DirFilter([b"*"]).excluded(b"")


def test_rule_files_are_expanded_for_rsync(tmp_path: Path) -> None:
    """--from0 makes rsync read rule files NUL-separated, so the syncer
    passes their lines as options instead (and refuses to forget that)."""
    ex, fl = tmp_path / "ex", tmp_path / "fl"
    ex.write_text("# comment\n*.swp\n\n/cache/\n")
    fl.write_text("- *.bak\n; comment\n+ keep/\n")
    s = _sync(exclude=("*.tmp",), exclude_from=ex, filter_from=fl)
    with pytest.raises(ValueError):
        rsync_argv(s, s.targets[0], Step(StepKind.PATHS), "/l", False)
    argv = rsync_argv(expand_rule_files(s), s.targets[0], Step(StepKind.PATHS), "/l",
                      False)
    assert [a for a in argv if a.startswith(("--exclude", "--filter"))] == [
        "--exclude=*.tmp", "--exclude=*.swp", "--exclude=/cache/", "--filter=- *.bak",
        "--filter=+ keep/"]


# ------------------------------------------------------------------ RuleList
FILTER_SETS: list[list[str]] = [
    ["+ /keep/", "- /cache/"],
    ["+ a/", "- */cache/", "- /build"],
    ["+ q/", "- deep/", "+ */", "- cache/"],
    ["- *.d", "+ x/", "- node_modules/"],
    ["+ keep/", "- cache", "- a/b*/c"],
]


@pytest.mark.skipif(rsync is None, reason="rsync not installed")
@pytest.mark.parametrize("filters", FILTER_SETS)
def test_below_excluded_is_what_a_recursive_rsync_leaves_out(tree: Path,
                                                             filters: list[str]) -> None:
    """A file listed alone is dropped exactly when a recursive rsync with
    the same rules would not send it because of a directory above it."""
    sent = _rsync_sends(tree, [], filters)
    rules = RuleList(_sync(filter=tuple(filters)))
    assert any(d not in sent for d in DIRS), f"{filters} should exclude something"
    for d in DIRS:  # a recursive rsync sends d only if it sends every directory above
        rel = f"{d}/file"
        assert rules.below_excluded(rel.encode()) == (d not in sent), (filters, rel, sent)


@pytest.mark.skipif(rsync is None, reason="rsync not installed")
@pytest.mark.parametrize("filters", FILTER_SETS)
def test_below_excluded_keeps_its_answer_per_directory_in_any_order(
        tree: Path, filters: list[str]) -> None:
    """One RuleList asked many names (as a target's steps ask, batch after
    batch) answers each as a fresh one would, whatever came before: names
    of one directory, of the directories above and below it, in shuffled
    order, and past the number of directories it keeps."""
    import syncsup.filters as filters_module

    sent = _rsync_sends(tree, [], filters)
    rules = RuleList(_sync(filter=tuple(filters)))
    # leaves a rule matches too (``cache`` under ``*/cache/``): only the
    # directories above a name count
    names = [f"{d}/{leaf}".encode() for d in DIRS
             for leaf in ("file", "other", "x/deeper", "cache", "c", "build")]
    rng = random.Random(7)
    for _round in range(3):
        rng.shuffle(names)
        for name in names:
            expect = RuleList(_sync(filter=tuple(filters))).below_excluded(name)
            assert rules.below_excluded(name) == expect, (filters, name)
            if name.endswith(b"/file"):  # and what rsync itself does
                assert expect == (name[:-5].decode() not in sent), (filters, name)
    many = [b"%s/n%d/f" % (d.encode(), i) for i in range(filters_module._VERDICTS // 8 + 1)
            for d in DIRS[:9]]
    for name in many + many[:50]:
        assert rules.below_excluded(name) == RuleList(
            _sync(filter=tuple(filters))).below_excluded(name), (filters, name)
    assert len(rules._dirs) <= filters_module._VERDICTS


def test_rules_it_cannot_read_end_the_list() -> None:
    """After a merge rule nothing is taken as excluded: a doubt sends."""
    rules = RuleList(_sync(filter=("- /a/", ": .rsync-filter", "- /b/")))
    assert rules.below_excluded(b"a/x") and not rules.below_excluded(b"b/x")
    assert not RuleList().below_excluded(b"a/b/c")
    assert not RuleList(_sync(filter=("P /a/", "- /z/"))).below_excluded(b"a/x")


# ------------------------------------------------------------ sent (renames)
SENT_SETS: list[list[str]] = [
    ["- *.tmp", "- *.swp"],
    ["+ keep/", "- cache", "- a/b*/c"],
    ["- file", "+ */"],
    ["+ q/", "- deep/", "+ */", "- cache/"],
    ["H *.d", "S x/", "- node_modules/", "P /build"],
    ["- /cache/", "+ keep/***", "- *"],
]


@pytest.mark.skipif(rsync is None, reason="rsync not installed")
@pytest.mark.parametrize("filters", SENT_SETS)
def test_sent_never_contradicts_a_recursive_rsync(tree: Path, filters: list[str]) -> None:
    """``sent`` is True only for entries rsync sends and False only for
    entries it does not: a wrong True replays a rename into an excluded name
    (the stale entry stays on the target), so every answer is checked."""
    (tree / "x.tmp").write_text("t")
    (tree / "keep" / "f.swp").write_text("s")
    sent = _rsync_sends(tree, [], filters)
    rules = RuleList(_sync(filter=tuple(filters)))
    every = {str(p.relative_to(tree)) for p in tree.rglob("*")}
    said = {rel: rules.sent(rel.encode()) for rel in every}
    assert {r for r, v in said.items() if v is True} <= sent, (filters, sent)
    assert not {r for r, v in said.items() if v is False} & sent, (filters, sent)
    assert any(v is False for v in said.values()), f"{filters} should exclude something"
    assert any(v is True for v in said.values())


def test_sent_is_a_doubt_after_a_rule_it_cannot_read() -> None:
    rules = RuleList(_sync(filter=("- *.tmp", ": .rsync-filter", "- *.swp")))
    assert rules.sent(b"a.tmp") is False
    assert rules.sent(b"a.swp") is None and rules.sent(b"a.txt") is None
    assert RuleList(_sync(exclude=("cache/",))).sent(b"cache") is None  # a dir only
    assert RuleList().sent(b"a/b") is True


def test_name_only_rules() -> None:
    assert RuleList(_sync(exclude=("*.tmp", "/build", "cache/", "/c/***"))).name_only()
    for rule in ("sub/*.tmp", "/a/b", "**/x", "a/*/c"):
        assert not RuleList(_sync(exclude=(rule,))).name_only(), rule
    assert not RuleList(_sync(filter=("- *.tmp", "dir-merge .x"))).name_only()


def test_patterns_it_does_not_model_are_a_doubt() -> None:
    """An escaped wildcard, an exclude that rsync reads as an include: no
    answer from there on, so no rename is replayed on a guess."""
    for rule in ("a\\*b", "+ keep"):
        rules = RuleList(_sync(exclude=(rule,)))
        assert rules.sent(b"a*b") is None and rules.sent(b"other") is None, rule
