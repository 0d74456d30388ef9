"""The bench records the filesystem its trees live on: the mount holding a
path is the deepest one at or above it, and ext4 says whether it keeps a
journal (without one, creating a file under churn costs both tools ten
times as much)."""

from __future__ import annotations

from pathlib import Path

import pytest

import bench.machine as machine

MOUNTINFO = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 0:25 / /dev/shm rw - tmpfs tmpfs rw
41 22 7:0 / /mnt/bench\\040trees rw - ext4 /dev/loop0 rw
42 22 7:1 / /mnt/bench rw - xfs /dev/loop1 rw
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
    ("/dev/shmem", ("/", "ext4", "/dev/vda")),  # a prefix of the name is not inside
    ("/mnt/bench trees/a", ("/mnt/bench trees", "ext4", "/dev/loop0")),
    ("/mnt/bench/a", ("/mnt/bench", "xfs", "/dev/loop1")),
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
    assert machine.filesystem(Path("/mnt/bench/x")) == "xfs /dev/loop1 on /mnt/bench"


def test_this_machines_filesystems_are_named() -> None:
    """No fakes: a tmpfs is a tmpfs, and the journal check answers for the
    root filesystem without failing."""
    if Path("/dev/shm").is_dir():
        assert machine.filesystem(Path("/dev/shm")).startswith("tmpfs ")
    assert machine.filesystem(Path("/")).split()[0] != "?"
