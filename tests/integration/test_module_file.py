"""The rsync module of a confined key's transfer cannot be replaced between
``syncsup-target`` writing it and rsync reading it.

rsync opens the module's file by its path. Any process of the same account
that can reach the directory holding it (code in the agent of another key
whose ROOT holds ``/tmp``, say) could rename a file of its own over it in
between, and a module's ``early exec`` runs a command as the account:
root's, for a root key. The attacker here is such a process: it watches
for the module's directory and file with inotify and renames a planted
module over the file the moment it is written. Against a module written
to a temporary directory (the control) it wins; against the module in a
tmpfs that only rsync's mount namespace sees, it never finds the file.

Real parts: rsync in daemon mode over a remote-shell stand-in that runs
``syncsup-target ROOT`` as an sshd forced command would.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from inotify_simple import INotify, flags

from syncsup.target._confine import PRIVATE_MOUNTPOINTS

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attack plays a root key")

# Runs inside single quotes in a shell script: never a quote in it.
SERVE = """
import sys
import syncsup.target._daemon as d
if sys.argv[2] == "control":
    d.private_dir = lambda keep: None  # the module in a temporary directory
# rsync connection limit counted in a lock directory of this test alone:
# the other root transfers of the suite (16 at once) share the default one.
d.lock_dir = lambda: sys.argv[3]
from syncsup.target._command import main
sys.exit(main([sys.argv[1]]))
"""


def _mounts() -> set[tuple[str, str]]:
    """This namespace's mounts exactly on the private tmpfs's candidate
    mountpoints (where :func:`private_dir` mounts), as (mount id, point).
    Only those: other tests running beside this one mount elsewhere (inside
    their own directories, the systemd proof's container root under
    /var/tmp)."""
    out = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if fields[4] in PRIVATE_MOUNTPOINTS:  # octal-escaped; the candidates need none
            out.add((fields[0], fields[4]))
    return out


class Attacker(threading.Thread):
    """Renames ``planted`` over every ``rsyncd.conf`` written in a new
    ``syncsup-target-*`` directory of ``top``, or in any of the directories
    a private tmpfs may be mounted on, as this process sees them; and
    records every mount that appears on one of those directories in this
    namespace while it runs, even one gone again before the end."""

    def __init__(self, top: str, planted: str) -> None:
        super().__init__(daemon=True)
        self.top, self.planted = top, planted
        self.stop = threading.Event()
        self.swaps = 0
        self.dirs_seen = 0
        self.baseline = _mounts()
        self.mounts_seen: set[tuple[str, str]] = set()
        self.planted_at: set[str] = set()  # removed again at the end

    def run(self) -> None:
        ino = INotify()
        top = ino.add_watch(self.top, flags.CREATE | flags.ONLYDIR)
        dirs: dict[int, str] = {}
        for point in PRIVATE_MOUNTPOINTS:
            if os.path.isdir(point) and not os.path.islink(point):
                dirs[ino.add_watch(point, flags.CLOSE_WRITE)] = point
        poller = select.poll()
        poller.register(ino.fileno(), select.POLLIN)
        with open("/proc/self/mountinfo", "rb") as table:
            poller.register(table.fileno(), select.POLLPRI | select.POLLERR)
            try:
                while not self.stop.is_set():
                    ready = {fd for fd, _ in poller.poll(100)}
                    if table.fileno() in ready:  # the mount table changed
                        table.seek(0)
                        table.read()  # re-arms the notification
                        self.mounts_seen |= _mounts() - self.baseline
                    if ino.fileno() in ready:
                        self._events(ino, top, dirs)
            finally:
                ino.close()
                for path in self.planted_at:
                    with contextlib.suppress(OSError):
                        os.unlink(path)

    def _events(self, ino: INotify, top: int, dirs: dict[int, str]) -> None:
        for ev in ino.read(timeout=0):
            if ev.wd in dirs and ev.name == "rsyncd.conf":
                tmp = os.path.join(dirs[ev.wd], ".planted")
                conf = os.path.join(dirs[ev.wd], "rsyncd.conf")
                try:
                    Path(tmp).write_text(self.planted)
                    os.rename(tmp, conf)
                    self.swaps += 1
                    self.planted_at.add(conf)
                except OSError:
                    pass
            elif ev.wd == top and ev.name.startswith("syncsup-target-"):
                self.dirs_seen += 1
                path = os.path.join(self.top, ev.name)
                try:
                    dirs[ino.add_watch(path, flags.CLOSE_WRITE)] = path
                except OSError:
                    pass


def _transfers(tmp_path: Path, mode: str, n: int) -> tuple[Path, Path, list[int], Attacker]:
    src, root = tmp_path / "src", tmp_path / "root"
    src.mkdir()
    root.mkdir()
    mark = tmp_path / "pwned"
    rsh = tmp_path / "rsh"
    # A temporary directory of this test's own: the control's module is
    # written there, where no other test's attacker watches (the two tests
    # may run at once).
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    rsh.write_text("#!/bin/sh\n"
                   "shift\n"  # the host; the rest is the request, as sshd would give it
                   'export SSH_ORIGINAL_COMMAND="$*"\n'
                   f"export TMPDIR={tmp}\n"
                   f"exec {sys.executable} -P -c '{SERVE}' {root} {mode} {locks}\n")
    rsh.chmod(0o755)
    planted = ("use chroot = no\n[syncsup]\n"
               f"    path = {root}\n    read only = no\n    uid = 0\n    gid = 0\n"
               f'    early exec = /bin/sh -c "echo pwned >> {mark}"\n')
    attacker = Attacker(str(tmp), planted)
    attacker.start()
    codes = []
    try:
        for i in range(n):
            (src / "f").write_text("x" * (i + 1))  # a new size each time: no quick-check skip
            r = subprocess.run(["rsync", "-a", "--no-devices", "-e", str(rsh), f"{src}/",
                                "x::syncsup/"], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=60)
            codes.append(r.returncode)
    finally:
        attacker.stop.set()
        attacker.join(10)
    return root, mark, codes, attacker


def test_the_module_is_out_of_reach_of_the_accounts_other_processes(tmp_path: Path) -> None:
    root, mark, codes, attacker = _transfers(tmp_path, "private", 20)
    assert not mark.exists(), f"the planted module ran: {mark.read_text()!r}"
    assert attacker.swaps == 0
    assert attacker.dirs_seen == 0, "the module went to a temporary directory"
    assert not attacker.mounts_seen, "the private tmpfs showed in this namespace"
    assert _mounts() == attacker.baseline, "the private tmpfs showed in this namespace"
    assert codes == [0] * 20
    assert (root / "f").read_text() == "x" * 20


def test_control_a_module_in_a_temporary_directory_is_replaced(tmp_path: Path) -> None:
    """Without the private mount the same attack wins: the test above can fail."""
    _root, mark, _codes, attacker = _transfers(tmp_path, "control", 20)
    assert attacker.swaps > 0 and mark.exists()
