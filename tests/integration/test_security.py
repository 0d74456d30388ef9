"""Security (issue 6): a confined target key, private sockets, least privilege.

* ``syncsup-target ROOT`` as the forced command of the key in a real sshd's
  ``authorized_keys``: a shell, another command, reading back (``--sender``),
  ``..`` and symlink escapes, renames leaving ROOT and options outside the
  allow-list are all refused, and nothing outside ROOT changes; rsync and
  rsyncssh churn through that key still converge byte for byte, and a
  directory rename under rsyncssh keeps the target's inodes.
* A second local user reaching the control socket gets no answer, and the
  refusal is logged with its uid (SO_PEERCRED).
* An unprivileged user with only read access to the source runs the daemon.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import pwd
import random
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers.churn import HOSTILE, Churn, ChurnThread, assert_not_pwned
from tests.helpers.daemon import REPO, sync_entry, write_config
from tests.helpers.procs import assert_no_leftovers, kill_leftovers
from tests.helpers.sshd import Sshd
from tests.helpers.tree import find_named, snapshot, wait_converged

pytestmark = pytest.mark.timeout(300)

REFUSED = "syncsup-target: refused"
PROBE_FLAGS = "-logDtpre.iLsfxC"  # what an rsync 3.x client sends for -a


def b(p: os.PathLike | str | bytes) -> bytes:
    return os.fsencode(p)


# ======================================================= confined sshd
@pytest.fixture(scope="module")
def confined_sshd(tmp_path_factory):
    """A private sshd whose only key gets ``command="syncsup-target ROOT",restrict``
    (ROOT set per test by :func:`confine`)."""
    if not os.path.exists("/usr/sbin/sshd"):
        pytest.fail("openssh-server (/usr/sbin/sshd) is required for the confined-key tests")
    base = tmp_path_factory.mktemp("confined")
    # The forced command: the checkout's syncsup.target under this interpreter, so the
    # test does not depend on a shim or an install being on sshd's PATH.
    wrapper = base / "syncsup-target"
    wrapper.write_text("#!/bin/sh\n"
                       f"PYTHONPATH={shlex.quote(str(REPO))}\n"
                       "export PYTHONPATH\n"
                       f"exec {shlex.quote(sys.executable)} -P -m syncsup.target \"$@\"\n")
    os.chmod(wrapper, 0o755)
    s = Sshd(base / "sshd")
    s.start()
    s.target_command = wrapper  # type: ignore[attr-defined]
    yield s
    s.close()


def confine(sshd: Sshd, root: Path) -> None:
    """Rewrite authorized_keys: the key may only run ``syncsup-target ROOT``."""
    pub = Path(f"{sshd.identity_file}.pub").read_text().strip()
    cmd = f"{shlex.quote(str(sshd.target_command))} {shlex.quote(str(root))}"  # type: ignore[attr-defined]
    assert '"' not in cmd and "\\" not in cmd
    sshd.authorized_keys.write_text(f'command="{cmd}",restrict {pub}\n')
    os.chmod(sshd.authorized_keys, 0o600)


def ssh_run(sshd: Sshd, *remote: str, stdin: bytes = b"", extra: tuple[str, ...] = ()):
    argv = sshd.ssh_argv(*remote)
    argv[1:1] = list(extra)
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=60)


def rsync_e(sshd: Sshd) -> str:
    """rsync's ``-e`` for the confined key."""
    return shlex.join(sshd.ssh_argv()[:-1])  # without the login


@pytest.fixture
def world(tmp_path: Path, confined_sshd: Sshd):
    """ROOT (the mirror the key is confined to) beside ``outside`` (must never change),
    a symlink ROOT/link -> outside, and a file ROOT/a for rename attempts."""
    w = tmp_path / "world"
    root = w / "root"
    outside = w / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret data")
    (root / "a").write_bytes(b"file a")
    (root / "sub" / "b").write_bytes(b"file b")
    os.symlink(outside, root / "link")
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "escaped").write_bytes(b"written by the confined key")
    (payload / "secret").write_bytes(b"overwritten by the confined key")
    confine(confined_sshd, root)
    before = snapshot(w)
    yield {"w": w, "root": root, "outside": outside, "payload": payload, "before": before}
    assert_no_leftovers(tmp_path)


