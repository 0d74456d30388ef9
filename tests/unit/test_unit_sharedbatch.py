"""Which steps share an rsync batch, the command lines that record and
replay one, and the life of a batch file (pure, with a temp directory)."""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from syncsup.config import RsyncOptions, Sync, Target
from syncsup.dirfd import DIR_FLAGS, lstat_below
from syncsup.syncer import sharedbatch as sb
from syncsup.syncer.argv import rsync_argv
from syncsup.syncer.plan import Step, StepKind

A = Target(spec="/mnt/a", path="/mnt/a")
B = Target(spec="/mnt/b", path="/mnt/b")
REMOTE = Target(spec="h:/srv/www", path="/srv/www", host="h")
PATHS = Step(StepKind.PATHS, (b"x",))
LISTED = b"x\0y/z\0"
NAMES = [b"x", b"y/z"]
J = ("www", 9)  # the sync and its journal (Batch.journal)


def sync(*targets: Target, extra: tuple[str, ...] = ()) -> Sync:
    return Sync(name="www", source=Path("/srv/www"), targets=targets,
                rsync=RsyncOptions(extra=extra))


def argv(target: Target, step: Step = PATHS, lst: str = "/st/tmp/www-0-paths.list") -> list[str]:
    return rsync_argv(sync(A, B), target, step, lst, startup=False)


def test_only_syncs_with_two_local_targets_and_no_extra_options_share() -> None:
    assert sb.shares(sync(A, B))  # (prlimit is installed where the tests run)
    assert not sb.shares(sync(A, REMOTE))
    assert not sb.shares(sync(A, B, extra=("--inplace",)))


def test_the_key_ignores_the_list_file_and_the_destination_only() -> None:
    ka = sb.batch_key(PATHS, A, argv(A), LISTED, J)
    kb = sb.batch_key(PATHS, B, argv(B, lst="/st/tmp/www-1-paths.list"), LISTED, J)
    assert ka is not None and ka == kb
    assert sb.batch_key(PATHS, B, argv(B), b"x\0", J) != ka  # other names
    # another journal (another sync on the same source, a rebuilt one, a
    # restarted collator): generations that cannot be compared
    assert sb.batch_key(PATHS, B, argv(B), LISTED, ("www", 10)) != ka
    assert sb.batch_key(PATHS, B, argv(B), LISTED, ("mirror2", 9)) != ka
    assert sb.batch_key(PATHS, B, argv(B), LISTED, ("www", 0)) is None  # unknown


@pytest.mark.parametrize("step", [Step(StepKind.TREE, (b"",)), Step(StepKind.TIMES, (b"",)),
                                  Step(StepKind.PATHS, (b"x",), checksum=True)])
def test_quick_checks_and_checksums_never_share(step: Step) -> None:
    # a batch would hold only what the recording target lacked
    assert sb.batch_key(step, A, argv(A, step), LISTED, J) is None


def test_remote_targets_and_huge_lists_never_share() -> None:
    assert sb.batch_key(PATHS, REMOTE, argv(REMOTE), LISTED, J) is None
    huge = b"n\0" * (sb.MAX_NAMES + 1)
    assert sb.batch_key(PATHS, A, argv(A), huge, J) is None


def test_record_and_replay_command_lines(tmp_path: Path) -> None:
    plain = argv(A)
    batch = tmp_path / "shared-1.batch"
    w = sb.write_argv(plain, batch)
    assert w[-2:] == plain[-2:] and "--whole-file" in w and f"--write-batch={batch}" in w
    assert w[1:3] == [f"--fsize={2 * sb.MAX_BYTES}", "--"] and w[3:-4] == plain[:-2]
    r = sb.read_argv(argv(B), batch)
    assert r[-1] == plain[-1].replace("/mnt/a", "/mnt/b")
    assert "/srv/www/" not in r  # no source: the batch is the sender
    assert not any(a.startswith("--files-from=") for a in r) and "--from0" not in r
    assert f"--read-batch={batch}" in r and "--whole-file" in r and "-I" in r
    assert "--relative" in r  # what --files-from implies: the directories on the way


class Source:
    """What :func:`sb.versions_of` would say: ``version`` (None: too large)."""

    def __init__(self) -> None:
        self.version: sb.Fingerprint | None = ((1, 2, 0o100644, 10, 5, 5),)

    def __call__(self, _root: bytes, _names: Sequence[bytes],
                 _limit: int) -> sb.Fingerprint | None:
        return self.version


def make(tmp_path: Path, source: Source | None = None) -> sb.SharedBatches:
    return sb.SharedBatches(tmp_path, versions=source or Source())


