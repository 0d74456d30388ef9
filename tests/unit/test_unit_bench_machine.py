"""The bench records the filesystem its trees live on: the mount holding a
path is the deepest one at or above it (the later one where a point is
mounted twice), and ext4 says whether it keeps a journal (without one,
creating a file under churn costs both tools ten to sixty times as much)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import bench.machine as machine

# A parent listed after its child, optional fields before the separator,
# a point mounted twice, escapes in points and sources.
MOUNTINFO = """\
30 22 0:25 / /dev/shm rw shared:3 - tmpfs tmpfs rw
41 22 7:0 / /mnt/bench\\040trees rw - ext4 /dev/loop0 rw
42 22 7:1 / /mnt/bench rw shared:5 master:2 - xfs /dev/loop1 rw
43 42 7:2 / /mnt/bench rw - ext4 /dev/loop2 rw
44 22 0:40 / /mnt/tab\\011and\\134slash rw - fuse.x my\\040source rw
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
"""


@pytest.fixture
def mounts(monkeypatch: pytest.MonkeyPatch) -> None:
    real = machine._read
    monkeypatch.setattr(machine, "_read", lambda p: MOUNTINFO if p == "/proc/self/mountinfo"
                        else real(p))
    monkeypatch.setattr("os.path.realpath", lambda p: str(p))


@pytest.mark.parametrize(("path", "want"), [
    ("/", ("/", "ext4", "/dev/vda")),
    ("/tmp/x", ("/", "ext4", "/dev/vda")),
    ("/dev/shm", ("/dev/shm", "tmpfs", "tmpfs")),
    ("/dev/shm/a", ("/dev/shm", "tmpfs", "tmpfs")),
    ("/dev/shmem", ("/", "ext4", "/dev/vda")),  # a prefix of the name is not inside
    ("/mnt/bench trees/a", ("/mnt/bench trees", "ext4", "/dev/loop0")),
    ("/mnt/bench/a", ("/mnt/bench", "ext4", "/dev/loop2")),  # mounted twice: the later
    ("/mnt/tab\tand\\slash", ("/mnt/tab\tand\\slash", "fuse.x", "my source")),
])
def test_the_deepest_mount_at_or_above_a_path_holds_it(mounts: None, path: str,
                                                        want: tuple[str, str, str]) -> None:
    assert machine._mount_of(Path(path)) == want


def test_ext4_says_whether_it_has_a_journal(mounts: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for journal in (True, False, None):
        monkeypatch.setattr(machine, "_has_journal", lambda _p, j=journal: j)
        text = machine.filesystem(Path("/tmp"))
        assert text.startswith("ext4 /dev/vda on /")
        assert text.endswith({True: " (journal)", False: " (no journal)", None: "/"}[journal])
    assert machine.filesystem(Path("/mnt/bench/x")) == "ext4 /dev/loop2 on /mnt/bench"


@pytest.mark.parametrize(("device", "listing", "want"), [
    ("loop1", ["loop1-8"], True),
    ("loop1", ["loop10-8", "vda-8"], False),  # another device whose name starts alike
    ("dm-0", ["dm-0-8"], True),
    ("nvme0n1p2", [], False),
    ("vda", None, False),  # no /proc/fs/jbd2: no journal runs
    ("vda", PermissionError, None),
    (None, [], None),  # no name under /sys/dev/block (a btrfs subvolume, a tmpfs)
])
def test_a_journal_is_found_by_its_device_name(monkeypatch: pytest.MonkeyPatch,
                                               device: str | None,
                                               listing: list[str] | type | None,
                                               want: bool | None) -> None:
    def readlink(p: str) -> str:
        assert p.startswith("/sys/dev/block/")
        if device is None:
            raise FileNotFoundError(p)
        return f"../../devices/virtual/block/{device}"

    def listdir(p: str) -> list[str]:
        assert p == "/proc/fs/jbd2"
        if listing is None:
            raise FileNotFoundError(p)
        if isinstance(listing, type):
            raise listing(p)
        return listing

    monkeypatch.setattr(os, "readlink", readlink)
    monkeypatch.setattr(os, "listdir", listdir)
    assert machine._has_journal(Path("/")) is want


def test_this_machines_filesystems_are_named() -> None:
    """No fakes: whatever this machine mounts, the description names a type
    and a mount point without failing."""
    text = machine.filesystem(Path("/"))
    assert " on /" in text
    if os.path.ismount("/dev/shm"):
        assert machine.filesystem(Path("/dev/shm")).endswith(" on /dev/shm")
