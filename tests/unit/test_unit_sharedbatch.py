"""Which steps share an rsync batch, the command lines that record and
replay one, and the life of a batch file (pure, with a temp directory)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from syncsup.config import RsyncOptions, Sync, Target
from syncsup.syncer import sharedbatch as sb
from syncsup.syncer.argv import rsync_argv
from syncsup.syncer.plan import Step, StepKind
from syncsup.syncer.readonce import SETTLE
from syncsup.syncer.steps import files_from

A = Target(spec="/mnt/a", path="/mnt/a")
B = Target(spec="/mnt/b", path="/mnt/b")
REMOTE = Target(spec="h:/srv/www", path="/srv/www", host="h")
PATHS = Step(StepKind.PATHS, (b"x",))
LISTED = b"x\0y/z\0"


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
    ka = sb.batch_key(PATHS, A, argv(A), LISTED)
    kb = sb.batch_key(PATHS, B, argv(B, lst="/st/tmp/www-1-paths.list"), LISTED)
    assert ka is not None and ka == kb
    assert sb.batch_key(PATHS, B, argv(B), b"x\0") != ka  # other names


@pytest.mark.parametrize("step", [Step(StepKind.TREE, (b"",)), Step(StepKind.TIMES, (b"",)),
                                  Step(StepKind.PATHS, (b"x",), checksum=True)])
def test_quick_checks_and_checksums_never_share(step: Step) -> None:
    # a batch would hold only what the recording target lacked
    assert sb.batch_key(step, A, argv(A, step), LISTED) is None


def test_remote_targets_and_huge_lists_never_share() -> None:
    assert sb.batch_key(PATHS, REMOTE, argv(REMOTE), LISTED) is None
    huge = b"n\0" * (sb.MAX_NAMES + 1)
    assert sb.batch_key(PATHS, A, argv(A), huge) is None


def test_record_and_replay_command_lines(tmp_path: Path) -> None:
    plain = argv(A)
    batch = tmp_path / "shared-1.batch"
    w = sb.write_argv(plain, batch)
    assert w[-2:] == plain[-2:] and "--whole-file" in w and f"--write-batch={batch}" in w
    assert w[1:3] == [f"--fsize={sb.MAX_BYTES}", "--"] and w[3:-4] == plain[:-2]
    r = sb.read_argv(argv(B), batch)
    assert r[-1] == plain[-1].replace("/mnt/a", "/mnt/b")
    assert "/srv/www/" not in r  # no source: the batch is the sender
    assert not any(a.startswith("--files-from=") for a in r) and "--from0" not in r
    assert f"--read-batch={batch}" in r and "--whole-file" in r and "-I" in r
    assert "--relative" in r  # what --files-from implies: the directories on the way


class Source:
    """What :func:`sb.versions_of` would say: ``version`` (None: too large
    or not settled)."""

    def __init__(self) -> None:
        self.version: sb.Fingerprint | None = ((1, 2, 0o100644, 10, 5, 5),)
        self.young = 0.0

    def __call__(self, _root: bytes, _listed: bytes,
                 _limit: int) -> tuple[sb.Fingerprint | None, float]:
        return self.version, self.young


def make(tmp_path: Path, source: Source | None = None) -> sb.SharedBatches:
    return sb.SharedBatches(tmp_path, versions=source or Source())


def finish_writing(shared: sb.SharedBatches, use: sb.Use, ok: bool = True,
                   now: float = 1.0, data: bytes = b"batch") -> None:
    assert use.writes is not None
    use.writes.write_bytes(data)
    use.writes.with_name(use.writes.name + ".sh").write_bytes(b"#!/bin/sh\n")
    shared.ended(use, ok, now)


def test_the_first_records_the_others_replay_after_it_ends(tmp_path: Path) -> None:
    shared = make(tmp_path)
    key = sb.batch_key(PATHS, A, argv(A), LISTED)
    first = shared.use(key, argv(A), b"/srv/www", 0.0)
    assert first.writes is not None and first.plain == argv(A)
    during = shared.use(key, argv(B), b"/srv/www", 0.5)
    assert not during.shared and during.argv == argv(B)  # not until it is whole
    finish_writing(shared, first)
    after = shared.use(key, argv(B), b"/srv/www", 1.5)
    assert after.shared and after.writes is None
    assert after.argv == sb.read_argv(argv(B), first.writes)
    assert after.plain == argv(B)


def test_a_failed_recording_is_removed_and_the_next_target_records(tmp_path: Path) -> None:
    shared = make(tmp_path)
    key = sb.batch_key(PATHS, A, argv(A), LISTED)
    first = shared.use(key, argv(A), b"/srv/www", 0.0)
    finish_writing(shared, first, ok=False)
    assert list(tmp_path.iterdir()) == []
    assert shared.use(key, argv(B), b"/srv/www", 1.0).writes is not None


def test_a_failed_replay_drops_the_batch(tmp_path: Path) -> None:
    shared = make(tmp_path)
    key = sb.batch_key(PATHS, A, argv(A), LISTED)
    finish_writing(shared, shared.use(key, argv(A), b"/srv/www", 0.0))
    replay = shared.use(key, argv(B), b"/srv/www", 1.0)
    shared.failed(replay)
    assert list(tmp_path.iterdir()) == []
    assert shared.use(key, argv(B), b"/srv/www", 1.0).writes is not None


def test_a_batch_is_replayed_only_while_its_names_keep_their_version(tmp_path: Path) -> None:
    # the same names changed again (a large file appended to): the
    # earlier recording must never be replayed for the later change
    source = Source()
    shared = make(tmp_path, source)
    key = sb.batch_key(PATHS, A, argv(A), LISTED)
    first = shared.use(key, argv(A), b"/srv/www", 0.0)
    finish_writing(shared, first)
    source.version = ((1, 2, 0o100644, 20, 6, 6),)
    second = shared.use(key, argv(B), b"/srv/www", 1.0)
    assert second.writes is not None and second.writes != first.writes  # a new recording
    assert first.writes is not None and not first.writes.exists()
    finish_writing(shared, second, now=2.0)
    assert shared.use(key, argv(A), b"/srv/www", 2.0).argv == sb.read_argv(argv(A), second.writes)
    source.version = ((1, 2, 0o100644, 20, 6, 7),)  # a chmod, a same-size rewrite: the ctime
    assert shared.use(key, argv(B), b"/srv/www", 3.0).writes is not None


def test_too_large_or_unsettled_names_are_sent_plainly(tmp_path: Path) -> None:
    key = sb.batch_key(PATHS, A, argv(A), LISTED)
    source = Source()
    source.version = None  # the listed files add up to more, or one just changed
    big = make(tmp_path, source)
    assert not big.use(key, argv(A), b"/srv/www", 0.0).shared
    assert not big.use(key, argv(B), b"/srv/www", 0.1).shared
    assert list(tmp_path.iterdir()) == []
    source = Source()
    shared = make(tmp_path, source)
    first = shared.use(key, argv(A), b"/srv/www", 0.0)
    assert first.writes is not None
    with open(first.writes, "wb") as fh:  # grew past the bound while it was sent
        fh.truncate(sb.MAX_BYTES + 1)
    shared.ended(first, True, 1.0)
    assert list(tmp_path.iterdir()) == []
    source.version = None  # as it now is: too large
    assert not shared.use(key, argv(B), b"/srv/www", 1.0).shared


def test_batches_expire_and_at_most_keep_are_kept(tmp_path: Path) -> None:
    shared = make(tmp_path)
    uses = []
    for i in range(sb.KEEP + 1):
        listed = b"n%d\0" % i
        use = shared.use(sb.batch_key(PATHS, A, argv(A), listed), argv(A), b"/", float(i))
        finish_writing(shared, use, now=float(i))
        uses.append(use)
    assert uses[0].writes is not None and not uses[0].writes.exists()  # the oldest went
    assert len(list(tmp_path.glob("*.batch"))) == sb.KEEP
    shared.expire(sb.KEEP + sb.TTL + 1)
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_a_killed_syncer_are_removed_and_clear_removes_all(tmp_path: Path) -> None:
    (tmp_path / "shared-9.batch").write_bytes(b"old")
    (tmp_path / "shared-9.batch.sh").write_bytes(b"old")
    (tmp_path / "www-0-paths.list").write_bytes(b"kept")
    shared = make(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["www-0-paths.list"]
    finish_writing(shared, shared.use(sb.batch_key(PATHS, A, argv(A), LISTED), argv(A),
                                      b"/", 0.0))
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
    listed = files_from([b"d/f", b"g", b"d", b"link/big", b"gone", b""])
    old = time.time_ns() - 10**10  # changed 10 s ago: settled
    for p in (root / "d" / "f", root / "g", root / "d"):
        os.utime(p, ns=(old, old))
    rootb = os.fsencode(root)
    young, wait = sb.versions_of(rootb, listed, 1_000)  # just made: ctimes too young
    assert young is None and 0 < wait <= SETTLE
    time.sleep(wait + 0.01)
    v, wait = sb.versions_of(rootb, listed, 1_000)
    assert wait == 0.0
    assert v is not None and len(v) == 6
    assert v[3] is None and v[4] is None  # through a symlink, and gone: nothing there
    f, root_version = v[0], v[5]
    assert f is not None and f[3] == 100 and f[4] == old
    assert root_version is not None and root_version[1] == os.stat(root).st_ino
    assert sb.versions_of(rootb, listed, 120) == (None, 0.0)  # 150 bytes: past the limit
    os.chmod(root / "g", 0o600)  # the ctime moves: another version (once settled)
    time.sleep(SETTLE + 0.05)
    assert sb.versions_of(rootb, listed, 1_000)[0] not in (None, v)


def test_a_recording_that_never_ran_or_was_dropped_is_released(tmp_path: Path) -> None:
    shared = make(tmp_path)
    key = sb.batch_key(PATHS, A, argv(A), LISTED)
    assert key is not None
    first = shared.use(key, argv(A), b"/", 0.0)
    shared.ended(first, False, 0.0)  # could not be spawned
    assert not shared.writing(key)
    second = shared.use(key, argv(B), b"/", 0.0)
    assert second.writes is not None
    # evicted while it was recorded, then recorded again by another target:
    # the first recording's end must not finish the second's entry
    for i in range(sb.KEEP):
        shared.use(sb.batch_key(PATHS, A, argv(A), b"o%d\0" % i), argv(A), b"/", 0.1)
    third = shared.use(key, argv(A), b"/", 0.2)
    assert third.writes is not None
    finish_writing(shared, second, now=0.3)
    assert shared.writing(key) and not second.writes.exists()
    finish_writing(shared, third, now=0.4)
    assert not shared.writing(key)
    assert shared.use(key, argv(B), b"/", 0.5).argv == sb.read_argv(argv(B), third.writes)


def test_use_without_a_key_is_the_plain_run(tmp_path: Path) -> None:
    use = make(tmp_path).use(None, argv(A), b"/", 0.0)
    assert use == sb.Use(argv(A), argv(A)) and not use.shared


def test_a_step_may_wait_for_the_recording_of_its_batch(tmp_path: Path) -> None:
    shared = make(tmp_path)
    key = sb.batch_key(PATHS, A, argv(A), LISTED)
    assert key is not None
    first = shared.use(key, argv(A), b"/", 0.0, wait=True)
    assert first.writes is not None and not first.waits
    waiting = shared.use(key, argv(B), b"/", 0.1, wait=True)
    assert waiting.waits == 0.1 + sb.WAIT and waiting.key == key and shared.writing(key)
    assert not shared.due(key, 0.2)
    assert not shared.use(key, argv(B), b"/", 0.2).shared  # waited long enough: plainly
    finish_writing(shared, first)
    assert not shared.writing(key) and shared.due(key, 1.0)
    again = shared.use(key, argv(B), b"/", 1.5, wait=True)
    assert not again.waits and again.argv == sb.read_argv(argv(B), first.writes)


def test_files_a_moment_too_young_are_waited_for_then_recorded(tmp_path: Path) -> None:
    # a burst's last files were written just before its batch: rather than
    # send every target plainly, the steps wait until they can be sure
    source = Source()
    source.version, source.young = None, 0.04
    shared = make(tmp_path, source)
    key = sb.batch_key(PATHS, A, argv(A), LISTED)
    assert key is not None
    assert not shared.use(key, argv(A), b"/", 0.0).shared  # may not wait: plainly
    first = shared.use(key, argv(A), b"/", 0.0, wait=True)
    assert first.waits == pytest.approx(0.04) and first.argv == argv(A)
    other = shared.use(key, argv(B), b"/", 0.01, wait=True)
    assert other.waits == pytest.approx(0.04) and not shared.due(key, 0.02)
    assert shared.due(key, 0.05)
    source.version, source.young = ((1, 2, 0o100644, 10, 5, 5),), 0.0
    writer = shared.use(key, argv(A), b"/", 0.05, wait=True)
    assert writer.writes is not None
    assert shared.use(key, argv(B), b"/", 0.06, wait=True).waits == 0.06 + sb.WAIT
    source.version, source.young = None, 2.0  # a coarse file system: not soon
    other_key = sb.batch_key(PATHS, A, argv(A), b"./other\0")
    assert not shared.use(other_key, argv(A), b"/", 0.1, wait=True).waits