def finish_writing(shared: sb.SharedBatches, use: sb.Use, ok: bool = True,
                   now: float = 1.0, data: bytes = b"batch") -> None:
    assert use.writes is not None
    use.writes.write_bytes(data)
    use.writes.with_name(use.writes.name + ".sh").write_bytes(b"#!/bin/sh\n")
    shared.ended(use, ok, now)


KEY = sb.batch_key(PATHS, A, argv(A), LISTED, J)


def use(shared: sb.SharedBatches, target: Target, gen: int, now: float = 0.0,
        wait: bool = False, key: sb.Key | None = KEY) -> sb.Use:
    return shared.use(key, argv(target), b"/srv/www", NAMES, now, generation=gen, wait=wait)


def test_the_first_records_the_others_replay_after_it_ends(tmp_path: Path) -> None:
    shared = make(tmp_path)
    first = use(shared, A, 7)
    assert first.writes is not None and first.plain == argv(A)
    during = use(shared, B, 7, 0.5)
    assert not during.shared and during.argv == argv(B)  # not until it is whole
    finish_writing(shared, first)
    after = use(shared, B, 7, 1.5)
    assert after.shared and after.writes is None
    assert after.argv == sb.read_argv(argv(B), first.writes)
    assert after.plain == argv(B)
    older = use(shared, B, 5, 1.6)  # a target behind: its changes are older still
    assert older.argv == after.argv


def test_a_later_change_of_the_same_names_is_never_replayed(tmp_path: Path) -> None:
    # a large file appended to, batch after batch: the names are the same,
    # the versions may even look the same (a write still in progress when
    # it was read, a file made and deleted again): only the generation says
    shared = make(tmp_path)
    first = use(shared, A, 7)
    finish_writing(shared, first)
    later = use(shared, B, 8, 2.0)
    assert later.writes is not None and later.writes != first.writes  # recorded anew
    assert first.writes is not None and not first.writes.exists()
    finish_writing(shared, later, now=2.5)
    assert use(shared, A, 8, 3.0).argv == sb.read_argv(argv(A), later.writes)
    assert not use(shared, A, 0, 3.0).shared  # a batch of no known generation: plainly


def test_a_version_changed_since_the_recording_is_recorded_again(tmp_path: Path) -> None:
    # the second check, for a journal whose counter started again
    source = Source()
    shared = make(tmp_path, source)
    first = use(shared, A, 7)
    finish_writing(shared, first)
    source.version = ((1, 2, 0o100644, 20, 6, 6),)
    again = use(shared, B, 3, 2.0)
    assert again.writes is not None and again.writes != first.writes
    assert first.writes is not None and not first.writes.exists()
    finish_writing(shared, again, now=2.5)
    source.version = ((1, 2, 0o100644, 20, 6, 7),)  # a chmod, a same-size rewrite: the ctime
    assert use(shared, A, 3, 3.0).writes is not None


def test_a_failed_recording_sends_the_others_of_its_changes_plainly(tmp_path: Path) -> None:
    # an unreadable file, a full disk: it would fail for every target
    shared = make(tmp_path)
    first = use(shared, A, 7)
    finish_writing(shared, first, ok=False)
    assert list(tmp_path.iterdir()) == []
    assert not use(shared, B, 7, 1.0).shared
    assert use(shared, B, 8, 1.0).writes is not None  # a later change may try again


def test_a_failed_replay_sends_the_others_plainly(tmp_path: Path) -> None:
    shared = make(tmp_path)
    finish_writing(shared, use(shared, A, 7))
    replay = use(shared, B, 7, 1.0)
    assert replay.shared
    shared.ended(replay, False, 1.0)  # the syncer's order: its end, then the failure
    shared.failed(replay)
    assert list(tmp_path.iterdir()) == []
    assert not use(shared, B, 7, 1.0).shared


def test_too_large_is_sent_plainly(tmp_path: Path) -> None:
    source = Source()
    source.version = None  # the listed files add up to more
    big = make(tmp_path, source)
    assert not use(big, A, 7).shared
    assert not use(big, B, 7, 0.1).shared
    assert list(tmp_path.iterdir()) == []
    source = Source()
    shared = make(tmp_path, source)
    first = use(shared, A, 7)
    assert first.writes is not None
    with open(first.writes, "wb") as fh:  # grew past the bound while it was sent
        fh.truncate(sb.MAX_BYTES + 1)
    shared.ended(first, True, 1.0)
    assert list(tmp_path.iterdir()) == []
    assert not use(shared, B, 7, 1.0).shared


