"""Each layer of a confined target holds on its own.

The agent behind a confined key has three layers: the kernel
(``syncsup.target._kernel``: Landlock, seccomp, capabilities), the applier
(directory descriptors, ``O_NOFOLLOW`` at every step) and the schema of its
requests. These tests take the layers apart and attack each one alone:

* the kernel layer over a naive agent that joins paths as strings, follows
  every symlink and runs any Python it is sent (an agent whose code has
  failed completely): nothing outside ROOT changes, nothing is read back,
  nothing is started, no other process is touched. The same attacks without
  the kernel layer do escape (so the test can fail);
* the real applier with no kernel layer (a key without a forced command,
  which is served by descriptors alone): the request corpus reaches nothing
  outside ROOT;
* the real confined agent, over a real sshd, against the findings of a
  review: a crash whose traceback would import files the key planted at
  the interpreter's own paths, crashes by deep trees, NUL bytes and huge
  ids; and rsync's daemon: read-back through ``--files-from``, a fifo that
  would block it forever, a client that goes away.

Accounts: root (home outside ROOT), an account whose home is outside ROOT,
and accounts whose home is ROOT or inside it (the agent is refused there;
rsync's daemon serves them).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from tests.helpers.attack import (
    SECRET,
    SYSTEM_PYTHON,
    AgentSession,
    AttackSshd,
    World,
    frame,
    hello,
    make_world,
    replies,
    ssh_run,
)
from tests.helpers.daemon import REPO, sync_entry
from tests.helpers.procs import pids_of_uid
from tests.helpers.tree import b, nest, wait_converged

pytestmark = pytest.mark.timeout(300)

NAIVE = Path(__file__).resolve().parents[1] / "helpers" / "naive_agent.py"
MARK = b"PLANTED-CODE-RAN"
NOT_SERVED = b"syncsup-target: agent not served"


@pytest.fixture
def world(request, asshd):
    yield from make_world(getattr(request, "param", "root"), asshd)


# ------------------------------------------------------------ the naive agent
def _as_account(w: World):
    def become() -> None:
        if w.uid != 0:
            os.setgroups([])
            os.setgid(w.gid)
            os.setuid(w.uid)
    return become


def _naive(w: World, s: AttackSshd, kernel: bool) -> subprocess.Popen:
    script = s.public / "naive_agent.py"
    shutil.copyfile(NAIVE, script)
    os.chmod(script, 0o644)
    if w.uid == 0:
        spec = importlib.util.find_spec("msgpack")
        assert spec is not None and spec.origin is not None
        python, dirs = sys.executable, [str(REPO), str(Path(spec.origin).parents[1])]
    else:
        python, dirs = SYSTEM_PYTHON, [str(s.site)]
    argv = [python, "-I", "-S", "-B", str(script), str(w.root),
            *([] if kernel else ["--no-kernel"]), *dirs]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=_as_account(w), cwd="/")


def _ask(proc: subprocess.Popen, doc: dict) -> dict | None:
    """The answer, or None if the naive agent is gone (it exec'd a shell,
    say: only ever without the kernel layer)."""
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(frame(doc))
        proc.stdin.flush()
    except BrokenPipeError:
        return None
    head = proc.stdout.read(4)
    if len(head) < 4:
        return None
    return replies(head + proc.stdout.read(int.from_bytes(head, "big")))[0]


def _request_corpus(w: World) -> list[dict]:
    """What a key sends to an agent that trusts its requests: every way out
    of ROOT through a path."""
    out = str(w.outside).encode()
    m = {"mode": 0o644, "mtime": 10**18}
    return [
        {"op": "put", "path": b"link/escaped", "data": b"x", **m},
        {"op": "put", "path": b"rlink/secret", "data": b"x", **m},
        {"op": "put", "path": b"../outside/escaped", "data": b"x", **m},
        {"op": "put", "path": out + b"/escaped", "data": b"x", **m},
        {"op": "put", "path": b"L/../escaped", "data": b"x", **m},
        {"op": "mkdir", "path": b"link/newdir", **m},
        {"op": "symlink", "path": b"link/sl", "target": b"/", **m},
        {"op": "delete", "path": b"link/dir"},
        {"op": "delete", "path": b"L/inner"},
        {"op": "rename", "path": b"link/secret", "src": b"link/secret", "dst": b"stolen"},
        {"op": "rename", "path": b"a", "src": b"a", "dst": b"link/escaped"},
        {"op": "time", "path": b"link/secret", "mtime": 1},
        {"op": "chown", "path": b"link/secret", "uid": 4242, "gid": 4242},
        {"op": "chmod", "path": b"link/secret", "mode": 0o4777},
        {"op": "read", "path": b"link/secret"},
        {"op": "read", "path": b"rlink/secret"},
    ]


def _code_corpus(w: World, victim: int, port: int) -> list[tuple[str, str]]:
    """Python run inside the agent: (name, code). ``result`` goes back to
    the attacker."""
    out = str(w.outside)
    libc = "libc = ctypes.CDLL(None, use_errno=True)\n"
    shell = f"echo {MARK.decode()} > {out}/escaped"
    return [
        ("write outside", f"open({out!r} + '/escaped', 'wb').write(b'x')"),
        ("overwrite outside", f"open({out!r} + '/secret', 'r+b').write(b'PWNED')"),
        ("read outside", f"result = open({out!r} + '/secret', 'rb').read()"),
        ("read through a symlink", "result = open(ROOT + '/link/secret', 'rb').read()"),
        ("read the host", "result = open('/etc/passwd', 'rb').read()"),
        ("chmod by path", f"os.chmod({out!r} + '/secret', 0o4777)"),
        ("chown by path", f"os.chown({out!r} + '/secret', 4242, 4242)"),
        ("utime by path", f"os.utime({out!r} + '/secret', (1, 1))"),
        ("chmod through O_PATH", f"fd = os.open({out!r}, os.O_PATH)\n"
                                 "os.chmod('secret', 0o777, dir_fd=fd)"),
        ("utime through .. of ROOT", "fd = os.open('..', os.O_RDONLY, dir_fd=root_fd)\n"
                                     "os.utime('outside', (1, 1), dir_fd=fd)"),
        ("list the parent of ROOT", "fd = os.open('..', os.O_RDONLY | os.O_DIRECTORY, "
                                    "dir_fd=root_fd)\nresult = os.listdir(fd)"),
        ("move outside into ROOT", f"os.rename({out!r} + '/secret', ROOT + '/stolen')"),
        ("link outside into ROOT", f"os.link({out!r} + '/secret', ROOT + '/stolen')"),
        ("move ROOT's file out", f"os.rename(ROOT + '/a', {out!r} + '/escaped')"),
        ("delete outside", f"os.unlink({out!r} + '/dir/inner')"),
        ("mkdir outside", f"os.mkdir({out!r} + '/newdir')"),
        ("symlink outside", f"os.symlink('/', {out!r} + '/escaped')"),
        ("exec a shell", f"os.execv('/bin/sh', ['sh', '-c', {shell!r}])"),
        ("system()", f"result = os.system({shell!r})\nassert result == 0"),
        ("subprocess", f"import subprocess\nsubprocess.run(['/bin/sh', '-c', {shell!r}])"),
        ("memfd exec", "fd = os.memfd_create('x')\nos.write(fd, open('/bin/sh', 'rb').read())\n"
                       f"os.execve(fd, ['sh', '-c', {shell!r}], {{}})"),
        ("kill a process", f"os.kill({victim}, 9)"),
        ("ptrace a process", f"{libc}result = libc.ptrace(16, {victim}, 0, 0)\n"
                             "assert result == 0"),
        ("read /proc", f"result = open('/proc/{victim}/environ', 'rb').read()"),
        ("write own memory", "result = open('/proc/self/mem', 'r+b')"),
        ("connect to sshd", f"import socket\ns = socket.create_connection(('127.0.0.1', "
                            f"{port}), 5)\nresult = s.recv(64)"),
        ("user namespace", f"{libc}assert libc.unshare(0x10020000) == 0\n"
                           f"os.chroot('/')\nopen({out!r} + '/escaped', 'wb').write(b'x')"),
        ("mount", f"{libc}result = libc.mount(b'none', {out!r}.encode(), b'tmpfs', 0, None)\n"
                  "assert result == 0"),
        ("chroot escape", f"os.mkdir(ROOT + '/jail')\nos.chroot(ROOT + '/jail')\n"
                          f"open({out!r} + '/escaped', 'wb').write(b'x')"),
        ("io_uring", f"{libc}result = libc.syscall(425, 8, ctypes.create_string_buffer(120))\n"
                     "assert result >= 0"),
        ("handle of /", f"{libc}result = libc.syscall(304, -100, ctypes.create_string_buffer(64), "
                        "0)\nassert result >= 0"),
        ("setxattr outside", f"os.setxattr({out!r} + '/secret', 'user.x', b'1')"),
        ("setuid", "os.setuid(0)\nos.setgid(0)\nassert os.getuid() == 0 and os.geteuid() == 0 "
                   "and False"),
    ]


def _victim(w: World) -> subprocess.Popen:
    return subprocess.Popen(["sleep", "600"], preexec_fn=_as_account(w))


def _traced(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as fh:
        return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in fh)


def _run_corpus(w: World, s: AttackSshd, kernel: bool) -> tuple[list[dict], subprocess.Popen]:
    """Every attack, in one naive agent (a new one where an attack ended
    it); the answers in order (``{"gone": True}`` for an agent that died)."""
    victim = _victim(w)
    requests = [{"op": "hello"}, *_request_corpus(w)]
    requests += [{"op": "python", "code": code, "name": name}
                 for name, code in _code_corpus(w, victim.pid, s.port)]
    answers: list[dict] = []
    proc = _naive(w, s, kernel)
    try:
        for req in requests:
            answer = _ask(proc, req)
            if answer is None:
                answers.append({"ok": None, "gone": True})
                proc.kill()
                proc.wait(30)
                proc = _naive(w, s, kernel)
            else:
                answers.append(answer)
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(30)
    return answers, victim


def _escaped(w: World, answers: list[dict], victim: subprocess.Popen) -> list[str]:
    """Every sign that an attack worked."""
    signs = []
    changed = sorted(k for k in set(w.outer()) | set(w.before)
                     if w.outer().get(k) != w.before.get(k))
    if changed:
        signs.append(f"changed outside ROOT: {changed[:10]!r}")
    for a in answers:
        text = repr(a).encode()
        if SECRET[:20] in text or b"root:x:0:0" in text or b"SSH-2.0" in text:
            signs.append(f"read back: {text[:200]!r}")
    if victim.poll() is not None:
        signs.append("killed another process")
    elif _traced(victim.pid):
        signs.append("ptraced another process")
    found = [p for p in (w.outside / "escaped", w.base / "escaped") if p.exists()]
    if found:
        signs.append(f"created {found}")
    return signs


@pytest.mark.parametrize("world", ["root", "home-outside"], indirect=True)
def test_the_kernel_layer_alone_holds_over_a_naive_agent_running_the_attackers_code(world,
                                                                                   asshd):
    w, s = world, asshd
    answers, victim = _run_corpus(w, s, kernel=True)
    try:
        assert answers[0]["confinement"].startswith("landlock ABI"), answers[0]
        signs = _escaped(w, answers, victim)
        assert not signs, "\n".join(signs)
        # the attacks were really tried, and refused (not skipped by a typo)
        names = [name for name, _code in _code_corpus(w, victim.pid, s.port)]
        code_answers = dict(zip(names, answers[-len(names):], strict=True))
        accepted = [n for n, a in code_answers.items() if a["ok"]]
        assert not accepted, f"attacks that raised nothing: {accepted}: " + repr(
            [code_answers[n] for n in accepted])
    finally:
        victim.kill()
        victim.wait()
    w.seal()  # the leftovers of a naive agent are inside ROOT only


@pytest.mark.parametrize("world", ["root", "home-outside"], indirect=True)
def test_without_the_kernel_layer_the_same_attacks_escape(world, asshd):
    """The control: the corpus above is not harmless by itself."""
    w, s = world, asshd
    answers, victim = _run_corpus(w, s, kernel=False)
    try:
        signs = _escaped(w, answers, victim)
        assert len(signs) >= 3, signs
        assert any("changed outside ROOT" in x for x in signs), signs
        assert any("read back" in x for x in signs), signs
    finally:
        victim.kill()
        victim.wait()
        # put the world back for the fixture's own checks
        (w.outside / "secret").write_bytes(SECRET)
        for p in (w.outside / "escaped", w.base / "escaped"):
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.is_dir():
                shutil.rmtree(p)
        w.seal()


# ------------------------------------------------------ the applier alone
def _crashers() -> list[dict]:
    """Requests that crashed the agent's code before it validated them."""
    m = {"mode": 0o644, "mtime": 10**18}
    return [
        {"op": "symlink", "path": b"nul", "target": b"a\0b", **m},
        {"op": "put", "path": b"big-uid", "data": b"x", **m, "uid": 2**32, "gid": 2**32},
        {"op": "put", "path": b"neg", "data": b"x", "mode": -1, "mtime": -(2**63)},
        {"op": "mkdir", "path": b"d" * 5000, **m},
        {"op": "put", "path": b"x", "data": "not bytes", **m},
        {"op": "time", "path": b"sub", "mtime": 2**64 - 1},
        {"op": "rename", "src": b"a", "dst": None},
    ]


