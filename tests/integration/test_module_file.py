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

Played twice: by root against a root key (the mount namespace made for
the module), and by a throw-away account against its own key (the user
namespace the account enters, with its mount namespace). Real parts: rsync
in daemon mode over a remote-shell stand-in that runs ``syncsup-target
ROOT`` as an sshd forced command would.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import select
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from inotify_simple import INotify, flags

from syncsup.target._confine import PRIVATE_MOUNTPOINTS
from tests.helpers.attack import SYSTEM_PYTHON, make_site, public_dir, remove_public
from tests.helpers.procs import end_account

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="root plays the attacks (a root key, useradd)")

# Runs inside single quotes in a shell script: never a quote in it.
SERVE = """
import sys
import syncsup.target._daemon as d
chose = d.private_dir
if sys.argv[2] == "control":
    chose = lambda keep: None  # the module in a temporary directory
def private_dir(keep):
    # where the module went, for the test to check: a candidate mountpoint
    point = chose(keep)
    with open(sys.argv[4], "a") as log:
        log.write(f"{point}\\n")
    return point
d.private_dir = private_dir
# rsync connection limit counted in a lock directory of this test alone:
# the other root transfers of the suite (16 at once) share the default one.
d.lock_dir = lambda: sys.argv[3]
from syncsup.target._command import main
sys.exit(main([sys.argv[1]]))
"""
assert "'" not in SERVE


def test_every_candidate_mountpoint_sits_directly_below_the_root() -> None:
    """Only a process that may write "/" can rename such a directory: an
    account could rename one it may write (its home, /var/tmp, a temporary
    directory) and put a directory of its own at the path, which the
    namespace's path lookups would then find instead of the tmpfs."""
    assert all(os.path.dirname(p) == "/" for p in PRIVATE_MOUNTPOINTS)