def test_batches_expire_and_at_most_keep_are_kept(tmp_path: Path) -> None:
    shared = make(tmp_path)
    uses = []
    for i in range(sb.KEEP + 1):
        key = sb.batch_key(PATHS, A, argv(A), b"./n%d\0" % i, J)
        u = use(shared, A, 7, float(i), key=key)
        finish_writing(shared, u, now=float(i))
        uses.append(u)
    assert uses[0].writes is not None and not uses[0].writes.exists()  # the oldest went
    assert len(list(tmp_path.glob("*.batch"))) == sb.KEEP
    shared.expire(sb.KEEP + sb.TTL + 1)
    assert list(tmp_path.iterdir()) == []


def test_a_batch_dropped_while_a_replay_of_it_runs_stays_until_that_ends(tmp_path: Path
                                                                        ) -> None:
    """A replay started just before its batch is dropped (past KEEP here;
    expired or failed alike) has yet to open the file: it is removed when
    the last such replay ends, never under it."""
    shared = make(tmp_path)
    first = use(shared, A, 7)
    finish_writing(shared, first)
    assert first.writes is not None
    replays = [use(shared, B, 7, 1.5), use(shared, B, 7, 1.6)]
    assert all(r.reads == first.writes for r in replays)
    for i in range(sb.KEEP):  # newer batches push the first one out
        key = sb.batch_key(PATHS, A, argv(A), b"./n%d\0" % i, J)
        finish_writing(shared, use(shared, A, 7, 2.0 + i, key=key), now=2.0 + i)
    assert KEY not in shared.entries and first.writes.exists()
    shared.ended(replays[0], True, 9.0)
    assert first.writes.exists()
    shared.ended(replays[1], False, 9.1)
    assert not first.writes.exists()
    assert not first.writes.with_name(first.writes.name + ".sh").exists()
    assert shared.reading == {}


def test_a_failed_replay_leaves_the_batch_to_the_replays_still_reading_it(tmp_path: Path
                                                                         ) -> None:
    shared = make(tmp_path)
    first = use(shared, A, 7)
    finish_writing(shared, first)
    assert first.writes is not None
    bad, other = use(shared, B, 7, 1.5), use(shared, B, 7, 1.6)
    shared.ended(bad, False, 2.0)
    shared.failed(bad)
    assert first.writes.exists()  # "other" has yet to open it
    assert not use(shared, B, 7, 2.1).shared  # but no new replay of it starts
    shared.ended(other, True, 2.2)
    assert not first.writes.exists()


def test_leftovers_of_a_killed_syncer_are_removed_and_clear_removes_all(tmp_path: Path) -> None:
    (tmp_path / "shared-9.batch").write_bytes(b"old")
    (tmp_path / "shared-9.batch.sh").write_bytes(b"old")
    (tmp_path / "www-0-paths.list").write_bytes(b"kept")
    shared = make(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["www-0-paths.list"]
    finish_writing(shared, use(shared, A, 7))
    being_written = use(shared, A, 1, key=sb.batch_key(PATHS, A, argv(A), b"./o\0", J))
    assert being_written.writes is not None
    being_written.writes.write_bytes(b"half")
    shared.clear()
    assert [p.name for p in tmp_path.iterdir()] == ["www-0-paths.list"]


def test_versions_of_listed_names_without_following_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"x" * 100)
    (root / "g").write_bytes(b"y" * 50)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"z" * 10_000)
    os.symlink(outside, root / "link")
    listed = [b"d/f", b"g", b"d", b"link/big", b"gone", b""]
    rootb = os.fsencode(root)
    v = sb.versions_of(rootb, listed, 1_000)
    assert v is not None and len(v) == 6
    assert v[3] is None and v[4] is None  # through a symlink, and gone: nothing there
    f, root_version = v[0], v[5]
    assert f is not None and f[3] == 100
    assert root_version is not None and root_version[1] == os.stat(root).st_ino
    assert sb.versions_of(rootb, listed, 120) is None  # 150 bytes of files: past the limit
    os.chmod(root / "g", 0o600)  # the ctime moves: another version
    assert sb.versions_of(rootb, listed, 1_000) != v


def _version_one_by_one(root: bytes, names: Sequence[bytes], limit: int) -> sb.Fingerprint | None:
    """What :func:`sb.versions_of` must say, each name looked up on its own
    (``lstat_below``: no symlink followed, only plain relative names), the
    size limit checked on the whole."""
    fd = os.open(root, DIR_FLAGS)

    def look(name: bytes) -> os.stat_result | None:
        try:
            return lstat_below(fd, name)
        except OSError:
            return None

    try:
        found = [look(name) for name in names]
    finally:
        os.close(fd)
    if sum(st.st_size for st in found if st is not None and stat.S_ISREG(st.st_mode)) > limit:
        return None
    return tuple(None if st is None else (st.st_dev, st.st_ino, st.st_mode, st.st_size,
                                          st.st_mtime_ns, st.st_ctime_ns) for st in found)


