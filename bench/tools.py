"""The two tools under test: config writers, start, crash checks and stop.

A :class:`Tool` runs one daemon (``python3 -m syncsup start CONFIG`` or
``lsyncd -nodaemon CONFIG``) in its own session, with its output in
``WORK/tool.log``.  All get the same settings for every sync: delay 0 (or
the scenario's :attr:`Tool.delay`), rsync
in archive mode, one rsync at a time per target (both tools' default).  A
sync is a source and its targets (:data:`SyncSpec`); syncsup takes one
``[[sync]]`` block per sync with all its targets, Lsyncd one ``sync {}``
block per (source, target) pair, since an Lsyncd sync has one target.

Three tools, by name (:data:`TOOLS`):

* ``syncsup``: syncsup as configured by default, so small changes go
  through each target's *agent* (``agent_max_size`` = 1 MiB): in the syncer
  itself for a local target, a ``syncsup-target ROOT agent`` session over
  the ssh master for a remote one;
* ``syncsup-rsync``: the same with ``agent_max_size = 0``: rsync for
  everything, one rsync per batch;
* ``lsyncd``: Lsyncd.

syncsup's config and environment come from ``tests.helpers.daemon`` (the
same ``[[sync]]`` tables and ``PYTHONPATH`` the integration tests use), so
the bench runs the syncsup of this checkout, not whatever is installed.  The
remote agent is started through ``[sync.ssh] target_command``, a small
script that runs this checkout's ``syncsup.target`` (the sshd is on this
machine): a ``syncsup-target`` on ``PATH`` may be another checkout's.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from bench.procs import children_map, cmdline, is_dead, start_time, tree_pids
from syncsup.config import default_max_processes
from tests.helpers.daemon import (
    REPO,
    run_cli,
    sync_entry,
    syncsup_argv,
    syncsup_env,
    write_config,
)
from tests.helpers.rsyncd import RsyncDaemon
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


class Daemon:
    """A module of the throw-away rsync daemon: ``path`` is where its files
    land on this machine, ``url`` the target both tools are given."""

    def __init__(self, rsyncd: RsyncDaemon, sub: str) -> None:
        self.rsyncd = rsyncd
        self.url = rsyncd.url(sub)
        self.path = rsyncd.module_path / sub


Target = Path | Remote | Daemon
SyncSpec = tuple[Path, list[Target]]

LIVE: list[Tool] = []
"""Tools started and not yet stopped: the runner stops them on an interrupt."""


def target_path(t: Target) -> Path:
    """Where a target's files land on this machine."""
    return t.path if isinstance(t, Remote | Daemon) else t


def _spec(t: Target) -> Path | str:
    """What syncsup's config says for ``t``."""
    return t.url if isinstance(t, Daemon) else target_path(t)


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
        self.config: Path | None = None
        self.wrap: list[str] = []
        """Prepended to the command line (the recovery scenario runs the tool under strace)."""
        self.rsync_binary: str | None = None
        """The rsync program the tool runs, when not ``rsync`` from ``PATH``."""
        self.delay = 0.0
        """Every sync's ``delay`` (the steady scenario sets it; the others keep 0)."""
        self._terminated: float | None = None
        self._tree: list[tuple[int, int | None]] = []

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
        config = self.config = self.write_config(syncs)
        self._logf = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [*self.wrap, *self.argv(config)],
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

    def daemon_pid(self, pid: int) -> int:
        """The daemon's own process: ``pid`` (the process started), or its
        child when it runs under a wrapper (strace), which then reaps it
        and exits."""
        if self.wrap:
            kids = children_map().get(pid, [])
            if kids:
                return min(kids)
        return pid

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

    def terminate(self) -> None:
        """Ask the daemon to stop (SIGTERM, after SIGCONT to its whole tree:
        a frozen process cannot stop) without waiting; :meth:`stop` then
        waits and reaps.  Once only."""
        if self.proc is None or self._terminated is not None:
            return
        proc = self.proc
        self._tree = [(p, start_time(p)) for p in tree_pids(proc.pid)]
        self._terminated = time.monotonic()
        if proc.poll() is not None:
            self.crashed = f"exited {proc.returncode}"
            return
        for p, _ in self._tree:
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
        try:
            os.kill(self.daemon_pid(proc.pid), signal.SIGTERM)
        except ProcessLookupError:
            pass

    def exited(self) -> bool:
        """The main process has exited (or was never started): :meth:`stop`
        will not wait for it."""
        return self.proc is None or self.proc.poll() is not None

    def stop(self, timeout: float = 20.0) -> int | None:
        """:meth:`terminate` if not done yet, wait up to ``timeout`` seconds
        from then, then SIGKILL of whatever of its tree is left; reaps it."""
        if self.proc is None:
            return None
        self.terminate()
        assert self._terminated is not None
        proc, self.proc = self.proc, None
        if self in LIVE:
            LIVE.remove(self)
        left = timeout - (time.monotonic() - self._terminated)
        try:
            rc = proc.wait(max(0.1, left))
        except subprocess.TimeoutExpired:
            print(f"  ! {self.name} did not stop within {timeout:.0f}s of SIGTERM: SIGKILL")
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            rc = proc.wait(10)
        deadline = time.monotonic() + 10
        for p, st in self._tree[1:]:
            if st is None:
                continue
            while start_time(p) == st and not is_dead(p) and time.monotonic() < deadline:
                time.sleep(0.05)
            if start_time(p) == st and not is_dead(p):
                print(f"  ! {self.name}: pid {p} survived the stop: SIGKILL")
                os.kill(p, signal.SIGKILL)
        self._terminated = None
        if self._logf:
            self._logf.close()
        return rc

    def freeze_pid(self) -> int:
        """The process that reads inotify events."""
        raise NotImplementedError

    def expect_transport(self, remote_roots: list[Path] | None = None) -> None:
        """syncsup: fail unless its targets use the transport measured (Lsyncd: nothing)."""


