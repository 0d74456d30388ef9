"""The layout of ``state_dir``, in one place.

::

    state_dir/                 0700, ours alone
      lock                     flock held by the running supervisor (its pid inside)
      control.sock             supervisor: children and the CLI
      ingest.sock              collator: the watcher's EVENTS
      dispatch.sock            collator: the syncer's READY/DONE
      journal-NAME.db          one sync's journal (SQLite, WAL)
      clean-NAME               the watcher of NAME stopped with nothing unacked
      tmp/                     the syncer's file lists and stderr captures
      cm-N                     ssh ControlPath of the config's N-th login (user, host, port,
                               key, options)

Unix socket paths are limited to 107 bytes, so a long ``state_dir`` fails
early with a clear message.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from pathlib import Path
from typing import IO

__all__ = ["AlreadyRunning", "StateDir", "is_running", "read_pid"]

_SUN_PATH_MAX = 107


class AlreadyRunning(RuntimeError):
    """Another supervisor holds the lock."""


class StateDir:
    """Paths inside one ``state_dir``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def endpoint(self, name: str) -> str:
        """The ``ipc://`` address of socket ``name``."""
        sock = f"{self.path}/{name}.sock"
        if len(sock.encode()) > _SUN_PATH_MAX:
            raise OSError(f"socket path too long for a unix socket ({len(sock)} bytes): "
                          f"{sock}; choose a shorter settings.state_dir")
        return f"ipc://{sock}"

    @property
    def lock(self) -> Path:
        return self.path / "lock"

    @property
    def tmp(self) -> Path:
        return self.path / "tmp"

    def journal(self, sync: str) -> Path:
        return self.path / f"journal-{sync}.db"

    def control_path(self, login: int) -> str | None:
        """The ssh ControlPath of the ``login``-th login of the config (the
        syncer numbers them: every target with the same ssh command shares
        one), or None if too long for a unix socket (ssh then connects
        directly every time). ssh binds a temporary name first, the path
        and 17 characters more, and a socket's path holds 107 bytes."""
        path = f"{self.path}/cm-{login}"
        return path if len(os.fsencode(path)) + 17 <= 107 else None

    def create(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    def acquire_lock(self) -> IO[str]:
        """Hold an exclusive flock on ``lock`` for the life of the process;
        the kernel drops it however we die, so no stale lock is possible."""
        fd = _open_lock(self.lock, os.O_RDWR | os.O_CREAT)
        fh = open(fd, "r+")  # noqa: SIM115 - held until exit
        # `syncsup status` takes a shared lock for an instant to see whether
        # we run; retry briefly so that a status poll never makes a start fail.
        for attempt in range(20):
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                fh.seek(0)
                other = fh.read().strip()
                if other or attempt == 19:
                    fh.close()
                    raise AlreadyRunning(f"syncsup is already running with state_dir "
                                         f"{self.path} (pid {other or '?'})") from None
                time.sleep(0.05)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        return fh


def _open_lock(path: Path, flags: int) -> int:
    """The lock file, never through a symlink, never blocking on a fifo,
    and only a regular file: a state_dir another account can write (the
    service user's, read by root's CLI) must not make root write, read or
    hang on anything else."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file")
    return fd


def is_running(state_dir: Path) -> bool:
    """True if a supervisor holds the lock of ``state_dir``."""
    try:
        fd = _open_lock(StateDir(state_dir).lock, os.O_RDONLY)
    except OSError:
        return False  # none, or not a lock a daemon of ours made
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def read_pid(state_dir: Path) -> str | None:
    """The pid the running supervisor wrote in its lock (a short string, as
    written), or None."""
    try:
        fd = _open_lock(StateDir(state_dir).lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    return text if text.isdigit() else None