@pytest.mark.parametrize("world", ["root", "home-outside", "home-inside"], indirect=True)
def test_the_applier_alone_reaches_nothing_outside_root(world, asshd):
    """A key without a forced command is served by descriptors alone (no
    kernel layer): every path trick of the corpus is refused."""
    w, s = world, asshd
    s.confine(w.root, forced=False)
    session = AgentSession(s, w, by_path=True)
    try:
        assert session.ask({"op": "hello", "version": 1})["ok"]
        for req in _request_corpus(w) + _crashers():
            if req["op"] in ("chown", "chmod", "read"):
                continue  # the real protocol has no such operations
            answer = session.ask(req)
            if answer is None:
                break  # the session may end on a request it cannot parse
            assert "SECRET" not in repr(answer)
    finally:
        session.close()
    w.assert_unchanged("the applier alone")


# ------------------------------------------- the real agent: the findings
def _interpreter_paths(w: World, s: AttackSshd) -> list[str]:
    """Where a traceback of the agent would look for source files and
    codecs, for either interpreter the test accounts use."""
    spec = importlib.util.find_spec("msgpack")
    assert spec is not None
    places = [str(REPO / "syncsup" / "target"), str(s.site / "syncsup" / "target")]
    for stdlib in (sysconfig.get_paths()["stdlib"], "/usr/lib/python3.11",
                   os.path.realpath("/usr/lib/python3")):
        places.append(os.path.join(stdlib, "encodings"))
    return places


