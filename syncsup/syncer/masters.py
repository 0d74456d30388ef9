"""The real :class:`~syncsup.syncer.core.MasterPort`: the ssh master
connection (``ssh -M``) of each login the remote targets use, in its own process group so that
ending it ends whatever it started, ended with the step grace. When one is
started again is :class:`~syncsup.syncer.core.Masters`' decision."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from syncsup import config as cfg
from syncsup.processes import stop_group
from syncsup.syncer.argv import ssh_argv
from syncsup.syncer.core import Conn, Process
from syncsup.syncer.transfer import spawn

__all__ = ["SshMasters"]


class SshMasters:
    """``where(conn)`` gives a sync and a remote target that use the
    connection whose control path is ``conn``."""

    def __init__(self, where: Callable[[Conn], tuple[cfg.Sync, cfg.Target]],
                 grace: float) -> None:
        self.where, self.grace = where, grace

    def start(self, conn: Conn) -> Process:
        sync, target = self.where(conn)
        # A master that was killed leaves its socket behind, and a new one
        # will not listen where a file is ("ControlSocket ... already
        # exists, disabling multiplexing"): it would run, and every session
        # of the login would connect directly for as long as it lives. The
        # path is ours alone (state_dir is 0700, its lock keeps one daemon
        # to it) and no master of it runs now (this is called only once
        # the last one ended).
        try:
            os.unlink(conn)
        except FileNotFoundError:
            pass
        return spawn([*ssh_argv(sync), "-M", "-N", "-o", f"ControlPath={conn}", "-o",
                      "ControlPersist=no", "--", target.login])

    def stop(self, process: Process) -> None:
        assert isinstance(process, subprocess.Popen)
        stop_group(process, self.grace)