class Syncsup(Tool):
    name = "syncsup"
    agent_max_size: int | None = None
    """``None``: syncsup's default (the agent for files up to 1 MiB)."""
    max_processes: int | None = None
    """``[settings] max_processes`` (``None``: syncsup's default; ``bench/run.py
    --max-processes``)."""

    def write_config(self, syncs: list[SyncSpec]) -> Path:
        """One ``[[sync]]`` per source: ``b`` alone, ``s000``... for several."""
        blocks = []
        for i, (source, targets) in enumerate(syncs):
            remote = [t for t in targets if isinstance(t, Remote)]
            ssh: dict[str, Any] | None = None
            if remote:
                s = remote[0].sshd
                ssh = {"host": s.host, "user": s.user, **s.ssh_config(),
                       "target_command": str(target_command(self.work))}
            block = sync_entry(
                source,
                [_spec(t) for t in targets],
                name="b" if len(syncs) == 1 else f"s{i:03d}",
                delay=self.delay,
                mode="rsyncssh" if remote else "rsync",
                ssh=ssh,
            )
            daemons = [t for t in targets if isinstance(t, Daemon)]
            if daemons:
                block["rsyncd"] = {"password_file": str(daemons[0].rsyncd.password_file)}
            if self.agent_max_size is not None:
                block["agent_max_size"] = self.agent_max_size
            if self.rsync_binary is not None:
                block["rsync"] = {"binary": self.rsync_binary}
            blocks.append(block)
        settings: dict[str, Any] = {"state_dir": str(self.work / "st"), "log_level": "info"}
        if self.max_processes is not None:
            settings["max_processes"] = self.max_processes
        doc = {"settings": settings, "sync": blocks}
        return write_config(self.work / "sync.toml", doc)

    def argv(self, config: Path) -> list[str]:
        return syncsup_argv("start", config)

    def env(self) -> dict[str, str]:
        return syncsup_env()

    def status(self) -> dict[str, Any]:
        """``syncsup status --json`` of the running daemon."""
        assert self.config is not None
        r = run_cli("status", "--json", self.config, timeout=30)
        if r.returncode != 0:
            raise BenchFailure(f"{self.name}: status --json exited {r.returncode}: "
                               f"{r.stdout}{r.stderr}")
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc

    def transports(self) -> list[str]:
        """Each target's ``transport`` in status (``agent`` or ``rsync``)."""
        return [str(t.get("transport")) for s in self.status().get("syncs", [])
                for t in s.get("targets", [])]

    def expect_transport(self, remote_roots: list[Path] | None = None) -> None:
        """Fail loudly unless every target uses the transport this tool is
        about: ``agent`` for ``syncsup``, ``rsync`` for ``syncsup-rsync``.

        For remote targets status alone is not proof (a remote agent that
        has not been tried yet also reads ``agent``), so agent processes
        must be running too (the sshd is on this machine): one for each
        remote root, or as many as ``max_processes`` lets be open at once
        (it bounds the sessions), and the log must not say the agent was
        missing."""
        want = "rsync" if self.agent_max_size == 0 else "agent"
        got = self.transports()
        if not got or any(t != want for t in got):
            raise BenchFailure(f"{self.name}: transport in status is {got}, expected {want} "
                               f"for every target\n{self.log_tail()}")
        if want != "agent" or not remote_roots:
            return
        if "no agent there" in self.log_text():
            raise BenchFailure(f"{self.name}: the remote agent did not start\n{self.log_tail()}")
        cmds = [cmdline(p) for p in _all_pids()]
        cap = (self.max_processes if self.max_processes is not None
               else default_max_processes(os.cpu_count()))
        served = [root for root in remote_roots
                  if any(b"syncsup.target" in c and os.fsencode(root) + b"\0agent" in c
                         for c in cmds)]
        want = len(remote_roots) if not cap else min(cap, len(remote_roots))
        if len(served) < want:
            missing = sorted(set(remote_roots) - set(served))[:3]
            raise BenchFailure(f"{self.name}: agent processes for {len(served)} of "
                               f"{len(remote_roots)} remote roots, {want} expected; none for "
                               f"{', '.join(map(str, missing))}\n{self.log_tail()}")

    def freeze_pid(self) -> int:
        return self.component_pid("watcher")

    def component_pid(self, role: str) -> int:
        """The pid of ``syncsup.ROLE`` (watcher, collator, syncer) in the tree."""
        needle = f"syncsup.{role}".encode()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for p in tree_pids(self.pid):
                if needle in cmdline(p):
                    return p
            time.sleep(0.05)
        raise ToolCrashed(f"syncsup: no {needle.decode()} process found")


