"""Run the real syncsup CLI and daemon from tests: config writing, start/stop, status, kills."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from syncsup import config as cfg
from syncsup import proto
from syncsup.client import NotRunning, request
from syncsup.processes import wait_exited
from syncsup.status import to_json
from syncsup.timings import Timings

from . import toml
from .procs import cmdline_of

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0
COMPONENT_ROLES = ("supervisor", "watcher", "collator", "syncer")
TARGET_STATES = ("startup", "idle", "pending", "syncing", "retrying", "failed")
COMPONENT_STATES = ("starting", "running", "backoff", "degraded", "fatal", "stopped")
LOG_LEVEL = os.environ.get("SYNCSUP_TEST_LOG_LEVEL", "info")
# Where the daemons and CLIs the tests run keep syncsup's compiled modules:
# outside the checkout, in the user's cache (see syncsup_env).
PYCACHE = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
           / "syncsup-tests" / "pycache")

# The daemon's timers for the tests (the config's [timings] table): what a
# test would otherwise wait out in production seconds (a missed heartbeat,
# a wedged agent, a seen-point, a retry of an unreachable target) comes in
# a few seconds. Generous still for a loaded two-core machine: a child that
# is merely slow is never taken for a hung one (10 s without a beat, beats
# every second). A test that needs other values writes its own table;
# ``Daemon.timings`` says what a daemon runs on, so no test copies a number.
TEST_TIMINGS: dict[str, float] = {
    "heartbeat_interval": 1.0,
    "heartbeat_timeout": 10.0,
    "agent_timeout": 5.0,
    "agent_restart": 1.0,
    "seen_delay": 2.0,
    "seen_margin": 1.0,
    "root_poll": 0.5,
    "root_check": 2.0,
    "unwatched_rescan": 2.0,
    "mount_rescan": 5.0,
    "journal_idle": 2.0,
    "resend_after": 2.0,
    "retry_cap": 5.0,
    "stuck_cap": 20.0,
    "master_retry_cap": 5.0,
}


def with_test_timings(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the tests' ``[timings]`` unless it has a table of its own."""
    return doc if "timings" in doc else {**doc, "timings": dict(TEST_TIMINGS)}