def _chosen(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


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
    """Renames ``planted`` over every ``rsyncd.conf`` written in anything
    new in ``top`` (the temporary directory), or in any of the directories
    a private tmpfs may be mounted on, as this process sees them; and
    records every mount that appears on one of those directories in this
    namespace while it runs: the table is read again at every change the
    kernel reports, so a mount gone before the end still counts (one made
    and undone between two reads would not)."""

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
        top = ino.add_watch(self.top, flags.CREATE)
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
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
            elif ev.wd == top:  # anything made in the temporary directory
                self.dirs_seen += 1
                path = os.path.join(self.top, ev.name)
                try:
                    dirs[ino.add_watch(path, flags.CLOSE_WRITE)] = path
                except OSError:
                    pass


def _push(src: Path, rsh: Path, codes: list[int], n: int, until: Path | None) -> None:
    """``n`` transfers of ``src`` over ``rsh``, each with new content (a new
    size: no quick-check skip), their exit codes appended to ``codes``;
    stopping early once ``until`` exists."""
    for i in range(n):
        (src / "f").write_text("x" * (i + 1))
        r = subprocess.run(["rsync", "-a", "--no-devices", "-e", shlex.quote(str(rsh)),
                            f"{src}/", "x::syncsup/"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=60)
        codes.append(r.returncode)
        if until is not None and until.exists():
            return


def _transfers(tmp_path: Path, mode: str,
               n: int) -> tuple[Path, Path, list[int], Attacker, list[str]]:
    """``n`` transfers under attack (the control: until the planted module
    ran, at most ``n``)."""
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
    chosen = tmp_path / "chosen"
    q = shlex.quote
    rsh.write_text("#!/bin/sh\n"
                   "shift\n"  # the host; the rest is the request, as sshd would give it
                   'export SSH_ORIGINAL_COMMAND="$*"\n'
                   f"export TMPDIR={q(str(tmp))}\n"
                   f"exec {q(sys.executable)} -P -c '{SERVE}' {q(str(root))} {mode} "
                   f"{q(str(locks))} {q(str(chosen))}\n")
    rsh.chmod(0o755)
    planted = ("use chroot = no\n[syncsup]\n"
               f"    path = {root}\n    read only = no\n    uid = 0\n    gid = 0\n"
               f'    early exec = /bin/sh -c "echo pwned >> {mark}"\n')
    attacker = Attacker(str(tmp), planted)
    attacker.start()
    codes: list[int] = []
    try:
        _push(src, rsh, codes, n, until=mark if mode == "control" else None)
    finally:
        attacker.stop.set()
        attacker.join(10)
    return root, mark, codes, attacker, _chosen(chosen)


def test_the_module_is_out_of_reach_of_the_accounts_other_processes(tmp_path: Path) -> None:
    """Out of reach by any path. A process that may ptrace syncsup-target
    or rsync still reaches the tmpfs through /proc/PID/root: such a process
    controls the account already (docs/security.md says so)."""
    root, mark, codes, attacker, chosen = _transfers(tmp_path, "private", 20)
    assert chosen and all(c in PRIVATE_MOUNTPOINTS for c in chosen), chosen
    assert not mark.exists(), f"the planted module ran: {mark.read_text()!r}"
    assert attacker.swaps == 0
    assert attacker.dirs_seen == 0, "the module went to a temporary directory"
    assert not attacker.mounts_seen, "the private tmpfs showed in this namespace"
    assert _mounts() == attacker.baseline, "the private tmpfs showed in this namespace"
    assert codes == [0] * 20
    assert (root / "f").read_text() == "x" * 20


def test_control_a_module_in_a_temporary_directory_is_replaced(tmp_path: Path) -> None:
    """Without the private mount the same attack wins: the test above can fail."""
    _root, mark, _codes, attacker, chosen = _transfers(tmp_path, "control", 50)
    assert attacker.dirs_seen > 0 and set(chosen) == {"None"}
    assert attacker.swaps > 0 and mark.exists()


# ------------------------------------------------ the same attack, unprivileged
# An account other than root has no mount namespace of its own to make: it
# enters a user namespace first (with its own mount namespace), and the
# private tmpfs is mounted there. The attacker is another process of that
# account, in the host's namespaces, run by the system interpreter (the
# test's may live under a private /root): inotify through ctypes, and the
# mount table polled, as above.
ATTACKER = r"""
import ctypes, os, select, struct, sys
top, planted_path, ready, stop, out, points = sys.argv[1:7]
points = points.split(":")
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_NONBLOCK)
def watch(path, mask):
    return libc.inotify_add_watch(fd, os.fsencode(path), mask)
def mounts():
    return {(f[0], f[4]) for f in (line.split() for line in open("/proc/self/mountinfo"))
            if f[4] in points}
CLOSE_WRITE, CREATE = 0x8, 0x100
top_wd = watch(top, CREATE)
dirs = {}
for p in points:
    if os.path.isdir(p) and not os.path.islink(p):
        wd = watch(p, CLOSE_WRITE)
        if wd >= 0:
            dirs[wd] = p
planted = open(planted_path).read()
baseline, seen, swaps, found, placed = mounts(), set(), 0, 0, []
table = open("/proc/self/mountinfo", "rb")
poller = select.poll()
poller.register(fd, select.POLLIN)
poller.register(table.fileno(), select.POLLPRI | select.POLLERR)
open(ready, "w").close()
while not os.path.exists(stop):
    for rfd, _ in poller.poll(100):
        if rfd == table.fileno():
            table.seek(0)
            table.read()
            seen |= mounts() - baseline
            continue
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            continue
        i = 0
        while i < len(data):
            wd, _mask, _cookie, n = struct.unpack_from("iIII", data, i)
            name = data[i + 16:i + 16 + n].rstrip(b"\0").decode(errors="replace")
            i += 16 + n
            if wd in dirs and name == "rsyncd.conf":
                conf = os.path.join(dirs[wd], name)
                tmp = os.path.join(dirs[wd], ".planted")
                try:
                    with open(tmp, "w") as f:
                        f.write(planted)
                    os.rename(tmp, conf)
                    swaps += 1
                    placed.append(conf)
                except OSError:
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass
            elif wd == top_wd:  # anything made in the temporary directory
                found += 1
                wd2 = watch(os.path.join(top, name), CLOSE_WRITE)
                if wd2 >= 0:
                    dirs[wd2] = os.path.join(top, name)
for conf in placed:
    try:
        os.unlink(conf)
    except OSError:
        pass
with open(out, "w") as f:
    f.write(f"{swaps} {found} {len(seen)}")
"""


@pytest.fixture
def account() -> Iterator[tuple[Path, int, int]]:
    """A throw-away account and a directory every user can traverse, owned
    by root (the account owns what it needs inside)."""
    if shutil.which("useradd") is None or shutil.which("setpriv") is None:
        pytest.skip("useradd and setpriv make the throw-away account")
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"{SYSTEM_PYTHON} runs syncsup-target as another account")
    base = public_dir("syncsup-modfile-")
    name = f"smf-{secrets.token_hex(4)}"
    try:
        subprocess.run(["useradd", "-M", "-d", str(base / "home"), "-s", "/bin/sh", name],
                       check=True, capture_output=True)
        pw = pwd.getpwnam(name)
        yield base, pw.pw_uid, pw.pw_gid
    finally:
        end_account(name, before_delete=lambda: remove_public(base))


def _account_transfers(base: Path, uid: int, gid: int, mode: str, n: int
                       ) -> tuple[Path, Path, list[int], tuple[int, int, int], list[str]]:
    """:func:`_transfers`, as the account."""
    site = make_site(base / "site")
    src = base / "src"
    src.mkdir()
    owned = {d: base / d for d in ("root", "tmp", "locks", "home", "attack")}
    for d in owned.values():
        d.mkdir(mode=0o700)
        os.chown(d, uid, gid)
    mark = owned["attack"] / "pwned"
    planted = owned["attack"] / "planted.conf"
    planted.write_text("use chroot = no\n[syncsup]\n"
                       f"    path = {owned['root']}\n    read only = no\n"
                       f'    early exec = /bin/sh -c "echo pwned >> {mark}"\n')
    script = owned["attack"] / "attacker.py"
    script.write_text(ATTACKER)
    for f in (planted, script):
        os.chown(f, uid, gid)
    ready, stop, out, chosen = (owned["attack"] / x for x in ("ready", "stop", "out", "chosen"))
    as_account = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    rsh = base / "rsh"
    q = shlex.quote
    rsh.write_text(
        "#!/bin/sh\n"
        "shift\n"  # the host; the rest is the request, as sshd would give it
        f'exec {" ".join(as_account)} /usr/bin/env -i PATH=/usr/bin:/bin '
        f"HOME={q(str(owned['home']))} TMPDIR={q(str(owned['tmp']))} "
        f"PYTHONPATH={q(str(site))} "
        f'SSH_ORIGINAL_COMMAND="$*" {SYSTEM_PYTHON} -P -c \'{SERVE}\' '
        f"{q(str(owned['root']))} {mode} {q(str(owned['locks']))} {q(str(chosen))}\n")
    rsh.chmod(0o755)
    attacker = subprocess.Popen(
        [*as_account, SYSTEM_PYTHON, "-I", str(script), str(owned["tmp"]), str(planted),
         str(ready), str(stop), str(out), ":".join(PRIVATE_MOUNTPOINTS)],
        stdin=subprocess.DEVNULL)
    codes: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert attacker.poll() is None and time.monotonic() < deadline, "no attacker"
            time.sleep(0.05)
        _push(src, rsh, codes, n, until=mark if mode == "control" else None)
    finally:
        stop.touch()
        try:
            attacker.wait(30)
        except subprocess.TimeoutExpired:
            attacker.kill()
            attacker.wait()
    assert out.exists(), f"the attacker ended without its counts (rc {attacker.returncode})"
    swaps, found, mounts_seen = (int(x) for x in out.read_text().split())
    return owned["root"], mark, codes, (swaps, found, mounts_seen), _chosen(chosen)


def test_an_accounts_module_is_out_of_reach_of_its_other_processes(
        account: tuple[Path, int, int]) -> None:
    base, uid, gid = account
    """As for root, by any path (not through /proc/PID/root). The mount
    table check cannot fail here (an account cannot mount in the host's
    namespace); it is kept so that both attackers are the same."""
    root, mark, codes, (swaps, found, mounts_seen), chosen = _account_transfers(
        base, uid, gid, "private", 20)
    assert chosen and all(c in PRIVATE_MOUNTPOINTS for c in chosen), chosen
    assert not mark.exists(), f"the planted module ran: {mark.read_text()!r}"
    assert swaps == 0
    assert found == 0, "the module went to a temporary directory"
    assert mounts_seen == 0, "the private tmpfs showed in the account's namespace"
    assert codes == [0] * 20
    assert (root / "f").read_text() == "x" * 20


def test_control_an_accounts_module_in_a_temporary_directory_is_replaced(
        account: tuple[Path, int, int]) -> None:
    """Without the private mount the same attack wins as the account: the
    test above can fail."""
    base, uid, gid = account
    _root, mark, _codes, (swaps, found, _mounts), chosen = _account_transfers(
        base, uid, gid, "control", 50)
    assert found > 0 and set(chosen) == {"None"}
    assert swaps > 0 and mark.exists()