def test_versions_of_looks_a_directory_up_once_and_says_what_name_by_name_would(
        tmp_path: Path) -> None:
    """The lookup kept per directory gives the name-by-name answer for any
    list: sorted or not, the root between other directories, names through
    a symlink or a file, and names that are not plain (a leading or double
    slash, ``.``, ``..``, NUL), whose directory's other names still count."""
    root = tmp_path / "src"
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "o").write_bytes(b"o")
    for name in ("a/x", "a/b/y", "c/z", "top", "file"):
        (root / name).write_bytes(b"q" * 10)
    os.symlink(tmp_path / "out", root / "a" / "ln")
    pool = [b"", b"a", b"a/x", b"a/b", b"a/b/y", b"c/z", b"c", b"top", b"gone", b"a/gone",
            b"a/ln", b"a/ln/o", b"file/x", b"/top", b"a//x", b"a/./x", b"a/../top", b"a/..",
            b"a/.", b"a/x\0", b"..", b".", b"x/", b"a/b/", b"nope/x"]
    # more directories than the descriptor cache keeps (64): it is emptied
    # on the way, and a descriptor kept from before must not be used after
    for i in range(100):
        (root / "m" / str(i)).mkdir(parents=True)
        (root / "m" / str(i) / "f").write_bytes(b"m")
        (root / "m" / str(i) / "g").write_bytes(b"m")
    many = [b"m/%d%s" % (i, n) for i in range(100) for n in (b"/f", b"/g", b"")]
    rootb = os.fsencode(root)
    # a failed lookup between two names of one directory, at every filling
    # of the cache: the first directory's descriptor may have been closed
    # by the emptying on the way
    for k in range(1, 100):
        names = [b"m/%d/f" % i for i in range(k)] + [b"nope/x", b"m/%d/g" % (k - 1)]
        assert sb.versions_of(rootb, names, 100_000) == _version_one_by_one(
            rootb, names, 100_000), k
    rng = random.Random(5)
    for _ in range(5_000):
        names = [rng.choice(pool) for _ in range(rng.randint(0, 12))]
        if rng.random() < 0.1:
            names += rng.sample(many, 250)
        if rng.random() < 0.5:
            names.sort()
        limit = rng.choice([100_000, 25])
        assert sb.versions_of(rootb, names, limit) == _version_one_by_one(rootb, names, limit), \
            names


def test_a_recording_that_never_ran_or_was_dropped_is_released(tmp_path: Path) -> None:
    shared = make(tmp_path)
    assert KEY is not None
    first = use(shared, A, 7)
    shared.ended(first, False, 0.0)  # could not be spawned
    assert not shared.writing(KEY)
    second = use(shared, B, 8)
    assert second.writes is not None
    # evicted while it was recorded, then recorded again by another target:
    # the first recording's end must not finish the second's entry
    for i in range(sb.KEEP):
        use(shared, A, 8, 0.1, key=sb.batch_key(PATHS, A, argv(A), b"./o%d\0" % i, J))
    third = use(shared, A, 8, 0.2)
    assert third.writes is not None
    finish_writing(shared, second, now=0.3)
    assert shared.writing(KEY) and not second.writes.exists()
    finish_writing(shared, third, now=0.4)
    assert not shared.writing(KEY)
    assert use(shared, B, 8, 0.5).argv == sb.read_argv(argv(B), third.writes)


def test_use_without_a_key_is_the_plain_run(tmp_path: Path) -> None:
    u = make(tmp_path).use(None, argv(A), b"/", NAMES, 0.0, generation=7)
    assert u == sb.Use(argv(A), argv(A)) and not u.shared


def test_a_step_may_wait_for_the_recording_of_its_batch(tmp_path: Path) -> None:
    shared = make(tmp_path)
    assert KEY is not None
    first = use(shared, A, 7, 0.0, wait=True)
    assert first.writes is not None and not first.waits
    waiting = use(shared, B, 7, 0.1, wait=True)
    assert waiting.waits == 0.1 + sb.WAIT and waiting.key == KEY and shared.writing(KEY)
    assert not use(shared, B, 7, 0.2).shared  # waited long enough: plainly
    assert not use(shared, B, 8, 0.2, wait=True).waits  # a later change: its own way
    finish_writing(shared, first)
    assert not shared.writing(KEY)
    again = use(shared, B, 7, 1.5, wait=True)
    assert not again.waits and again.argv == sb.read_argv(argv(B), first.writes)
