"""The attacker's tools for tests/integration/test_security.py.

A real sshd on loopback whose key is confined by ``syncsup-target ROOT``
(the forced command), target accounts (root, or a throw-away user whose home
is inside ROOT, is ROOT, or is outside it), a world around ROOT that must
never change, and the ways an attacker holding the key talks to the target:
a real rsync client (``push``), crafted ssh command lines (``ssh_run``, an
``-e`` program that rewrites the remote command), raw agent frames.

Nothing here imports syncsup: the attacker speaks the wire formats itself,
so the same helpers run against an older checkout to show that a test fails
there.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from tests.helpers.daemon import REPO
from tests.helpers.procs import assert_no_leftovers, end_account, kill_leftovers, tree_pids
from tests.helpers.sshd import Sshd
from tests.helpers.tree import b, snapshot

REFUSED = "syncsup-target: refused"
PROBE_FLAGS = "-logDtpre.iLsfxC"  # what an rsync 3.x client sends for -a
SYSTEM_PYTHON = "/usr/bin/python3"


# ------------------------------------------------------------ public places
def public_dir(prefix: str = "syncsup-atk-") -> Path:
    """A fresh directory that every user can traverse (pytest's tmp_path is
    private to root): in the temporary directory (a tmpfs in the suite) if
    every user can traverse its way there, else in /tmp."""
    base = Path(tempfile.gettempdir()).resolve()
    if not all(os.stat(d).st_mode & 0o001 for d in (base, *base.parents)):
        base = Path("/tmp")
    p = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    os.chmod(p, 0o755)
    return p


def remove_public(p: Path) -> None:
    kill_leftovers(p)
    shutil.rmtree(p, ignore_errors=True)


def make_site(dest: Path) -> Path:
    """A folder every user can read holding what the forced command imports:
    a copy of this checkout's ``syncsup`` and of ``msgpack``."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "syncsup", dest / "syncsup", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    spec = importlib.util.find_spec("msgpack")
    assert spec is not None and spec.origin is not None
    shutil.copytree(Path(spec.origin).parent, dest / "msgpack", dirs_exist_ok=True)
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(dest)], check=True)
    return dest


def write_target_wrapper(path: Path, site: Path) -> Path:
    """The forced command: ``syncsup-target`` of this checkout, run with
    ``python -P`` (never plain ``-m``: the working directory is the
    account's home, which may be inside ROOT). Root uses this interpreter;
    other accounts the system one (this one may live under a private /root)
    with the copied site."""
    path.write_text(
        "#!/bin/sh\n"
        'if [ "$(/usr/bin/id -u)" = 0 ]; then\n'
        f"    PYTHONPATH={shlex.quote(str(REPO))}; export PYTHONPATH\n"
        f"    exec {shlex.quote(sys.executable)} -P -m syncsup.target \"$@\"\n"
        "fi\n"
        f"PYTHONPATH={shlex.quote(str(site))}; export PYTHONPATH\n"
        f"exec {SYSTEM_PYTHON} -P -m syncsup.target \"$@\"\n")
    os.chmod(path, 0o755)
    return path