def _plant(w: World, s: AttackSshd, top: Path | None = None) -> None:
    """The key's (or a source writer's) payload: every file of the agent
    with a coding cookie naming a codec, and that codec's module in every
    ``encodings/``, as they would lie in ROOT for a chroot into ROOT;
    written below ``top`` (default ROOT)."""
    code = (f"for p in ({str(w.outside / 'escaped')!r}, {str(w.root / 'escaped-inside')!r}, "
            "'/escaped-chroot'):\n"
            "    try:\n"
            f"        open(p, 'wb').write({MARK!r})\n"
            "    except OSError:\n"
            "        pass\n"
            "raise LookupError('x')\n")
    for place in _interpreter_paths(w, s):
        d = (top or w.root) / place.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        if place.endswith("encodings"):
            (d / "syncsuppwn.py").write_text(code)
            (d / "__init__.py").write_text(code)
        else:
            for name in ("_agent.py", "_apply.py", "_confined.py", "_protocol.py", "_kernel.py",
                         "__init__.py"):
                (d / name).write_text("# -*- coding: syncsuppwn -*-\n" + code)
    for dirpath, dirnames, filenames in os.walk(top or w.root):
        for n in [*dirnames, *filenames, ""]:
            os.lchown(os.path.join(dirpath, n), w.uid, w.gid)