# --------------------------------------------------------------------- CLI
def syncsup_env() -> dict[str, str]:
    """The environment for syncsup: the checkout importable even without ``pip install -e``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONUNBUFFERED"] = "1"
    # Bytecode kept between runs, outside the checkout. Where
    # PYTHONDONTWRITEBYTECODE is set (to keep checkouts free of
    # __pycache__), each of the suite's hundreds of daemons and CLI runs
    # would otherwise compile every syncsup module it imports again: a third
    # of a minimal daemon test's CPU and half of its time to ready. An
    # installed syncsup has its bytecode; this gives the tests the same.
    env.setdefault("PYTHONPYCACHEPREFIX", str(PYCACHE))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def syncsup_argv(*args: str | os.PathLike) -> list[str]:
    return [sys.executable, "-m", "syncsup", *map(os.fspath, args)]


def run_cli(*args: str | os.PathLike, timeout: float = 30, cwd: os.PathLike | str | None = None):
    """Run ``python -m syncsup ARGS`` to completion; text output (undecodable bytes replaced)."""
    return subprocess.run(
        syncsup_argv(*args),
        capture_output=True,
        text=True,
        errors="replace",
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        cwd=cwd,
        env=syncsup_env(),
    )


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml.dumps(doc))
    return path


def sync_entry(
    source: os.PathLike | str,
    targets: list[str | os.PathLike],
    *,
    name: str = "www",
    delay: float = 0,
    delete: bool | str = True,
    exclude: list[str] | None = None,
    ssh: dict[str, Any] | None = None,
    mode: str = "rsync",
) -> dict[str, Any]:
    """One ``[[sync]]`` table."""
    d: dict[str, Any] = {
        "name": name,
        "source": os.fspath(source),
        "mode": mode,
        "delay": delay,
        "delete": delete,
        "targets": [os.fspath(t) for t in targets],
    }
    if exclude is not None:
        d["exclude"] = exclude
    if ssh is not None:
        d["ssh"] = ssh
    return d


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    """``proc.wait(timeout)``, woken by the exit itself (a pidfd): Popen's
    own wait with a timeout polls, up to 50 ms late, at every stop."""
    deadline = time.monotonic() + timeout
    wait_exited(proc.pid, timeout)
    return proc.wait(max(0.0, deadline - time.monotonic()))


# ------------------------------------------------------------------ daemon
class Daemon:
    """A ``syncsup start CONFIG`` process running in the foreground, as systemd would run it.

    ``doc`` None: the test does not write the config (``start_argv`` makes
    the daemon write it, at ``config``); ``env`` is the daemon's environment.
    """

    def __init__(self, tmp_path: Path, doc: dict[str, Any] | None,
                 config: Path | None = None) -> None:
        self.tmp_path = tmp_path
        self.doc = doc
        config = config or tmp_path / "syncsup.toml"
        if doc is not None:
            doc = self.doc = with_test_timings(doc)
        self.config = write_config(config, doc) if doc is not None else config
        self.env = syncsup_env()
        self.log_path = tmp_path / f"daemon-{self.config.stem}.log"
        self.cwd = tmp_path / "cwd"
        self.cwd.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.stopped_rc: int | None = None

    @property
    def timings(self) -> Timings:
        """The timers this daemon runs on (its config's ``[timings]``)."""
        return Timings(**(self.doc or {}).get("timings", {}))

    # lifecycle ------------------------------------------------------------
    def start_argv(self) -> list[str]:
        return syncsup_argv("start", self.config)

    def start(self, wait: bool = True, timeout: float = READY_TIMEOUT) -> Daemon:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.start_argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        if wait:
            self.wait_ready(timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _fail_if_exited(self, what: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"syncsup start exited with {self.proc.returncode} while {what}\n{self.log_tail()}"
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and require exit status 0 within ``timeout`` seconds."""
        assert self.proc is not None, "daemon was never started"
        self._fail_if_exited("it should have been running (before stop)")
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = wait_exit(self.proc, timeout)
        except subprocess.TimeoutExpired:
            self._kill_hard()
            raise AssertionError(
                f"syncsup start did not exit within {timeout}s of {signal.Signals(sig).name}\n"
                + self.log_tail()
            ) from None
        self.stopped_rc = rc
        assert rc == 0, (
            f"syncsup start exited {rc} after {signal.Signals(sig).name} "
            f"({time.monotonic() - t0:.1f}s)\n{self.log_tail()}"
        )
        return rc

    def _kill_hard(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    # status ---------------------------------------------------------------
    def status_raw(self, as_json: bool = True, timeout: float = 30):
        args = ["status", "--json", self.config] if as_json else ["status", self.config]
        return run_cli(*args, timeout=timeout)

    def ask_status(self, timeout: float = 30) -> dict[str, Any]:
        """The status as ``syncsup status --json CONFIG`` prints it, asked
        over the daemon's control socket by this process, through the
        client code the CLI runs. Why not the CLI: the tests poll status
        thousands of times, and a CLI per poll costs 0.2 CPU seconds, a
        third of what a whole daemon test used to cost; the command itself
        is tested by test_cli and test_ops_status. Raises AssertionError
        with the CLI's message where it would exit non-zero."""
        try:
            conf = cfg.load(os.fspath(self.config), client=True)
        except cfg.ConfigError as exc:
            raise AssertionError(f"status: config error: {exc}") from None
        try:
            reply = request(conf, proto.StatusRequest(), timeout=timeout)
        except (NotRunning, TimeoutError) as exc:
            raise AssertionError(f"status: {exc}") from None
        if not isinstance(reply, proto.StatusReply):
            raise AssertionError(f"status: unexpected answer {type(reply).__name__}")
        # as the CLI prints it and a reader parses it
        doc: dict[str, Any] = json.loads(json.dumps(to_json(reply.status)))
        return doc

    def status(self) -> dict[str, Any]:
        return self.ask_status()

    def try_status(self) -> dict[str, Any] | None:
        try:
            return self.ask_status(timeout=15)
        except AssertionError:
            return None

    def targets(self, st: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        st = st if st is not None else self.status()
        return [t for s in st.get("syncs", []) for t in s.get("targets", [])]

    def wait_for(
        self, pred, what: str, timeout: float = READY_TIMEOUT, interval: float = 0.3
    ) -> dict:
        """The status once ``pred`` holds for it. Asked soon, then less and
        less often, up to every ``interval`` seconds: most waits (a start's
        initial sync, most of all) end within a few tenths of a second, and
        a fixed 0.3 s pace added 0.15 s on average to each, where a status
        costs about a millisecond of CPU on either side."""
        deadline = time.monotonic() + timeout
        pause = min(interval, 0.02)
        last: dict | None = None
        while True:
            self._fail_if_exited(f"waiting for {what}")
            st = self.try_status()
            if st is not None:
                last = st
                if pred(st):
                    return st
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {what}; last status:\n"
                    f"{json.dumps(last, indent=1)}\n{self.log_tail()}"
                )
            time.sleep(pause)
            pause = min(interval, pause * 1.5)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict:
        """Status answers and no target is still in its initial sync ("startup")."""

        def ready(st: dict) -> bool:
            ts = self.targets(st)
            return (
                bool(st.get("syncs")) and bool(ts) and all(t.get("state") != "startup" for t in ts)
            )

        return self.wait_for(ready, "every target past its initial sync", timeout)

    def wait_idle(self, timeout: float = READY_TIMEOUT) -> dict:
        def idle(st: dict) -> bool:
            ts = self.targets(st)
            return bool(ts) and all(t.get("state") == "idle" and not t.get("pending") for t in ts)

        return self.wait_for(idle, "every target idle", timeout)

    def components(self, role: str | None = None, st: dict | None = None) -> list[dict[str, Any]]:
        st = st if st is not None else self.status()
        return [c for c in st.get("components", []) if role is None or c.get("role") == role]

    def kill_component(
        self, role: str, rng: random.Random | None = None, sig: int = signal.SIGKILL
    ):
        """SIGKILL a running ``role`` component (pid from status); returns (name, pid) or None."""
        st = self.try_status()
        if st is None:
            return None
        cands = [
            c for c in self.components(role, st) if c.get("pid") and c.get("state") == "running"
        ]
        if not cands:
            return None
        c = (rng or random).choice(cands)
        pid = int(c["pid"])
        # guard against pid reuse: it must be one of ours
        if os.fsencode(self.config) not in b"\0".join(cmdline_of(pid)):
            return None
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return None
        return c["name"], pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 80) -> str:
        lines = self.log_text().splitlines()[-n:]
        return f"--- last {len(lines)} lines of {self.log_path}:\n" + "\n".join(lines)

    def describe(self) -> str:
        st = self.try_status() if self.running else None
        return f"status: {json.dumps(st, indent=1)}\n{self.log_tail()}"