# ---------------------------------------------------------------- the sshd
class AttackSshd(Sshd):
    """The test sshd, plus what an attack needs: the fixed authorized_keys
    file is world-readable (sshd reads it as the account), every account but
    root also has ``~/.ssh/authorized_keys`` (so writing it would give a
    shell: the attack of finding 1), ``syncsup-target`` is on the session's
    PATH (for a key without a forced command), and a second, unconfined
    attacker's key exists that is authorized nowhere."""

    def __init__(self, workdir: Path, public: Path) -> None:
        super().__init__(workdir)
        self.public = public
        self.authorized_keys = public / "authorized_keys"
        self.authorized_keys.write_text("")
        os.chmod(self.authorized_keys, 0o644)
        self.bindir = public / "bin"
        self.bindir.mkdir()
        os.chmod(self.bindir, 0o755)
        self.site = make_site(public / "site")
        self.wrapper = write_target_wrapper(self.bindir / "syncsup-target", self.site)
        self.attacker_key = self.dir / "attacker_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "attacker", "-f",
                        str(self.attacker_key)], check=True, stdin=subprocess.DEVNULL)
        # the attacker's public key, to be planted by an attack
        self.attacker_pub = Path(f"{self.attacker_key}.pub").read_text().strip()

    session_env = ()  # its own SetEnv lines below: root's, and the PATH of every account

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config.read_text()
        text = text.replace(f"AuthorizedKeysFile {self.authorized_keys}",
                            f"AuthorizedKeysFile {self.authorized_keys} .ssh/authorized_keys")
        path = f"PATH={self.bindir}:/usr/local/bin:/usr/bin:/bin"
        # Root's sessions start as SHLVL=1, so bash (which runs the forced
        # command) does not read root's own ~/.bashrc as it does for a
        # command over ssh: that file belongs to the test host, not to any
        # attack (on a developer's machine a `pyenv init` costing 0.1 CPU-s
        # per session, five times sshd's own share). The throw-away
        # accounts' start-up files are read as ever.
        text += (f"SetEnv {path}\n"
                 "Match User root\n"
                 f"    AuthorizedKeysFile {self.authorized_keys}\n"
                 f"    SetEnv {path} SHLVL=1\n")
        self.config.write_text(text)

    def confine(self, root: Path | str, forced: bool = True, prefix: str = "",
                options: str = "") -> None:
        """authorized_keys: the key may only run ``syncsup-target ROOT``
        (``prefix`` runs before it, e.g. to take user namespaces away;
        ``options`` go before ROOT)."""
        pub = Path(f"{self.identity_file}.pub").read_text().strip()
        cmd = f"{prefix}{shlex.quote(str(self.wrapper))} {options}{shlex.quote(str(root))}"
        assert '"' not in cmd and "\\" not in cmd
        line = f'command="{cmd}",restrict {pub}\n' if forced else f"restrict {pub}\n"
        self.authorized_keys.write_text(line)
        os.chmod(self.authorized_keys, 0o644)

    def ssh_base(self, key: Path | None = None) -> list[str]:
        argv = ["ssh", "-p", str(self.port), "-i", str(key or self.identity_file),
                "-o", "IdentitiesOnly=yes"]
        for o in [*self.ssh_options, "ConnectTimeout=5"]:
            argv += ["-o", o]
        return argv

    def rsync_e(self, key: Path | None = None) -> str:
        return shlex.join(self.ssh_base(key))


# ------------------------------------------------------------ the accounts
@dataclass
class World:
    """ROOT (the mirror the key is confined to) and what surrounds it.

    ``base/root`` is ROOT; ``base/outside`` holds a passwd-like ``secret``
    (readable by the account, writable by it too, so that any escape would
    show) and ``dir/``; ``root/link`` points at outside (absolute),
    ``root/rlink`` too (relative); ``root/L`` points at ``outside/dir`` so
    that ``L/..`` is outside. The account's home holds ``.ssh/authorized_keys``,
    ``.bashrc`` and ``.profile``."""

    base: Path
    root: Path
    outside: Path
    home: Path
    login: str
    uid: int
    gid: int
    kind: str
    payload: Path
    before: dict = field(default_factory=dict)

    @property
    def home_rel(self) -> bytes | None:
        """The home relative to ROOT (b"" for ROOT itself), or None."""
        h, r = b(self.home), b(self.root)
        if h == r:
            return b""
        if h.startswith(r + b"/"):
            return h[len(r) + 1:]
        return None

    def protected(self, rel: bytes) -> bool:
        """Is ``rel`` (relative to ROOT) one of the home's start-up files?"""
        h = self.home_rel
        if h is None:
            return False
        prefix = h + b"/" if h else b""
        return rel.startswith(prefix + b".")

    def outer(self) -> dict:
        """Snapshot of everything that must never change: all but ROOT,
        plus the home's dot-files when the home is inside ROOT."""
        snap = snapshot(self.base)
        out = {}
        for k, v in snap.items():
            if k.startswith(b"payload/"):
                continue
            if k == b"root" or k.startswith(b"root/"):
                rel = k[5:]
                if not self.protected(rel):
                    continue
            out[k] = v
        return out

    def seal(self) -> None:
        self.before = self.outer()

    def assert_unchanged(self, what: str = "the attack") -> None:
        after = self.outer()
        changed = sorted(k for k in set(after) | set(self.before)
                         if after.get(k) != self.before.get(k))
        assert not changed, (f"{what} changed the world outside ROOT (or the home's "
                             f"start-up files): {changed[:20]!r}")
        assert (self.outside / "secret").read_bytes() == SECRET


