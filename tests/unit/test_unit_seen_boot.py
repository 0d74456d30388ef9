"""The boot id where /proc/sys is hidden (the unit's ``ProcSubset=pid``): a
marker in the runtime directory, trusted only on a memory file system
(which a reboot empties), agreeing with the kernel's id where a daemon could
read it; any doubt gives "" (a recovery then compares as after a reboot)."""

from __future__ import annotations

from pathlib import Path

from syncsup import seen
from syncsup.seen import Seen, marker_boot_id
from syncsup.timings import Timings


def _mountinfo(tmp_path: Path, mounts: list[tuple[str, str]]) -> str:
    """A mount table (``/proc/self/mountinfo`` format) of (point, fstype)."""
    lines = [f"{20 + n} 1 0:{n} / {point.replace(' ', chr(92) + '040')} rw,relatime "
             f"shared:{n} - {fstype} {fstype} rw" for n, (point, fstype) in enumerate(mounts)]
    path = tmp_path / "mountinfo"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _run_dir(tmp_path: Path, name: str = "run") -> Path:
    d = tmp_path / name
    d.mkdir()
    return d


def test_a_marker_on_tmpfs_stands_for_the_boot(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    table = _mountinfo(tmp_path, [("/", "ext4"), (str(run), "tmpfs")])
    first = marker_boot_id(run, mountinfo=table)
    assert first and marker_boot_id(run, mountinfo=table) == first
    # a reboot empties the memory file system: another boot, another id
    (run / seen.MARKER).unlink()
    assert marker_boot_id(run, mountinfo=table) not in ("", first)


def test_the_kernel_id_wins_and_is_left_for_those_who_cannot_read_it(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    table = _mountinfo(tmp_path, [("/", "ext4"), (str(run), "tmpfs")])
    assert marker_boot_id(run, "k-123", mountinfo=table) == "k-123"
    assert marker_boot_id(run, mountinfo=table) == "k-123"
    # a marker made earlier without the kernel's id: the kernel's still wins
    assert marker_boot_id(run, "k-456", mountinfo=table) == "k-456"


def test_a_directory_that_survives_reboots_is_not_trusted(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    table = _mountinfo(tmp_path, [("/", "tmpfs"), (str(tmp_path), "ext4")])
    assert marker_boot_id(run, mountinfo=table) == ""
    assert not (run / seen.MARKER).exists()
    # the kernel's id is still the answer, but no marker goes on a disk
    assert marker_boot_id(run, "k-1", mountinfo=table) == "k-1"
    assert not (run / seen.MARKER).exists()


def test_the_innermost_mount_decides_and_escapes_are_read(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, "my run")
    table = _mountinfo(tmp_path, [("/", "tmpfs"), (str(tmp_path), "ext4"), (str(run), "ramfs")])
    assert marker_boot_id(run, mountinfo=table) != ""
    other = _run_dir(tmp_path, "my")  # a prefix of "my run" as text, not as a path
    assert marker_boot_id(other, mountinfo=table) == ""


def test_no_directory_no_table_or_a_bad_marker_give_unknown(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    table = _mountinfo(tmp_path, [(str(run), "tmpfs")])
    assert marker_boot_id(tmp_path / "missing", mountinfo=table) == ""
    assert marker_boot_id(run, mountinfo=str(tmp_path / "no-table")) == ""
    (run / seen.MARKER).write_text("")
    assert marker_boot_id(run, mountinfo=table) == ""


def test_one_marker_for_daemons_starting_together(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    table = _mountinfo(tmp_path, [(str(run), "tmpfs")])
    ids = {marker_boot_id(run, mountinfo=table) for _ in range(20)}
    assert len(ids) == 1 and "" not in ids
    assert [p.name for p in run.iterdir()] == [seen.MARKER], "temporary files left"


def test_cutoff_narrow_within_a_boot_wide_after_a_reboot(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    table = _mountinfo(tmp_path, [(str(run), "tmpfs")])
    boot = marker_boot_id(run, mountinfo=table)
    point = Seen(1000.0, boot, 10.0)
    t = Timings(seen_margin=3.0, reboot_margin=400.0)
    assert point.cutoff(Seen(2000.0, boot, 10.0), t) == 1000.0 - 3.0
    (run / seen.MARKER).unlink()
    after = Seen(2000.0, marker_boot_id(run, mountinfo=table), 10.0)
    assert point.cutoff(after, t) == 1000.0 - 400.0
