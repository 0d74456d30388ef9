"""``max_processes``: a global cap on concurrent transfers across all syncs.

Each syncer is its own process, so the cap is a set of N lock files in
``state_dir/slots``; a transfer runs while it holds an flock on one of them.
The kernel drops the lock when the holder dies, so a killed syncer can never
leak a token.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

__all__ = ["Tokens"]


class Tokens:
    def __init__(self, directory: Path, count: int) -> None:
        self.directory = directory
        self.count = count
        if count:
            directory.mkdir(mode=0o700, exist_ok=True)

    def acquire(self) -> IO[str] | None:
        """A held token (close it to release), or None if all are taken.
        With no cap configured every call succeeds."""
        if not self.count:
            return open("/dev/null")
        for i in range(self.count):
            fh = open(self.directory / str(i), "a")  # noqa: SIM115 - held while transferring
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fh
            except BlockingIOError:
                fh.close()
        return None