SECRET = b"root:x:0:0:SECRET-PASSWD-LINE:/root:/bin/bash\n"
ORIGINAL_KEYS = b"# the account's own authorized_keys\n"
ORIGINAL_RC = b"# the account's own .bashrc\n"


def _make_home(home: Path, uid: int, gid: int) -> None:
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "authorized_keys").write_bytes(ORIGINAL_KEYS)
    (home / ".bashrc").write_bytes(ORIGINAL_RC)
    (home / ".profile").write_bytes(b"# profile\n")
    (home / "data.txt").write_bytes(b"ordinary file in the home\n")
    for dirpath, dirnames, filenames in os.walk(home):
        for n in [*dirnames, *filenames, ""]:
            os.lchown(os.path.join(dirpath, n), uid, gid)


def make_world(kind: str, sshd: AttackSshd) -> Iterator[World]:
    """A world for one test. ``kind``: ``root`` (the root account, home
    /root outside ROOT), ``home-inside`` (a throw-away user whose home is
    ROOT/home), ``home-is-root`` (its home is ROOT), ``home-outside``."""
    base = public_dir()
    name = None
    try:
        root, outside = base / "root", base / "outside"
        root.mkdir()
        (root / "sub").mkdir()
        (root / "a").write_bytes(b"file a")
        (root / "sub" / "b").write_bytes(b"file b")
        outside.mkdir()
        (outside / "secret").write_bytes(SECRET)
        (outside / "dir").mkdir()
        (outside / "dir" / "inner").write_bytes(b"inner outside")
        os.symlink(outside, root / "link")
        os.symlink("../outside", root / "rlink")
        os.symlink(outside / "dir", root / "L")
        payload = base / "payload"
        payload.mkdir()
        (payload / "escaped").write_bytes(b"written by the confined key")
        (payload / "secret").write_bytes(b"overwritten by the confined key")
        if kind == "root":
            uid = gid = 0
            home = Path(pwd.getpwuid(0).pw_dir)
            login = f"root@{sshd.host}"
        else:
            if shutil.which("useradd") is None:
                raise RuntimeError("useradd is needed for throw-away target accounts")
            if not os.path.exists(SYSTEM_PYTHON):
                raise RuntimeError(f"{SYSTEM_PYTHON} is needed to run syncsup-target as "
                                   "another user")
            home = {"home-inside": root / "home", "home-is-root": root,
                    "home-outside": base / "home"}[kind]
            name = f"sst-{secrets.token_hex(4)}"
            subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/bash", name],
                           check=True, capture_output=True)
            # not locked (OpenSSH refuses a locked account), no password either
            subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
            pw = pwd.getpwnam(name)
            uid, gid = pw.pw_uid, pw.pw_gid
            login = f"{name}@{sshd.host}"
            _make_home(home, uid, gid)
            for dirpath, dirnames, filenames in os.walk(root):
                for n in [*dirnames, *filenames, ""]:
                    os.lchown(os.path.join(dirpath, n), uid, gid)
            for dirpath, dirnames, filenames in os.walk(outside):
                for n in [*dirnames, *filenames, ""]:
                    os.lchown(os.path.join(dirpath, n), uid, gid)
        w = World(base=base, root=root, outside=outside, home=home, login=login, uid=uid,
                  gid=gid, kind=kind, payload=payload)
        sshd.confine(root)
        w.seal()
        yield w
        assert_no_leftovers(base)
    finally:
        if name is not None:
            end_account(name, before_delete=lambda: remove_public(base))
        else:
            remove_public(base)