def assert_world_unchanged(world: dict, tmp_path: Path) -> None:
    after = snapshot(world["w"])
    assert after == world["before"], (
        "the confined key changed the target:\n"
        + "\n".join(sorted(repr(k) for k in set(after) ^ set(world["before"]))
                    or [repr(k) for k in after if after[k] != world["before"].get(k)]))
    for name in (b"pwned", b"escaped"):
        hits = find_named([tmp_path], name)
        hits = [h for h in hits if not h.startswith(b(world["payload"]) + b"/")]
        assert not hits, f"{name!r} appeared outside the payload: {hits!r}"
    assert_not_pwned(tmp_path)


def _refused(r: subprocess.CompletedProcess, what: str) -> None:
    err = r.stderr.decode(errors="replace")
    assert r.returncode != 0, f"{what}: exit 0 (not refused); stderr: {err}"
    assert REFUSED in err, f"{what}: exit {r.returncode} but no {REFUSED!r} on stderr: {err}"


# --------------------------------------------------------- what is allowed
def test_confined_key_allows_only_what_syncsup_needs(world, confined_sshd, tmp_path):
    sshd, root = confined_sshd, world["root"]
    r = ssh_run(sshd, "true")
    assert r.returncode == 0, r.stderr
    r = ssh_run(sshd, "rsync", "--version")
    assert r.returncode == 0 and b"rsync" in r.stdout, r.stderr
    # a push into ROOT works (the confined key is usable at all)
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "new").write_bytes(b"new data")
    r = subprocess.run(["rsync", "-a", "-e", rsync_e(sshd), f"{inside}/",
                        f"{sshd.user}@{sshd.host}:{root}/sub/"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (root / "sub" / "new").read_bytes() == b"new data"
    # and so does the rename replay inside ROOT
    r = ssh_run(sshd, f"cd -- {shlex.quote(str(root))} && xargs -0 -r -n 2 mv -f -T --",
                stdin=b"a\0sub/renamed a\0")
    assert r.returncode == 0, r.stderr
    assert (root / "sub" / "renamed a").read_bytes() == b"file a"
    assert not (root / "a").exists()
    assert (world["outside"] / "secret").read_bytes() == b"secret data"
    assert sorted(os.listdir(world["outside"])) == ["secret"]


# ---------------------------------------------------------- what is refused
ATTEMPTS = {
    # a shell, fed commands on stdin
    "shell": ("sh", b"touch {outside}/pwned\n"),
    "bash -c": ("bash -c 'touch {outside}/pwned'", b""),
    "login shell (no command)": (None, b"touch {outside}/pwned\n"),
    "cat /etc/passwd": ("cat /etc/passwd", b""),
    "id": ("id", b""),
    "rm -rf ROOT": ("rm -rf {root}", b""),
    "rm -rf outside": ("rm -rf {outside}", b""),
    "command chained to an allowed one": ("rsync --version; touch {outside}/pwned", b""),
    "true && ...": ("true && touch {outside}/pwned", b""),
    # rsync reading the target back
    "rsync --sender": (f"rsync --server --sender {PROBE_FLAGS} . {{root}}/", b""),
    # rsync writing out of ROOT
    "rsync .. escape": (f"rsync --server {PROBE_FLAGS} . {{root}}/../outside", b""),
    "rsync .. escape (deeper)": (f"rsync --server {PROBE_FLAGS} . {{root}}/sub/../../outside/x",
                                 b""),
    "rsync absolute outside": (f"rsync --server {PROBE_FLAGS} . {{outside}}/", b""),
    "rsync symlink escape": (f"rsync --server {PROBE_FLAGS} . {{root}}/link/", b""),
    "rsync symlink escape (new path below)": (
        f"rsync --server {PROBE_FLAGS} . {{root}}/link/new/deeper", b""),
    "rsync option outside the allow-list": (
        f"rsync --server --log-file={{outside}}/pwned {PROBE_FLAGS} . {{root}}/", b""),
    "rsync --rsync-path": (f"rsync --server --rsync-path=sh {PROBE_FLAGS} . {{root}}/", b""),
    # rename replays leaving ROOT
    "rename with ../ names": ("cd -- {root} && xargs -0 -r -n 2 mv -f -T --",
                              b"a\0../escaped\0"),
    "rename with ../ source": ("cd -- {root} && xargs -0 -r -n 2 mv -f -T --",
                               b"../outside/secret\0stolen\0"),
    "rename with an absolute name": ("cd -- {root} && xargs -0 -r -n 2 mv -f -T --",
                                     b"a\0{outside}/escaped\0"),
    "rename in a directory outside ROOT": (
        "cd -- {root}/../outside && xargs -0 -r -n 2 mv -f -T --", b"secret\0escaped\0"),
    "rename in the symlinked directory": (
        "cd -- {root}/link && xargs -0 -r -n 2 mv -f -T --", b"secret\0escaped\0"),
    "rename with another program": ("cd -- {root} && xargs -0 -r -n 2 rm -rf --",
                                    b"a\0sub\0"),
}


@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_confined_key_refuses(attempt, world, confined_sshd, tmp_path):
    command, stdin = ATTEMPTS[attempt]
    fmt = {"root": world["root"], "outside": world["outside"]}
    stdin = stdin.replace(b"{outside}", b(world["outside"]))
    if command is None:
        r = ssh_run(confined_sshd, stdin=stdin, extra=("-T",))
    else:
        r = ssh_run(confined_sshd, command.format(**fmt), stdin=stdin)
    _refused(r, attempt)
    if attempt == "cat /etc/passwd":
        assert b"root:" not in r.stdout
    if attempt == "id":
        assert b"uid=" not in r.stdout
    assert_world_unchanged(world, tmp_path)


def test_confined_key_sftp_subsystem_is_refused(world, confined_sshd, tmp_path):
    """sftp asks for a subsystem, which the forced command replaces (sshd sends no
    stderr for a subsystem, so only the outcome is checked)."""
    r = ssh_run(confined_sshd, "sftp", extra=("-s",))
    assert r.returncode != 0
    if shutil.which("sftp"):
        sshd = confined_sshd
        batch = tmp_path / "batch"
        batch.write_text(f"put {world['payload']}/escaped {world['outside']}/escaped\n"
                         f"get {world['outside']}/secret {tmp_path}/back-secret\n")
        argv = ["sftp", "-b", str(batch), "-P", str(sshd.port), "-i", str(sshd.identity_file)]
        for o in [*sshd.ssh_options, "ConnectTimeout=5"]:
            argv += ["-o", o]
        r = subprocess.run([*argv, f"{sshd.user}@{sshd.host}"], capture_output=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode != 0, r.stdout + r.stderr
        assert not (tmp_path / "back-secret").exists()
    assert_world_unchanged(world, tmp_path)


def test_confined_key_rename_through_a_symlink_does_not_leave_root(world, confined_sshd,
                                                                  tmp_path):
    """A well-formed rename whose path crosses the symlink ROOT/link: the replay
    may not follow it (O_NOFOLLOW), so outside/ is untouched (exit non-zero like xargs
    with a failed mv)."""
    root = world["root"]
    r = ssh_run(confined_sshd, f"cd -- {root} && xargs -0 -r -n 2 mv -f -T --",
                stdin=b"a\0link/escaped\0link/secret\0stolen\0")
    assert r.returncode != 0, r.stderr
    assert_world_unchanged(world, tmp_path)


# a real rsync client doing what a stolen key would try
RSYNC_ATTEMPTS = {
    "push through ..": ("push", "{root}/../outside/"),
    "push through the symlink": ("push", "{root}/link/"),
    "push to an absolute path outside": ("push", "{outside}/"),
    "pull the mirror back": ("pull", "{root}/"),
    "pull outside": ("pull", "{outside}/"),
    "remote rsync-path is a shell": ("rsync-path", "{root}/"),
}


@pytest.mark.parametrize("attempt", list(RSYNC_ATTEMPTS))
def test_confined_key_refuses_rsync_client(attempt, world, confined_sshd, tmp_path):
    sshd = confined_sshd
    how, path = RSYNC_ATTEMPTS[attempt]
    remote = f"{sshd.user}@{sshd.host}:" + path.format(root=world["root"],
                                                      outside=world["outside"])
    back = tmp_path / "back"
    back.mkdir()
    argv = ["rsync", "-a", "-e", rsync_e(sshd)]
    if how == "pull":
        argv += [remote, f"{back}/"]
    elif how == "push":
        argv += [f"{world['payload']}/", remote]
    else:
        argv += [f"--rsync-path=touch {world['outside']}/pwned; rsync",
                 f"{world['payload']}/", remote]
    r = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    _refused(r, attempt)
    assert os.listdir(back) == [], "the confined key read files back"
    assert_world_unchanged(world, tmp_path)


# =============================================== churn through the confined key
def _confined_sync(sshd: Sshd, src: Path, dst: Path, mode: str, delay: float) -> dict:
    return sync_entry(src, [sshd.target(dst)], mode=mode, delay=delay,
                      ssh={**sshd.ssh_config(), "confined": True})


def _assert_key_still_confined(sshd: Sshd) -> None:
    r = ssh_run(sshd, "id")
    _refused(r, "id after the churn")


@pytest.mark.parametrize("mode,seed", [("rsync", 61), ("rsyncssh", 62)])
def test_churn_through_confined_key_converges(mode, seed, tmp_path, src, dst, confined_sshd,
                                              daemon_factory):
    confine(confined_sshd, dst)
    s = b(src)
    for i, n in enumerate(HOSTILE[:12]):
        with open(os.path.join(s, n), "wb") as f:
            f.write(n * 5)
        os.mkdir(os.path.join(s, n + b".d"))
        with open(os.path.join(s, n + b".d", n), "wb") as f:
            f.write(bytes([i]) * 50)
    c = Churn(src, seed, hostile_ratio=0.5)
    c.populate(n_files=60, n_dirs=10)
    d = daemon_factory([_confined_sync(confined_sshd, src, dst, mode, 0.3)])
    wait_converged(src, dst, timeout=150, on_timeout=d.describe)

    t = ChurnThread(c, 200, sleep_prob=0.4, max_sleep=0.02)
    t.start()
    t.join_checked(150)
    wait_converged(src, dst, timeout=150, on_timeout=d.describe)
    # renames (replayed on the target by syncsup-target under rsyncssh)
    pairs = list(itertools.pairwise(HOSTILE[:13]))
    for i, (a, z) in enumerate(pairs):
        old, new = os.path.join(s, a + b".d"), os.path.join(s, b"%d-" % i + z + b".moved")
        if os.path.lexists(old) and not os.path.lexists(new):
            os.rename(old, new)
    wait_converged(src, dst, timeout=150, on_timeout=d.describe)
    assert not [t for t in d.targets() if t.get("state") == "failed"], d.describe()
    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, src, dst)
    _assert_key_still_confined(confined_sshd)


def _inodes(root: Path) -> dict[bytes, int]:
    r = b(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(r):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, r)] = os.lstat(p).st_ino
    return out


def test_rsyncssh_directory_rename_through_confined_key_keeps_inodes(
        tmp_path, src, dst, confined_sshd, daemon_factory):
    confine(confined_sshd, dst)
    big = src / "big"
    (big / "sub").mkdir(parents=True)
    (src / "elsewhere").mkdir()
    rng = random.Random(63)
    for i in range(24):
        where = big / "sub" if i % 4 == 0 else big
        (where / f"part-{i:02d}.bin").write_bytes(rng.randbytes(256 * 1024))
    d = daemon_factory([_confined_sync(confined_sshd, src, dst, "rsyncssh", 0)])
    wait_converged(src, dst, timeout=150, on_timeout=d.describe)
    d.wait_idle(120)
    before = {k: v for k, v in _inodes(dst).items() if k.startswith(b"big/")}
    assert len(before) == 25

    new_rel = b"elsewhere/-renamed big $(touch pwned)"
    os.rename(big, os.path.join(b(src), new_rel))
    wait_converged(src, dst, timeout=150, on_timeout=d.describe)
    after = _inodes(dst)
    moved = {b"big/" + k[len(new_rel) + 1:]: v for k, v in after.items()
             if k.startswith(new_rel + b"/")}
    assert set(moved) == set(before)
    resent = sorted(k for k in before if moved[k] != before[k])
    assert not resent, (
        f"{len(resent)} of {len(before)} entries got new inodes on the target: the rename "
        f"was not replayed through syncsup-target: {resent[:5]}\n{d.log_tail(40)}")
    d.stop()
    assert_no_leftovers(tmp_path)
    assert_not_pwned(tmp_path, src, dst)
    _assert_key_still_confined(confined_sshd)


# ====================================================== other local users
@pytest.fixture
def other_user():
    """A throw-away system user (uid, gid, name); deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating a second local user needs root")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel are not installed")
    name = f"syncsup-t-{secrets.token_hex(4)}"
    r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        name], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"useradd failed: {r.stderr.strip()}")
    pw = pwd.getpwnam(name)
    try:
        yield pw.pw_uid, pw.pw_gid, name
    finally:
        for pid in _pids_of_uid(pw.pw_uid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        r = subprocess.run(["userdel", name], capture_output=True, text=True)
        for _ in range(50):
            if r.returncode == 0:
                break
            time.sleep(0.2)  # its processes may take a moment to be reaped
            r = subprocess.run(["userdel", name], capture_output=True, text=True)
        assert r.returncode == 0, f"userdel {name}: {r.stderr}"


def _pids_of_uid(uid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    out.append(int(d))
            except OSError:
                pass
    return out


@pytest.fixture
def public_dir():
    """A directory other users can traverse (pytest's tmp_path is 0700)."""
    p = Path(tempfile.mkdtemp(prefix="syncsup-sec-", dir="/tmp"))
    os.chmod(p, 0o711)
    yield p
    kill_leftovers(p)
    shutil.rmtree(p, ignore_errors=True)


def _run_as(uid: int, gid: int, argv: list[str], env: dict[str, str], **kw):
    return subprocess.run(argv, user=uid, group=gid, extra_groups=[], env=env,
                          capture_output=True, text=True, errors="replace",
                          stdin=subprocess.DEVNULL, **kw)


_DEPENDENCIES = ("zmq", "msgpack", "inotify_simple", "prometheus_client")


def python_for(uid: int, gid: int, home: Path, shared: Path) -> tuple[list[str], dict[str, str]]:
    """An interpreter (and environment) with which user ``uid`` can import syncsup
    from this checkout and its dependencies; skips the test if there is none.

    This interpreter (pyenv under /root) may not be reachable by other users; then
    the system python3 of the same version, with the dependencies copied to a
    folder the user can read (``shared``), is used."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    check = _run_as(uid, gid, ["/bin/ls", str(REPO / "syncsup")], env, timeout=30)
    if check.returncode != 0:
        pytest.skip(f"the checkout {REPO} is not readable by another user: {check.stderr.strip()}")
    probe = "import syncsup.proto, syncsup.cli, zmq, msgpack, inotify_simple"
    try:
        r = _run_as(uid, gid, [sys.executable, "-c", probe], env, timeout=60)
        if r.returncode == 0:
            return [sys.executable], env
        reasons = [f"{sys.executable}: {r.stderr.strip().splitlines()[-1:] or r.returncode}"]
    except OSError as exc:  # e.g. under a 0700 /root
        reasons = [f"{sys.executable}: {exc.strerror}"]
    system = "/usr/bin/python3"
    ver = subprocess.run([system, "-c", "import sys; print(sys.version_info[:2])"],
                         capture_output=True, text=True) if os.path.exists(system) else None
    if ver is None or ver.returncode != 0 or ver.stdout.strip() != str(sys.version_info[:2]):
        pytest.skip("no python this user can run syncsup with: " + "; ".join(reasons)
                    + f"; {system} is missing or not Python {sys.version_info[0]}."
                    f"{sys.version_info[1]}")
    site = shared / "site"
    site.mkdir(exist_ok=True)
    for mod in _DEPENDENCIES:
        spec = importlib.util.find_spec(mod)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        if spec.submodule_search_locations:
            shutil.copytree(origin.parent, site / origin.parent.name, dirs_exist_ok=True)
            libs = origin.parent.parent / f"py{mod}.libs"
            if libs.is_dir():  # auditwheel's bundled shared libraries (pyzmq.libs)
                shutil.copytree(libs, site / libs.name, dirs_exist_ok=True)
        else:
            shutil.copy2(origin, site / origin.name)
    for dirpath, dirnames, filenames in os.walk(site):
        for n in dirnames:
            os.chmod(os.path.join(dirpath, n), 0o755)
        for n in filenames:
            p = os.path.join(dirpath, n)
            os.chmod(p, os.stat(p).st_mode | 0o444 | (0o111 if n.endswith(".so") else 0))
    os.chmod(shared, 0o755)
    env["PYTHONPATH"] = f"{REPO}:{site}"
    r = _run_as(uid, gid, [system, "-c", probe], env, timeout=60)
    if r.returncode != 0:
        pytest.skip("no python this user can run syncsup with: " + "; ".join(reasons)
                    + f"; {system} with copied dependencies: {r.stderr.strip()[-300:]}")
    return [system], env


STATUS_CLIENT = r"""
import sys, zmq
from syncsup import proto
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.connect("ipc://" + sys.argv[1])
sock.send_multipart(proto.encode(proto.StatusRequest()))
if sock.poll(3000, zmq.POLLIN):
    msg = proto.decode(sock.recv_multipart())
    print("REPLY", type(msg).__name__)
else:
    print("NO-REPLY")
ctx.destroy(linger=0)
"""


def test_other_local_user_is_refused_on_the_control_socket(tmp_path, src, dst, other_user,
                                                           public_dir, daemon_factory):
    uid, gid, _name = other_user
    state = public_dir / "state"
    (src / "f").write_bytes(b"x")
    d = daemon_factory([sync_entry(src, [dst])],
                       settings_override={"state_dir": str(state), "log_level": "info"})
    # right after start: a private state_dir, private sockets
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    socks = sorted(p for p in state.iterdir() if stat.S_ISSOCK(os.lstat(p).st_mode))
    assert state / "control.sock" in socks, sorted(os.listdir(state))
    for p in socks:
        assert stat.S_IMODE(os.lstat(p).st_mode) == 0o600, f"{p.name} is not 0600"

    home = public_dir / "home"
    home.mkdir()
    os.chown(home, uid, gid)
    shared = public_dir / "shared"
    shared.mkdir()
    python, env = python_for(uid, gid, home, shared)
    client = shared / "status_client.py"
    client.write_text(STATUS_CLIENT)
    os.chmod(client, 0o644)
    os.chmod(shared, 0o755)
    control = state / "control.sock"

    # the client works: as root (our own daemon's user here) it gets an answer
    r = subprocess.run([*python, str(client), str(control)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.strip() == "REPLY StatusReply", r.stdout + r.stderr

    # a misconfigured permission lets the other user reach the socket: the peer uid
    # check must still refuse it
    os.chmod(state, 0o711)
    os.chmod(control, 0o666)
    r = _run_as(uid, gid, [*python, str(client), str(control)], env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "NO-REPLY", (
        f"uid {uid} got an answer from the control socket: {r.stdout}{r.stderr}")
    deadline = time.monotonic() + 30
    while not any("refused a message" in ln and f"uid {uid}" in ln
                  for ln in d.log_text().splitlines()) and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = [ln for ln in d.log_text().splitlines() if "refused a message" in ln]
    assert any(f"uid {uid}" in ln for ln in lines), (
        f"no logged refusal naming uid {uid}\n{d.log_tail(40)}")

    # our own status still works, and the daemon is fine
    st = d.status()
    assert st.get("syncs"), st
    wait_converged(src, dst, timeout=120, on_timeout=d.describe)
    os.chmod(control, 0o600)
    os.chmod(state, 0o700)
    d.stop()
    assert_no_leftovers(tmp_path)
    assert_no_leftovers(public_dir)


# ================================================= an unprivileged daemon
def test_unprivileged_user_with_read_access_runs_the_daemon(other_user, public_dir):
    uid, gid, _name = other_user
    base = public_dir / "unpriv"
    base.mkdir()
    os.chmod(base, 0o755)
    home = base / "home"
    for p in (home, base / "dst", base / "state", base / "cwd"):
        p.mkdir()
        os.chown(p, uid, gid)
    os.chmod(base / "state", 0o700)
    src = base / "src"  # root's, readable by all, writable by root only
    src.mkdir()
    os.chmod(src, 0o755)
    shared = base / "shared"
    shared.mkdir()
    python, env = python_for(uid, gid, home, shared)

    rng = random.Random(64)
    names = [b"plain", b"-leading-dash", b"$(touch pwned)", b"with space", b"new\nline",
             b"\xff\xfe", b"caf\xc3\xa9"]

    def write(rel: bytes, size: int) -> None:
        p = os.path.join(b(src), rel)
        with open(p, "wb") as f:
            f.write(rng.randbytes(size))
        os.chmod(p, 0o644)

    for i, n in enumerate(names):
        write(n + b"-%d" % i, rng.randint(0, 20000))
    os.mkdir(os.path.join(b(src), b"dir"), 0o755)
    write(b"dir/inner", 5000)

    config = base / "syncsup.toml"
    write_config(config, {
        "settings": {"state_dir": str(base / "state"), "log_level": "info"},
        "sync": [sync_entry(src, [base / "dst"], delay=0)],
    })
    os.chown(config, uid, gid)
    os.chmod(config, 0o644)
    log_path = base / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*python, "-m", "syncsup", "start", str(config)],
                                user=uid, group=gid, extra_groups=[], env=env,
                                cwd=base / "cwd", stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail() -> str:
        return log_path.read_bytes().decode(errors="replace")[-6000:]

    def status() -> dict | None:
        r = _run_as(uid, gid, [*python, "-m", "syncsup", "status", "--json", str(config)], env,
                    timeout=30)
        if r.returncode != 0:
            return None
        try:
            return json.loads(r.stdout)
        except json.JSONDecodeError:
            return None

    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"daemon exited {proc.returncode}\n{log_tail()}"
            st = status()
            ts = [t for s in (st or {}).get("syncs", []) for t in s.get("targets", [])]
            if ts and all(t.get("state") != "startup" for t in ts):
                break
            assert time.monotonic() < deadline, f"daemon not ready: {st}\n{log_tail()}"
            time.sleep(0.3)
        wait_converged(src, base / "dst", timeout=120, on_timeout=log_tail)

        # churn as the source's owner: creates, appends, renames, deletes, a new subtree
        for i in range(30):
            op = rng.choice(["create", "create", "append", "rename", "delete", "mkdir"])
            files = sorted(os.listdir(b(src)))
            files = [f for f in files if os.path.isfile(os.path.join(b(src), f))]
            if op == "create" or not files:
                write(rng.choice(names) + b"-c%d" % i, rng.randint(0, 30000))
            elif op == "append":
                with open(os.path.join(b(src), rng.choice(files)), "ab") as f:
                    f.write(rng.randbytes(1000))
            elif op == "rename":
                f = rng.choice(files)
                os.rename(os.path.join(b(src), f), os.path.join(b(src), b"mv-%d-" % i + f))
            elif op == "delete":
                os.unlink(os.path.join(b(src), rng.choice(files)))
            else:
                os.mkdir(os.path.join(b(src), b"d%d" % i), 0o755)
                write(b"d%d/in %d" % (i, i), rng.randint(0, 4000))
            if rng.random() < 0.3:
                time.sleep(0.02)
        wait_converged(src, base / "dst", timeout=120, on_timeout=log_tail)
        assert os.stat(base / "dst" / "dir" / "inner").st_uid == uid

        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon did not stop within 30s\n{log_tail()}") from None
        assert rc == 0, f"daemon exited {rc} after SIGTERM\n{log_tail()}"
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
    assert_no_leftovers(base)
    assert_not_pwned(base)
    assert not _pids_of_uid(uid), "processes of the unprivileged user are left"