def _markers(w: World) -> list[Path]:
    found = [w.outside / "escaped", w.root / "escaped-inside", w.root / "escaped-chroot",
             w.root / str(w.outside).lstrip("/") / "escaped", Path("/escaped-chroot"),
             w.root / str(w.root).lstrip("/") / "escaped-inside"]
    return [m for m in found if m.exists()]


def _remove_deep(top: Path) -> None:
    """Remove a tree too deep for shutil.rmtree (which recurses): ``rm -rf``
    (argv, no shell) walks it from descriptors, in time linear in its size
    (a walk down from the top for each level, as this did, grows with the
    cube of the depth: seconds of CPU at 1,000 levels)."""
    subprocess.run(["rm", "-rf", "--", os.fspath(top)], check=True)


def _deep(w: World, depth: int, top: Path | None = None) -> None:
    d = (top or w.root) / "deep"
    os.makedirs(d)
    nest(d, depth)


@pytest.mark.parametrize("world", ["root", "home-outside"], indirect=True)
def test_a_crash_never_runs_code_planted_at_the_interpreters_paths(world, asshd):
    """The key plants the agent's own source files (with a coding cookie)
    and a codec module at their paths inside ROOT, then sends requests that
    crashed the agent: a traceback printed inside a chroot into ROOT read
    those files and imported the codec. Whatever the agent does with them
    now (an answer, or its fixed line), the planted code never runs."""
    w, s = world, asshd
    _plant(w, s)
    _deep(w, 1100)
    w.seal()
    try:
        _attack_with_crashes(w, s)
    finally:
        _remove_deep(w.root / "deep")
    w.assert_unchanged()