# ---------------------------------------------------------- talking to it
def ssh_run(sshd: AttackSshd, w: World, *remote: str, stdin: bytes = b"",
            key: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    argv = [*sshd.ssh_base(key), w.login, *remote]
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)


def rsync(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(["rsync", *args], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def push(sshd: AttackSshd, w: World, src: Path | str, dest: str = "", *opts: str,
         devices: bool = False) -> subprocess.CompletedProcess:
    """What syncsup's client does: ``rsync -a --no-devices -e SSH SRC/ login::syncsup/DEST``."""
    return rsync(*push_args(sshd, w, src, dest, *opts, devices=devices))


def push_args(sshd: AttackSshd, w: World, src: Path | str, dest: str = "", *opts: str,
              devices: bool = False) -> list[str]:
    """The arguments to rsync of :func:`push`."""
    base = ["-a"] if devices else ["-a", "--no-devices"]
    return [*base, *opts, "-e", sshd.rsync_e(), f"{os.fspath(src).rstrip('/')}/",
            f"{w.login.split('@')[0]}@{sshd.host}::syncsup/{dest}"]


def rewriting_ssh(path: Path, sshd: AttackSshd, append: list[str] | None = None,
                  drop: tuple[str, ...] = ("--sender",), replace: str | None = None) -> str:
    """An ``-e`` program for a real rsync client that rewrites the remote
    command line before ssh sends it: drops ``drop`` words, appends
    ``append`` words (e.g. ``. ROOT/`` for a command the old forced command
    would check), or ``replace``s the whole command. Returns the ``-e``
    value."""
    path.write_text(
        "#!/usr/bin/env python3\n"
        "import os, sys\n"
        "args = sys.argv[1:]\n"
        "pre = []\n"
        "while args and args[0].startswith('-'):\n"
        "    pre += args[:2]\n"
        "    args = args[2:]\n"
        f"host, words = args[0], [a for a in args[1:] if a not in {list(drop)!r}]\n"
        f"words += {list(append or [])!r}\n"
        f"cmd = {replace!r} or ' '.join(words)\n"
        f"os.execvp('ssh', {sshd.ssh_base()!r} + pre + [host, cmd])\n")
    os.chmod(path, 0o755)
    return str(path)


def assert_refused(r: subprocess.CompletedProcess, what: str) -> None:
    err = r.stderr.decode(errors="replace")
    assert r.returncode != 0, f"{what}: exit 0 (not refused); stderr: {err}"
    assert REFUSED in err, f"{what}: exit {r.returncode} but no {REFUSED!r} on stderr: {err}"


def assert_no_shell(sshd: AttackSshd, w: World) -> None:
    """Neither key gives a shell: the confined one runs only syncsup-target,
    and the attacker's own key was planted nowhere."""
    r = ssh_run(sshd, w, f"touch {w.outside}/pwned; id", key=sshd.attacker_key, timeout=30)
    assert r.returncode == 255 and b"uid=" not in r.stdout, (
        f"the attacker's key logs in as {w.login}: {r.stdout!r} {r.stderr!r}")
    r = ssh_run(sshd, w, "id", timeout=30)
    assert b"uid=" not in r.stdout, f"the confined key runs id: {r.stdout!r}"
    assert not (w.outside / "pwned").exists()


# -------------------------------------------------------------- agent frames
_LEN = struct.Struct(">I")


def frame(doc: dict) -> bytes:
    body = msgpack.packb(doc, use_bin_type=True)
    return _LEN.pack(len(body)) + body


def raw_frame(body: bytes) -> bytes:
    return _LEN.pack(len(body)) + body


def hello() -> bytes:
    return frame({"op": "hello", "version": 1})


def replies(data: bytes) -> list[dict]:
    out, pos = [], 0
    while pos + 4 <= len(data):
        (n,) = _LEN.unpack(data[pos:pos + 4])
        out.append(msgpack.unpackb(data[pos + 4:pos + 4 + n], raw=False))
        pos += 4 + n
    return out


class AgentSession:
    """``ssh login "syncsup-target ROOT agent"`` kept open: one request at a
    time, so that the test can change the target between two requests.

    ``by_path``: for a key without a forced command, name this checkout's
    ``syncsup-target`` by its path, since the account's shell startup files
    (root's ``.bashrc`` putting pyenv first, say) may put another one first
    on its PATH. A forced command reads the command and wants the name."""

    def __init__(self, sshd: AttackSshd, w: World, by_path: bool = False) -> None:
        exe = shlex.quote(str(sshd.wrapper)) if by_path else "syncsup-target"
        self.proc = subprocess.Popen(
            [*sshd.ssh_base(), w.login, f"{exe} {shlex.quote(str(w.root))} agent"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def ask(self, doc: dict, timeout: float = 30) -> dict | None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(frame(doc))
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        head = _read(self.proc.stdout, 4, timeout)
        if len(head) < 4:
            return None
        (n,) = _LEN.unpack(head)
        return msgpack.unpackb(_read(self.proc.stdout, n, timeout), raw=False)

    def close(self) -> tuple[int, bytes]:
        try:
            _out, err = self.proc.communicate(frame({"op": "bye"}), timeout=30)
        except (BrokenPipeError, ValueError):
            err = b""
            self.proc.wait(30)
        return self.proc.returncode, err


def _read(stream, n: int, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < n and time.monotonic() < deadline:
        chunk = stream.read1(n - len(data)) if hasattr(stream, "read1") else stream.read(n)
        if not chunk:
            break
        data += chunk
    return data


# --------------------------------------------------------------- watching
class OutsideWatch:
    """inotify on every directory of a tree: records any entry created,
    written, renamed in or changed there, even one that is gone again by the
    time a snapshot is taken (a temp file rsync renames away)."""

    def __init__(self, *roots: Path) -> None:
        from inotify_simple import INotify, flags

        self.ino = INotify(nonblocking=True)
        mask = (flags.CREATE | flags.MODIFY | flags.MOVED_TO | flags.ATTRIB | flags.DELETE
                | flags.MOVED_FROM | flags.CLOSE_WRITE | flags.DONT_FOLLOW)
        self.names: dict[int, bytes] = {}
        for r in roots:
            for dirpath, _dirnames, _files in os.walk(b(r)):
                self.names[self.ino.add_watch(dirpath, mask)] = dirpath
        self.events: list[tuple[bytes, str]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for ev in self.ino.read(timeout=50):
                self.events.append((self.names.get(ev.wd, b"?") + b"/" + b(ev.name),
                                    str(ev.mask)))

    def stop(self) -> list[tuple[bytes, str]]:
        time.sleep(0.2)
        self._stop.set()
        self._t.join(5)
        self.ino.close()
        return self.events


# ------------------------------------------------------------ memory
def rss(pid: int, field: str = "VmRSS") -> int:
    """Resident set size of one process in bytes (0 if gone); ``VmHWM``:
    its peak since it started or since :func:`reset_peaks`."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(pid: int) -> int:
    return sum(rss(p) for p in tree_pids(pid))


def reset_peaks(pid: int) -> None:
    """Each process's peak resident size (``VmHWM``) set back to what it
    holds now (``clear_refs`` 5), so that :func:`tree_peak` tells the peak
    of what follows, however briefly it lasted."""
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def tree_peak(pid: int) -> int:
    """The sum of each process's peak since :func:`reset_peaks` (at least
    the peak of the sum: a bound that no short spike slips past)."""
    return sum(rss(p, "VmHWM") for p in tree_pids(pid))


def is_socket(p: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(p).st_mode)
    except OSError:
        return False
