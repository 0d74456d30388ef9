"""Find processes a test left behind, by the test's unique tmp dir in their command line,
and end the throw-away accounts of the attack tests."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2 :].split()[0].decode()
    except (OSError, ValueError, IndexError):
        return "?"


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    return _state(pid) not in ("?", "Z", "X")


def parent_of(pid: int) -> int | None:
    """``pid``'s parent, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def children_map() -> dict[int, list[int]]:
    """Every live process's children (zombies included), from /proc."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (ppid := parent_of(int(d))) is not None:
            kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (not ``pid`` itself)."""
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def tree_pids(pid: int) -> list[int]:
    """``pid`` and every descendant."""
    return [pid, *descendants(pid)]


def pids_of_uid(uid: int) -> list[int]:
    """Live processes owned by ``uid``."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    out.append(int(d))
            except OSError:
                pass
    return out


def end_account(name: str, before_delete: Callable[[], None] | None = None) -> None:
    """End a throw-away account: kill its processes (until none is left:
    userdel refuses an account that runs), run ``before_delete`` (its
    files: a uid freed first could be handed to another test's account
    meanwhile), then delete it. AssertionError if it cannot be deleted, for
    an account left behind outlives the test run."""
    try:
        uid: int | None = pwd.getpwnam(name).pw_uid
    except KeyError:
        uid = None
    for _ in range(50):
        pids = pids_of_uid(uid) if uid is not None else []
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    try:
        if before_delete is not None:
            before_delete()
    finally:
        if uid is not None:
            for _ in range(50):  # userdel waits for the passwd lock other tests take
                r = subprocess.run(["userdel", name], capture_output=True, text=True)
                if r.returncode == 0:
                    break
                time.sleep(0.2)
            else:
                raise AssertionError(f"userdel {name}: {r.stderr.strip()}; the account is "
                                     "left behind")


def processes_mentioning(
    path: os.PathLike | str | bytes, exclude: set[int] | None = None
) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes with an argument naming ``path`` or a path under it."""
    p = os.fsencode(os.path.abspath(os.fsencode(path)))
    exclude = set(exclude or ()) | {os.getpid()}
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        if pid in exclude:
            continue
        cmd = _cmdline(pid)
        if not cmd:
            continue  # kernel thread or zombie
        if _state(pid) in ("Z", "X"):
            continue
        args = cmd.rstrip(b"\0").split(b"\0")
        if any(a == p or a.endswith(p) or (p + b"/") in a for a in args):
            out.append((pid, " ".join(repr(a)[2:-1] for a in args)))
    return out


def assert_no_leftovers(tmp_path: os.PathLike | str, timeout: float = 5.0) -> None:
    """No process other than pytest may still mention ``tmp_path`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_mentioning(tmp_path)
        if not left:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"processes left behind for {os.fspath(tmp_path)}:\n"
                + "\n".join(f"  pid {pid} [{_state(pid)}]: {cmd}" for pid, cmd in left)
            )
        time.sleep(0.2)


def kill_leftovers(tmp_path: os.PathLike | str) -> list[tuple[int, str]]:
    """SIGKILL whatever still mentions ``tmp_path`` (cleanup after a failed test)."""
    left = processes_mentioning(tmp_path)
    for pid, _ in left:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return left


def cmdline_of(pid: int) -> list[bytes]:
    cmd = _cmdline(pid)
    return cmd.rstrip(b"\0").split(b"\0") if cmd else []
