"""The kernel layer of a session that only reads (``syncsup-target ROOT
stats``, the first start's proof) holds on its own: an agent whose code
layer has failed completely and runs the attacker's code cannot change
anything inside ROOT, with Landlock and seccomp together and with seccomp
alone (a kernel without Landlock); it can still read what a proof reads.

The writing agent's kernel layer is attacked in ``test_confinement``; this
is what the read-only one takes away on top of it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from syncsup.target._protocol import encode_frame, read_frame
from tests.helpers.daemon import REPO

NAIVE = Path(__file__).resolve().parents[1] / "helpers" / "naive_agent.py"

# Every way to change a tree from inside: each must raise.
ATTACKS = {
    "create": "os.close(os.open(ROOT + '/new', os.O_WRONLY | os.O_CREAT, 0o644))",
    "create-at": "os.close(os.open('new', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=root_fd))",
    "write": "fd = os.open(ROOT + '/file', os.O_WRONLY); os.write(fd, b'owned')",
    "append": "fd = os.open(ROOT + '/file', os.O_WRONLY | os.O_APPEND); os.write(fd, b'x')",
    "read-write": "fd = os.open(ROOT + '/file', os.O_RDWR); os.write(fd, b'owned')",
    "truncate": "os.truncate(ROOT + '/file', 0)",
    "unlink": "os.unlink(ROOT + '/file')",
    "unlink-at": "os.unlink('file', dir_fd=root_fd)",
    "rmdir": "os.rmdir(ROOT + '/dir')",
    "rename": "os.rename(ROOT + '/file', ROOT + '/moved')",
    "mkdir": "os.mkdir(ROOT + '/newdir')",
    "symlink": "os.symlink('/etc/shadow', ROOT + '/sl')",
    "hardlink": "os.link(ROOT + '/file', ROOT + '/hl')",
    "mkfifo": "os.mkfifo(ROOT + '/fifo')",
    "chmod": "os.chmod(ROOT + '/file', 0o4777)",
    "fchmod": "fd = os.open(ROOT + '/file', os.O_RDONLY); os.fchmod(fd, 0o4777)",
    "chown": "os.chown(ROOT + '/file', 4242, 4242)",
    "fchown": "fd = os.open(ROOT + '/file', os.O_RDONLY); os.fchown(fd, 4242, 4242)",
    "utime": "os.utime(ROOT + '/file', ns=(1, 1))",
    "futimens": "fd = os.open(ROOT + '/file', os.O_RDONLY); os.utime(fd, ns=(1, 1))",
    "setxattr": "os.setxattr(ROOT + '/file', 'user.x', b'1')",
    "ioctl-setflags": (
        "import fcntl, struct\n"
        "fd = os.open(ROOT + '/file', os.O_RDONLY)\n"
        "fcntl.ioctl(fd, 0x40086602, struct.pack('l', 0x40))  # FS_IOC_SETFLAGS: nodump"),
    "openat2": (
        "import ctypes\n"
        "how = (ctypes.c_uint64 * 3)(os.O_WRONLY | os.O_CREAT, 0o644, 0)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.syscall.restype = ctypes.c_long\n"
        "fd = libc.syscall(437, -100, (ROOT + '/o2').encode(), ctypes.byref(how), 24)\n"
        "assert fd < 0, fd\n"
        "raise OSError(ctypes.get_errno(), 'openat2')"),
}
# What a proof needs: each must work.
READS = {
    "stat": "result = os.stat('file', dir_fd=root_fd, follow_symlinks=False).st_size",
    "list": "result = sorted(os.listdir(ROOT))",
    "read": "fd = os.open(ROOT + '/file', os.O_RDONLY); result = os.read(fd, 100)",
}


RESTORE = ("if not os.path.lexists(ROOT + '/file'):\n"
           "    os.close(os.open(ROOT + '/file', os.O_WRONLY | os.O_CREAT, 0o644))\n"
           "os.makedirs(ROOT + '/dir', exist_ok=True)")


def _tree(root: Path) -> dict[str, tuple[int, int, int, int, bytes]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_mtime_ns, st.st_size,
                                             data)
    return out


def _session(root: Path, *flags: str) -> subprocess.Popen:
    spec = importlib.util.find_spec("msgpack")
    assert spec is not None and spec.origin is not None
    argv = [sys.executable, "-I", "-S", "-B", str(NAIVE), str(root), *flags, str(REPO),
            str(Path(spec.origin).parents[1])]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd="/")


def _ask(proc: subprocess.Popen, doc: dict) -> dict:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(encode_frame(doc))
    proc.stdin.flush()
    answer = read_frame(proc.stdout)
    assert isinstance(answer, dict), (answer, proc.stderr.read() if proc.poll() is not None
                                      else b"")
    return answer


@pytest.mark.parametrize("flags", [("--read-only",), ("--read-only", "--no-landlock")],
                         ids=["landlock-and-seccomp", "seccomp-alone"])
def test_a_stats_session_running_the_attackers_code_changes_nothing_in_root(tmp_path, flags):
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "file").write_bytes(b"the target's data\n")
    os.chmod(root / "file", 0o644)
    before = _tree(root)
    proc = _session(root, *flags)
    try:
        hello = _ask(proc, {"op": "hello"})
        expected = "NO landlock" if "--no-landlock" in flags else "landlock ABI"
        assert hello["confinement"].startswith(expected), hello
        escaped = {}
        for name, code in ATTACKS.items():
            answer = _ask(proc, {"op": "python", "code": code})
            if answer["ok"]:
                escaped[name] = answer
        assert not escaped, f"attacks that were not refused: {sorted(escaped)}"
        for name, code in READS.items():
            answer = _ask(proc, {"op": "python", "code": code})
            assert answer["ok"], (name, answer)
    finally:
        proc.kill()
        proc.wait()
    assert _tree(root) == before


def test_the_same_attacks_succeed_under_the_writing_agents_layer(tmp_path):
    """The control: the corpus is not refused by accident (a typo, a
    missing file): the writing agent's layer lets most of it through,
    inside ROOT, where it is meant to write."""
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "file").write_bytes(b"the target's data\n")
    proc = _session(root)
    try:
        assert _ask(proc, {"op": "hello"})["confinement"].startswith("landlock ABI")
        done = []
        for name, code in ATTACKS.items():
            # each attack on a tree as it was (an earlier one removed the file)
            assert _ask(proc, {"op": "python", "code": RESTORE})["ok"]
            if _ask(proc, {"op": "python", "code": code})["ok"]:
                done.append(name)
    finally:
        proc.kill()
        proc.wait()
    # what the writing layer refuses by design: metadata by path, O_PATH-free
    # opens through openat2, and the rest of the seccomp list
    assert {"create", "create-at", "write", "read-write", "unlink", "unlink-at", "rmdir",
            "rename", "mkdir", "symlink", "hardlink", "append", "fchmod", "fchown",
            "futimens"} <= set(done), done
