"""The two tools under test: config writers, start, crash checks and stop.

A :class:`Tool` runs one daemon (``python3 -m syncsup start CONFIG`` or
``lsyncd -nodaemon CONFIG``) in its own session, with its output in
``WORK/tool.log``.  Both get the same settings for every sync: delay 0, rsync
in archive mode, one rsync at a time per target (both tools' default).  A
sync is a source and its targets (:data:`SyncSpec`); syncsup takes one
``[[sync]]`` block per sync with all its targets, Lsyncd one ``sync {}``
block per (source, target) pair, since an Lsyncd sync has one target.

syncsup's config and environment come from ``tests.helpers.daemon`` (the
same ``[[sync]]`` tables and ``PYTHONPATH`` the integration tests use), so
the bench runs the syncsup of this checkout, not whatever is installed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from bench.procs import cmdline, is_dead, start_time, tree_pids
from tests.helpers.daemon import sync_entry, syncsup_argv, syncsup_env, write_config
from tests.helpers.sshd import Sshd


class BenchFailure(Exception):
    """A tool crashed or did not converge: the run exits non-zero."""


class ToolCrashed(BenchFailure):
    """The tool's main process exited while it should have been working."""


class NotConverged(BenchFailure):
    """A target was still not identical to its source at the timeout."""


class Remote:
    """An ssh target on the throw-away sshd: ``path`` is local to this machine."""

    def __init__(self, sshd: Sshd, path: Path) -> None:
        self.sshd = sshd
        self.path = path


Target = Path | Remote
SyncSpec = tuple[Path, list[Target]]

LIVE: list[Tool] = []
"""Tools started and not yet stopped: the runner stops them on an interrupt."""


def target_path(t: Target) -> Path:
    """Where a target's files land on this machine."""
    return t.path if isinstance(t, Remote) else t


class Tool:
    """One daemon process tree; subclasses say how to configure and start it."""

    name = "?"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = work / "tool.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._logf: IO[bytes] | None = None
        self.crashed: str | None = None
        self.started_at = 0.0

    # ----------------------------------------------------------- lifecycle
    def write_config(self, syncs: list[SyncSpec]) -> Path:
        raise NotImplementedError

    def argv(self, config: Path) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def start(self, syncs: list[SyncSpec]) -> None:
        """Write the config and start the daemon; ``started_at`` is the
        monotonic time just before the process was created."""
        config = self.write_config(syncs)
        self._logf = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv(config),
            stdin=subprocess.DEVNULL,
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            cwd=self.work,
            env=self.env(),
            start_new_session=True,
        )
        LIVE.append(self)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check(self) -> None:
        """Raise :class:`ToolCrashed` if the main process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ToolCrashed(
                f"{self.name} exited with {self.proc.returncode} while working\n{self.log_tail()}"
            )

    def log_tail(self, n: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def log_text(self) -> str:
        return _read(self.log)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait, then SIGKILL of whatever of its tree is left; reaps it."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if self in LIVE:
            LIVE.remove(self)
        tree = [(p, start_time(p)) for p in tree_pids(proc.pid)]
        rc = proc.poll()
        if rc is None:
            for p, _ in tree:  # a frozen process cannot stop
                try:
                    os.kill(p, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"  ! {self.name} did not stop within {timeout:.0f}s of SIGTERM: SIGKILL")
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                rc = proc.wait(10)
        else:
            self.crashed = f"exited {rc}"
        deadline = time.monotonic() + 10
        for p, st in tree[1:]:
            if st is None:
                continue
            while start_time(p) == st and not is_dead(p) and time.monotonic() < deadline:
                time.sleep(0.05)
            if start_time(p) == st and not is_dead(p):
                print(f"  ! {self.name}: pid {p} survived the stop: SIGKILL")
                os.kill(p, signal.SIGKILL)
        if self._logf:
            self._logf.close()
        return rc

    def freeze_pid(self) -> int:
        """The process that reads inotify events."""
        raise NotImplementedError


class Syncsup(Tool):
    name = "syncsup"

    def write_config(self, syncs: list[SyncSpec]) -> Path:
        """One ``[[sync]]`` per source: ``b`` alone, ``s000``... for several."""
        blocks = []
        for i, (source, targets) in enumerate(syncs):
            remote = [t for t in targets if isinstance(t, Remote)]
            ssh: dict[str, Any] | None = None
            if remote:
                s = remote[0].sshd
                ssh = {"host": s.host, "user": s.user, **s.ssh_config()}
            blocks.append(
                sync_entry(
                    source,
                    [target_path(t) for t in targets],
                    name="b" if len(syncs) == 1 else f"s{i:03d}",
                    delay=0,
                    mode="rsyncssh" if remote else "rsync",
                    ssh=ssh,
                )
            )
        doc = {
            "settings": {"state_dir": str(self.work / "st"), "log_level": "info"},
            "sync": blocks,
        }
        return write_config(self.work / "sync.toml", doc)

    def argv(self, config: Path) -> list[str]:
        return syncsup_argv("start", config)

    def env(self) -> dict[str, str]:
        return syncsup_env()

    def freeze_pid(self) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for p in tree_pids(self.pid):
                if b"syncsup.watcher" in cmdline(p):
                    return p
            time.sleep(0.05)
        raise ToolCrashed("syncsup: no syncsup.watcher process found")


def _lua_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Lsyncd(Tool):
    name = "lsyncd"

    def write_config(self, syncs: list[SyncSpec]) -> Path:
        """One ``sync {}`` per (source, target): ``default.rsync`` or ``default.rsyncssh``."""
        out = [
            "settings {",
            f"  logfile = {_lua_str(str(self.work / 'lsyncd.log'))},",
            f"  statusFile = {_lua_str(str(self.work / 'lsyncd.status'))},",
            "  nodaemon = true,",
            "  insist = true,",
            "}",
        ]
        for source, targets in syncs:
            for t in targets:
                out += _lsyncd_block(source, t)
        config = self.work / "lsyncd.lua"
        config.write_text("\n".join(out) + "\n")
        return config

    def argv(self, config: Path) -> list[str]:
        return ["lsyncd", "-nodaemon", str(config)]

    def freeze_pid(self) -> int:
        return self.pid

    def log_text(self) -> str:
        return super().log_text() + _read(self.work / "lsyncd.log")


def _lsyncd_block(source: Path, t: Target) -> list[str]:
    if isinstance(t, Remote):
        s = t.sshd
        opts = ", ".join(
            f"{k} = {_lua_str(v)}" for k, v in (o.split("=", 1) for o in s.ssh_options)
        )
        return [
            "sync {",
            "  default.rsyncssh,",
            f"  source = {_lua_str(str(source))},",
            f"  host = {_lua_str(f'{s.user}@{s.host}')},",
            f"  targetdir = {_lua_str(str(t.path))},",
            "  delay = 0,",
            "  rsync = { archive = true },",
            f"  ssh = {{ port = {s.port}, identityFile = {_lua_str(str(s.identity_file))},"
            f" options = {{ {opts} }} }},",
            "}",
        ]
    return [
        "sync {",
        "  default.rsync,",
        f"  source = {_lua_str(str(source))},",
        f"  target = {_lua_str(str(t))},",
        "  delay = 0,",
        "  rsync = { archive = true },",
        "}",
    ]


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


TOOLS: tuple[str, ...] = ("syncsup", "lsyncd")
TOOL_CLASSES: dict[str, type[Tool]] = {"syncsup": Syncsup, "lsyncd": Lsyncd}