def _attack_with_crashes(w: World, s: AttackSshd) -> None:
    for req in [*_crashers(), {"op": "put", "path": b"deep", "data": b"x", "mode": 0o644,
                               "mtime": 10**18},
                {"op": "delete", "path": b"deep"}]:
        session = AgentSession(s, w)
        try:
            first = session.ask({"op": "hello", "version": 1})
            assert first and first["ok"], first
            answer = session.ask(req, timeout=120)
        finally:
            rc, err = session.close()
        assert answer is None or set(answer) <= {"ok", "error", "fatal"}, answer
        assert b"Traceback" not in err, err
        assert not _markers(w), "the planted code ran"
        assert rc in (0, 2, 70), (rc, err)


@pytest.mark.parametrize("world", ["root", "home-outside"], indirect=True)
def test_a_source_writer_cannot_run_code_on_the_target(world, asshd, tmp_path, src,
                                                       daemon_factory):
    """Someone who can write at the top of a source plants the same files
    there (the mirror puts them at the same places in ROOT) and a tree
    about 1,000 directories deep, waits for the mirror, then replaces the
    tree by a file: the syncer asks the agent to put a file over the tree.
    The target treats all of it as data: the mirror is exact, and the
    planted code never runs."""
    w, s = world, asshd
    _plant(w, s, src)
    _deep(w, 995, src)
    target = f"{w.login}:{w.root}"
    d = daemon_factory([sync_entry(src, [target], mode="rsyncssh", delay=0.2,
                                   ssh={**s.ssh_config(), "confined": True})])
    try:
        wait_converged(src, w.root, timeout=180, on_timeout=d.describe)
        _remove_deep(src / "deep")
        (src / "deep").write_bytes(b"a file where the tree was")
        wait_converged(src, w.root, timeout=180, on_timeout=d.describe)
        assert not _markers(w), "the planted code ran"
        d.stop()
    finally:
        _remove_deep(w.root / "deep")
    w.assert_unchanged()


@pytest.mark.parametrize("world", ["home-inside", "home-is-root"], indirect=True)
def test_the_agent_is_not_served_where_the_home_is_inside_root(world, asshd):
    """Landlock can grant ROOT but not "ROOT but the home's start-up
    files": there the agent refuses and says why (rsync's daemon, which
    excludes them, serves the target)."""
    w, s = world, asshd
    r = ssh_run(s, w, f"syncsup-target {w.root} agent", stdin=hello())
    assert r.returncode == 1 and NOT_SERVED in r.stderr, r
    assert b"home" in r.stderr and not replies(r.stdout), r
    w.assert_unchanged()


