"""The real :class:`~syncsup.syncer.core.MasterPort`: each remote target's
ssh master connection (``ssh -M``), in its own process group so that
ending it ends whatever it started, ended with the step grace. When one is
started again is :class:`~syncsup.syncer.core.Masters`' decision."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from syncsup import config as cfg
from syncsup.processes import stop_group
from syncsup.syncer.argv import ssh_argv
from syncsup.syncer.core import Key, Process
from syncsup.syncer.transfer import spawn

__all__ = ["SshMasters"]


class SshMasters:
    """``where(key)`` gives the sync, the target and the control path of a
    remote target."""

    def __init__(self, where: Callable[[Key], tuple[cfg.Sync, cfg.Target, str]],
                 grace: float) -> None:
        self.where, self.grace = where, grace

    def start(self, key: Key) -> Process:
        sync, target, control_path = self.where(key)
        return spawn([*ssh_argv(sync), "-M", "-N", "-o", f"ControlPath={control_path}", "-o",
                      "ControlPersist=no", "--", target.login])

    def stop(self, process: Process) -> None:
        assert isinstance(process, subprocess.Popen)
        stop_group(process, self.grace)