class SyncsupRsync(Syncsup):
    """syncsup with ``agent_max_size = 0``: every change by rsync."""

    name = "syncsup-rsync"
    agent_max_size = 0


def target_command(work: Path) -> Path:
    """A script running this checkout's ``syncsup.target`` with this Python:
    the remote agent's ``target_command`` (the throw-away sshd is local, and
    its sessions get a fresh environment, hence ``PYTHONPATH`` here)."""
    script = work / "syncsup-target"
    script.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={shlex.quote(str(REPO))} exec {shlex.quote(sys.executable)} "
        '-P -m syncsup.target "$@"\n'
    )
    os.chmod(script, 0o755)
    return script


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


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
                out += _lsyncd_block(source, t, self.rsync_binary, self.delay)
        config = self.work / "lsyncd.lua"
        config.write_text("\n".join(out) + "\n")
        return config

    def argv(self, config: Path) -> list[str]:
        return ["lsyncd", "-nodaemon", str(config)]

    def freeze_pid(self) -> int:
        return self.pid

    def log_text(self) -> str:
        return super().log_text() + _read(self.work / "lsyncd.log")


def _lsyncd_block(source: Path, t: Target, binary: str | None, delay: float) -> list[str]:
    rsync = "  rsync = { archive = true"
    if isinstance(t, Daemon):
        rsync += f", password_file = {_lua_str(str(t.rsyncd.password_file))}"
    rsync += f", binary = {_lua_str(binary)} }}," if binary else " },"
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
            f"  delay = {delay:g},",
            rsync,
            f"  ssh = {{ port = {s.port}, identityFile = {_lua_str(str(s.identity_file))},"
            f" options = {{ {opts} }} }},",
            "}",
        ]
    return [
        "sync {",
        "  default.rsync,",
        f"  source = {_lua_str(str(source))},",
        f"  target = {_lua_str(t.url if isinstance(t, Daemon) else str(t))},",
        f"  delay = {delay:g},",
        rsync,
        "}",
    ]


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


TOOLS: tuple[str, ...] = ("syncsup", "syncsup-rsync", "lsyncd")
"""Every tool, in the order of the table's columns; a scenario runs some of them."""
TOOL_CLASSES: dict[str, type[Tool]] = {
    "syncsup": Syncsup, "syncsup-rsync": SyncsupRsync, "lsyncd": Lsyncd,
}