# ------------------------------------------------- rsync's daemon module
@pytest.mark.parametrize("world", ["root", "home-inside"], indirect=True)
def test_files_from_cannot_read_a_file_back(world, asshd, tmp_path):
    """``rsync -r --files-from=:FILE . host::syncsup/`` made the receiving
    daemon open FILE in ROOT and send its lines back in error messages."""
    w, s = world, asshd
    (w.root / "victim.txt").write_bytes(b"VICTIM-LINE-1\nVICTIM-LINE-2\n")
    os.lchown(w.root / "victim.txt", w.uid, w.gid)
    if w.home_rel is not None:
        key = w.home / ".ssh" / "id_ed25519"
        key.write_bytes(b"PRIVATE-KEY-LINE\n")
        os.lchown(key, w.uid, w.gid)
    w.seal()
    empty = tmp_path / "empty"
    empty.mkdir()
    user = w.login.split("@")[0]
    for name in ("victim.txt", "/victim.txt", "syncsup/victim.txt",
                 (w.home_rel or b"").decode() + "/.ssh/id_ed25519"):
        r = subprocess.run(["rsync", "-r", f"--files-from=:{name}", "-e", s.rsync_e(),
                            f"{empty}/", f"{user}@{s.host}::syncsup/"],
                           capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        both = r.stdout + r.stderr
        assert r.returncode != 0, (name, both)
        assert b"VICTIM-LINE" not in both and b"PRIVATE-KEY" not in both, (name, both)
    w.assert_unchanged()


def _target_processes(w: World) -> list[int]:
    """The target side's processes for this world: the account's (not
    root), or root's that name ROOT or run inside it (rsync's daemon is
    chrooted there)."""
    if w.uid != 0:
        return pids_of_uid(w.uid)
    out = []
    root = b(w.root)
    for pid in pids_of_uid(0):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            where = [os.fsencode(os.readlink(f"/proc/{pid}/{link}")) for link in ("root", "cwd")]
        except OSError:
            continue
        if root in cmd or any(x == root or x.startswith(root + b"/") for x in where):
            out.append(pid)
    return out


def _wait_gone(w: World, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _target_processes(w)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.parametrize("world", ["root", "home-outside"], indirect=True)
def test_a_fifo_cannot_hold_the_daemon(world, asshd, tmp_path):
    """A pushed fifo named by ``--files-from=:fifo`` blocked the daemon in
    open() for ever; now the option is refused and nothing stays."""
    w, s = world, asshd
    os.mkfifo(w.root / "fifo")
    os.lchown(w.root / "fifo", w.uid, w.gid)
    w.seal()
    user = w.login.split("@")[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run(["rsync", "-r", "--files-from=:fifo", "-e", s.rsync_e(), f"{empty}/",
                        f"{user}@{s.host}::syncsup/"], capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode != 0, r
    assert not _wait_gone(w, 20), "processes left on the target"


@pytest.mark.parametrize("world", ["root", "home-outside"], indirect=True)
def test_a_client_that_goes_away_leaves_nothing_running(world, asshd, tmp_path):
    w, s = world, asshd
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big", "wb") as fh:
        fh.write(os.urandom(8 << 20))
    user = w.login.split("@")[0]
    client = subprocess.Popen(["rsync", "-a", "--no-devices", "--bwlimit=64", "-e", s.rsync_e(),
                               f"{src}/", f"{user}@{s.host}::syncsup/"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while not _target_processes(w) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _target_processes(w), "the transfer never started"
    time.sleep(1)
    os.killpg(client.pid, signal.SIGKILL)
    client.wait()
    assert not _wait_gone(w, 30), "processes left on the target"


# ------------------------------------------- a kernel without a mechanism
NO_LANDLOCK = r"""
import ctypes, errno, os, sys
lib = ctypes.CDLL("libseccomp.so.2")
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = lib.seccomp_init(0x7FFF0000)
for nr in (444, 445, 446):  # landlock_*: as on a kernel without Landlock
    assert lib.seccomp_rule_add(ctx, 0x00050000 | errno.ENOSYS, nr, 0) == 0
assert lib.seccomp_load(ctx) == 0
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.mark.parametrize("world", ["root"], indirect=True)
def test_a_kernel_without_landlock_gets_no_agent_unless_the_target_allows_it(world, asshd):
    """The agent names the missing mechanism and how to accept running
    without it; only the forced command in authorized_keys (which the key
    cannot change) can accept it."""
    w, s = world, asshd
    helper = s.public / "no-landlock"
    helper.write_text(NO_LANDLOCK)
    os.chmod(helper, 0o755)
    try:
        s.confine(w.root, prefix=f"{sys.executable} {helper} ")
        r = ssh_run(s, w, f"syncsup-target {w.root} agent",
                    stdin=hello() + frame({"op": "rename", "src": b"a", "dst": b"moved"}))
        assert r.returncode == 1 and NOT_SERVED in r.stderr, r
        assert b"Landlock" in r.stderr and b"--allow-without=landlock" in r.stderr, r.stderr
        assert not replies(r.stdout) and not (w.root / "moved").exists()
        # the key asking for it itself changes nothing
        r = ssh_run(s, w, f"syncsup-target --allow-without=landlock {w.root} agent",
                    stdin=hello())
        assert r.returncode == 1 and not replies(r.stdout), r
        s.confine(w.root, prefix=f"{sys.executable} {helper} ",
                  options="--allow-without=landlock ")
        r = ssh_run(s, w, f"syncsup-target {w.root} agent",
                    stdin=hello() + frame({"op": "rename", "src": b"a", "dst": b"moved"}))
        answers = replies(r.stdout)
        assert answers and "NO landlock" in answers[0]["confinement"], (answers, r.stderr)
        assert answers[1]["ok"] and (w.root / "moved").exists()
    finally:
        s.confine(w.root)
        helper.unlink()
