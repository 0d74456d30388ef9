#!/usr/bin/env python3
"""syncsup against Lsyncd, side by side, on identical workloads.

    python3 bench/run.py                 # full run, 3 runs per scenario
    python3 bench/run.py --smoke         # small sizes, 1 run, about a minute
    python3 bench/run.py --runs 1 --only latency burst

Each scenario runs syncsup (``python3 -m syncsup start CONFIG``) and Lsyncd
(``lsyncd -nodaemon CONFIG``) back to back on the same workload, with the same
settings (delay 0, rsync archive mode, same source and targets), checks that
the target is identical to the source (``rsync -n --checksum --delete``
itemizing nothing: type, mode, owner, content, symlink targets), and prints
the median of every figure for both tools, the ratio syncsup / Lsyncd and
the goal from issue 7 with PASS/MISS.

Results: ``bench/results/latest.json`` and ``latest.md`` (plus ``smoke.*`` or
``full.*``). The exit status is non-zero only when a tool crashed or did not
converge; speed never fails the run (CI runs ``--smoke``).

Lsyncd is installed with apt-get when it is missing. The ssh scenarios use a
throw-away sshd on 127.0.0.1 (``tests/helpers/sshd.py``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TOOLS = ("syncsup", "lsyncd")

SIZES = {
    "smoke": {
        "latency_local": 10,
        "latency_ssh": 6,
        "bursts": [2000],
        "overflow_files": 9000,
        "startup": (5000, 200),
        "fanout": [8, 32],
        "fanout_files": 300,
        "rename_mb": 10,
        "idle_s": 4.0,
        "timeout": 120.0,
    },
    "full": {
        "latency_local": 100,
        "latency_ssh": 40,
        "bursts": [20000, 100000],
        "overflow_files": 20000,
        "startup": (100000, 4000),
        "fanout": [8, 32],
        "fanout_files": 2000,
        "rename_mb": 100,
        "idle_s": 60.0,
        "timeout": 600.0,
    },
}
SCENARIOS = ("latency", "burst", "overflow", "startup", "fanout", "rename", "idle")


# ======================================================================= errors
class BenchFailure(Exception):
    """A tool crashed or did not converge: the run exits non-zero."""


class ToolCrashed(BenchFailure):
    pass


class NotConverged(BenchFailure):
    pass


# ==================================================================== /proc
def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # fields after "comm)": index 0 is state (field 3)
    return data[data.rindex(b")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        f = _stat_fields(int(d))
        if f is None:
            continue
        kids.setdefault(int(f[1]), []).append(int(d))
    return kids


def tree_pids(root: int) -> list[int]:
    kids = children_map()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def start_time(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[19]) if f else None


def tree_cpu(root: int) -> float:
    """CPU seconds (user+system) of ``root`` and all live descendants, including
    the children each of them already reaped (cutime/cstime)."""
    ticks = 0
    for pid in tree_pids(root):
        f = _stat_fields(pid)
        if f is None:
            continue
        ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def tree_rss_kb(root: int) -> int:
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def lo_rx_bytes() -> int:
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[0])
    return 0


def processes_mentioning(path: str) -> list[int]:
    p = os.fsencode(path)
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != me:
            c = cmdline(int(d))
            if p in c:
                f = _stat_fields(int(d))
                if f and f[0] not in (b"Z", b"X"):
                    out.append(int(d))
    return out


# ==================================================================== trees
def count_entries(root: Path | str) -> int:
    """Entries (files, dirs, symlinks) below ``root``, without stat calls; -1 if missing."""
    n = 0
    try:
        stack = [os.fspath(root)]
        while stack:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    n += 1
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
    except FileNotFoundError:
        return -1 if n == 0 else n
    return n


def tree_diff(src: Path, dst: Path, limit: int = 10) -> list[str]:
    """What rsync would change to make ``dst`` equal ``src`` (type, mode, owner,
    content by checksum, symlink targets, extra entries); empty when identical.
    Times are not compared."""
    r = subprocess.run(
        ["rsync", "-rlpgoD", "-n", "-i", "--checksum", "--delete", f"{src}/", f"{dst}/"],
        capture_output=True,
        text=True,
        errors="replace",
    )
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    if r.returncode not in (0, 24):
        lines.append(f"(rsync compare exited {r.returncode}: {r.stderr.strip()[:300]})")
    return lines[:limit] if lines else []


_POOL = ThreadPoolExecutor(4)


def diff_all(src: Path, dsts: list[Path]) -> list[str]:
    """tree_diff of every target (rsync runs in parallel); the first non-empty one."""
    if len(dsts) == 1:
        return tree_diff(src, dsts[0])
    for d in _POOL.map(lambda d: tree_diff(src, d), dsts):
        if d:
            return d
    return []


FILL = os.urandom(96)


def write_file(path: str, i: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"%d\n" % i + FILL)
    finally:
        os.close(fd)


def make_tree(root: Path, files: int, dirs: int, prefix: str = "f") -> None:
    root.mkdir(parents=True, exist_ok=True)
    names = [root / f"d{j:04d}" for j in range(dirs)]
    for d in names:
        d.mkdir(exist_ok=True)
    for i in range(files):
        write_file(f"{names[i % dirs]}/{prefix}{i:06d}", i)


def rm_rf(path: Path) -> None:
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--", os.fspath(path)], check=False)


# ==================================================================== tools
class Remote:
    """An ssh target on the throw-away sshd: ``path`` is local to this machine."""

    def __init__(self, sshd: Any, path: Path) -> None:
        self.sshd = sshd
        self.path = path


class Tool:
    name = "?"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = work / "tool.log"
        self.proc: subprocess.Popen | None = None
        self._logf = None
        self.crashed: str | None = None

    # ----------------------------------------------------------- lifecycle
    def write_config(self, source: Path, targets: list[Path | Remote]) -> Path:
        raise NotImplementedError

    def argv(self, config: Path) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def start(self, source: Path, targets: list[Path | Remote]) -> None:
        config = self.write_config(source, targets)
        self._logf = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
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
        if self.proc is not None and self.proc.poll() is not None:
            raise ToolCrashed(
                f"{self.name} exited with {self.proc.returncode} while working\n{self.log_tail()}"
            )

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

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
            while start_time(p) == st and st is not None and time.monotonic() < deadline:
                f = _stat_fields(p)
                if f and f[0] in (b"Z", b"X"):
                    break
                time.sleep(0.05)
            if start_time(p) == st and st is not None:
                f = _stat_fields(p)
                if f and f[0] not in (b"Z", b"X"):
                    print(f"  ! {self.name}: pid {p} survived the stop: SIGKILL")
                    os.kill(p, signal.SIGKILL)
        if self._logf:
            self._logf.close()
        return rc

    def freeze_pid(self) -> int:
        """The process that reads inotify events."""
        raise NotImplementedError


def _toml_str(s: str) -> str:
    return json.dumps(s)


class Syncsup(Tool):
    name = "syncsup"

    def write_config(self, source: Path, targets: list[Path | Remote]) -> Path:
        remote = [t for t in targets if isinstance(t, Remote)]
        lines = [
            "[settings]",
            f"state_dir = {_toml_str(str(self.work / 'st'))}",
            'log_level = "info"',
            "",
            "[[sync]]",
            'name = "b"',
            f"source = {_toml_str(str(source))}",
            f'mode = "{"rsyncssh" if remote else "rsync"}"',
            "delay = 0",
            "targets = ["
            + ", ".join(_toml_str(str(t.path if isinstance(t, Remote) else t)) for t in targets)
            + "]",
        ]
        if remote:
            sshd = remote[0].sshd
            lines += [
                "",
                "[sync.ssh]",
                f"host = {_toml_str(sshd.host)}",
                f"user = {_toml_str(sshd.user)}",
                f"port = {sshd.port}",
                f"identity_file = {_toml_str(str(sshd.identity_file))}",
                "options = [" + ", ".join(_toml_str(o) for o in sshd.ssh_options) + "]",
            ]
        config = self.work / "sync.toml"
        config.write_text("\n".join(lines) + "\n")
        return config

    def argv(self, config: Path) -> list[str]:
        return [sys.executable, "-m", "syncsup", "start", str(config)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
        )
        env.pop("NOTIFY_SOCKET", None)
        return env

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

    def write_config(self, source: Path, targets: list[Path | Remote]) -> Path:
        out = [
            "settings {",
            f"  logfile = {_lua_str(str(self.work / 'lsyncd.log'))},",
            f"  statusFile = {_lua_str(str(self.work / 'lsyncd.status'))},",
            "  nodaemon = true,",
            "  insist = true,",
            "}",
        ]
        for t in targets:
            if isinstance(t, Remote):
                s = t.sshd
                opts = ", ".join(
                    f"{k} = {_lua_str(v)}" for k, v in (o.split("=", 1) for o in s.ssh_options)
                )
                out += [
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
            else:
                out += [
                    "sync {",
                    "  default.rsync,",
                    f"  source = {_lua_str(str(source))},",
                    f"  target = {_lua_str(str(t))},",
                    "  delay = 0,",
                    "  rsync = { archive = true },",
                    "}",
                ]
        config = self.work / "lsyncd.lua"
        config.write_text("\n".join(out) + "\n")
        return config

    def argv(self, config: Path) -> list[str]:
        return ["lsyncd", "-nodaemon", str(config)]

    def freeze_pid(self) -> int:
        return self.pid

    def log_text(self) -> str:
        return super().log_text() + _read(self.work / "lsyncd.log")


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


TOOL_CLASSES: dict[str, type[Tool]] = {"syncsup": Syncsup, "lsyncd": Lsyncd}
LIVE: list[Tool] = []


# ================================================================= waiting
def wait_converged(
    tool: Tool,
    src: Path,
    dsts: list[Path],
    timeout: float,
    quick: Callable[[], bool] | None = None,
    on_poll: Callable[[], None] | None = None,
    poll: float = 0.005,
) -> float:
    """Poll until every target is identical to ``src``; returns the monotonic time
    at which the cheap check (entry counts, or ``quick``) first passed in the
    round that the exact check (rsync --checksum dry run) then confirmed."""
    expected = count_entries(src)
    deadline = time.monotonic() + timeout
    last_diff: list[str] = []
    while True:
        tool.check()
        if on_poll:
            on_poll()
        ok = quick() if quick else all(count_entries(d) == expected for d in dsts)
        if ok:
            t = time.monotonic()
            last_diff = diff_all(src, dsts)
            if not last_diff:
                return t
        if time.monotonic() > deadline:
            counts = [count_entries(d) for d in dsts[:4]]
            raise NotConverged(
                f"{tool.name} did not converge within {timeout:.0f}s (source {expected} entries, "
                f"targets {counts}...; differences: {last_diff[:5]})\n{tool.log_tail()}"
            )
        time.sleep(poll)


def ready(tool: Tool, src: Path, dsts: list[Path], timeout: float) -> None:
    """Startup sync done and an event-driven change flowed (two probes in turn)."""
    for i in (1, 2):
        write_file(os.fspath(src / f".ready{i}"), i)
        wait_converged(tool, src, dsts, timeout)


def pctl(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


# ================================================================ context
class Ctx:
    def __init__(self, mode: str, base: Path) -> None:
        self.mode = mode
        self.size = SIZES[mode]
        self.base = base
        self.timeout = self.size["timeout"]
        self._sshd = None
        self._shared: dict[str, Path] = {}

    def sshd(self):
        if self._sshd is None:
            spec = importlib.util.spec_from_file_location(
                "bench_sshd", REPO / "tests" / "helpers" / "sshd.py"
            )
            assert spec and spec.loader
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            s = mod.Sshd(self.base / "sshd")
            s.start()
            self._sshd = s
        return self._sshd

    def close(self) -> None:
        if self._sshd is not None:
            self._sshd.close()
            self._sshd = None

    def dir(self, *parts: str) -> Path:
        p = self.base.joinpath(*parts)
        rm_rf(p)
        p.mkdir(parents=True)
        return p


class Session:
    """One tool running on a source and targets; stopped (and reaped) on exit."""

    def __init__(
        self, ctx: Ctx, tool_name: str, work: Path, src: Path, targets: list[Path | Remote]
    ):
        self.tool = TOOL_CLASSES[tool_name](work)
        self.src = src
        self.targets = targets
        self.dsts = [t.path if isinstance(t, Remote) else t for t in targets]
        self.ctx = ctx

    def __enter__(self) -> Tool:
        for d in self.dsts:
            d.mkdir(parents=True, exist_ok=True)
        self.tool.start(self.src, self.targets)
        return self.tool

    def __exit__(self, *exc) -> None:
        self.tool.stop()


# ============================================================== scenarios
def sc_latency(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for where in ("local", "ssh"):
        root = ctx.dir(f"lat-{where}-{tool[0]}{run}")
        src, dst = root / "src", root / "dst"
        (src / "lat").mkdir(parents=True)
        target: Path | Remote = Remote(ctx.sshd(), dst) if where == "ssh" else dst
        n = ctx.size[f"latency_{where}"]
        with Session(ctx, tool, root / "w", src, [target]) as t:
            ready(t, src, [dst], ctx.timeout)
            lat = []
            for i in range(n):
                data = b"%d " % i + os.urandom(48).hex().encode() + b"\n"
                rel = f"lat/f{i:05d}"
                with open(src / rel, "wb") as f:
                    f.write(data)
                t0 = time.perf_counter()
                path = os.fspath(dst / rel)
                spins = 0
                while True:
                    try:
                        with open(path, "rb") as f:
                            if f.read() == data:
                                break
                    except FileNotFoundError:
                        pass
                    spins += 1
                    if spins % 200 == 0:
                        t.check()
                        if time.perf_counter() - t0 > ctx.timeout:
                            raise NotConverged(f"{tool}: {rel} never arrived ({where})")
                    time.sleep(0.001)
                lat.append(time.perf_counter() - t0)
                time.sleep(0.02)
            wait_converged(t, src, [dst], ctx.timeout)
        out[f"latency_{where}_p50_ms"] = statistics.median(lat) * 1000
        out[f"latency_{where}_p95_ms"] = pctl(lat, 0.95) * 1000
        rm_rf(root)
    return out


def sc_burst(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for n in ctx.size["bursts"]:
        root = ctx.dir(f"burst-{tool[0]}{run}")
        src, dst = root / "src", root / "dst"
        make_tree(src / "b", 100, 100, prefix="seed")
        with Session(ctx, tool, root / "w", src, [dst]) as t:
            ready(t, src, [dst], ctx.timeout)
            cpu0 = tree_cpu(t.pid)
            t_first = time.monotonic()
            dirs = [os.fspath(src / "b" / f"d{j:04d}") for j in range(100)]
            for i in range(n):
                write_file(f"{dirs[i % 100]}/n{i:06d}", i)
            t_last = time.monotonic()
            t_conv = wait_converged(t, src, [dst], ctx.timeout, poll=0.02)
            cpu1 = tree_cpu(t.pid)
        out[f"burst_{n}_s"] = t_conv - t_last
        out[f"burst_{n}_write_s"] = t_last - t_first
        out[f"cpu_per_1k_{n}_s"] = (cpu1 - cpu0) / (n / 1000)
        rm_rf(root)
    return out


def sc_overflow(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    n = ctx.size["overflow_files"]
    root = ctx.dir(f"ovf-{tool[0]}{run}")
    src, dst = root / "src", root / "dst"
    make_tree(src / "o", 50, 10, prefix="seed")
    with Session(ctx, tool, root / "w", src, [dst]) as t:
        ready(t, src, [dst], ctx.timeout)
        victim = t.freeze_pid()
        vstart = start_time(victim)
        log_before = len(t.log_text())
        dirs = [os.fspath(src / "o" / f"d{j:04d}") for j in range(10)]
        os.kill(victim, signal.SIGSTOP)
        t_stop = time.monotonic()
        written = 0
        try:
            for i in range(n):
                write_file(f"{dirs[i % 10]}/v{i:06d}", i)
                written += 1
                if i % 500 == 0 and time.monotonic() - t_stop > 4.5:
                    break  # syncsup's supervisor kills a component silent for 8 s
            # and change the seeds (appended to: a new size, so rsync's quick check
            # sees them; a same-size rewrite in the same second would never be repaired
            # by Lsyncd's plain rescan, which is not what this scenario measures)
            for j in range(50):
                with open(f"{dirs[j % 10]}/seed{j:06d}", "ab") as f:
                    f.write(b"X")
            time.sleep(max(0.0, 0.5 - (time.monotonic() - t_stop)))
        finally:
            frozen = time.monotonic() - t_stop
            os.kill(victim, signal.SIGCONT)
        t_cont = time.monotonic()
        t_conv = wait_converged(t, src, [dst], ctx.timeout, poll=0.02)
        log = t.log_text()[log_before:]
        restarted = start_time(victim) != vstart
        overflowed = "overflow" in log.lower()
    rm_rf(root)
    return {
        "overflow_s": t_conv - t_cont,
        "overflow_frozen_s": frozen,
        "overflow_files": float(written),
        "overflow_seen": 1.0 if overflowed else 0.0,
        "overflow_restarted": 1.0 if restarted else 0.0,
    }


def shared_startup_tree(ctx: Ctx) -> Path:
    if "startup" not in ctx._shared:
        files, dirs = ctx.size["startup"]
        src = ctx.dir("startup-src")
        t0 = time.monotonic()
        make_tree(src, files, dirs)
        print(f"  (created {files} files in {dirs} directories in {time.monotonic() - t0:.1f}s)")
        ctx._shared["startup"] = src
    return ctx._shared["startup"]


def sc_startup(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    src = shared_startup_tree(ctx)
    root = ctx.dir(f"start-{tool[0]}{run}")
    dst = root / "dst"
    probe = src / f"probe-{tool}-{run}"
    try:
        sess = Session(ctx, tool, root / "w", src, [dst])
        dst.mkdir()
        t0 = time.monotonic()
        with sess as t:
            time.sleep(0.2)
            write_file(os.fspath(probe), run)
            t_conv = wait_converged(t, src, [dst], ctx.timeout, poll=0.05)
            rss = tree_rss_kb(t.pid)
    finally:
        if probe.exists():
            probe.unlink()
    rm_rf(root)
    return {"startup_s": t_conv - t0, "startup_rss_mb": rss / 1024}


def sc_fanout(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    out: dict[str, float] = {}
    m = ctx.size["fanout_files"]
    for k in ctx.size["fanout"]:
        root = ctx.dir(f"fan{k}-{tool[0]}{run}")
        src = root / "src"
        make_tree(src / "f", 100, 10, prefix="seed")
        dsts = [root / f"t{j:02d}" for j in range(k)]
        with Session(ctx, tool, root / "w", src, list(dsts)) as t:
            ready(t, src, dsts, ctx.timeout)
            time.sleep(0.5)
            steady = tree_rss_kb(t.pid)
            peak = [steady]

            def sample(peak: list[int] = peak, t: Session = t) -> None:
                peak[0] = max(peak[0], tree_rss_kb(t.pid))

            dirs = [os.fspath(src / "f" / f"d{j:04d}") for j in range(10)]
            for i in range(m):
                write_file(f"{dirs[i % 10]}/n{i:06d}", i)
                if i % 100 == 0:
                    sample()
            t_last = time.monotonic()
            t_conv = wait_converged(t, src, dsts, ctx.timeout, on_poll=sample, poll=0.02)
        out[f"fanout_{k}_s"] = t_conv - t_last
        out[f"fanout_{k}_rss_mb"] = peak[0] / 1024
        out[f"fanout_{k}_steady_rss_mb"] = steady / 1024
        rm_rf(root)
    return out


def shared_rename_tree(ctx: Ctx) -> Path:
    if "rename" not in ctx._shared:
        src = ctx.dir("rename-src")
        big = src / "big"
        for j in range(4):
            (big / f"s{j}").mkdir(parents=True)
        for i in range(ctx.size["rename_mb"]):
            with open(big / f"s{i % 4}" / f"blob{i:04d}", "wb") as f:
                f.write(os.urandom(1 << 20))
        (src / "other.txt").write_text("unrelated\n")
        ctx._shared["rename"] = src
    return ctx._shared["rename"]


def sc_rename(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    src = shared_rename_tree(ctx)
    if (src / "big2").exists():
        os.rename(src / "big2", src / "big")
    root = ctx.dir(f"ren-{tool[0]}{run}")
    dst = root / "dst"
    try:
        with Session(ctx, tool, root / "w", src, [Remote(ctx.sshd(), dst)]) as t:
            ready(t, src, [dst], ctx.timeout)
            inodes = {
                os.path.relpath(os.path.join(dp, f), dst / "big"): os.lstat(
                    os.path.join(dp, f)
                ).st_ino
                for dp, _, fs in os.walk(dst / "big")
                for f in fs
            }
            time.sleep(0.3)
            lo0 = lo_rx_bytes()
            t0 = time.monotonic()
            os.rename(src / "big", src / "big2")
            n = count_entries(src)

            def quick() -> bool:
                return (
                    not os.path.lexists(dst / "big")
                    and os.path.isdir(dst / "big2")
                    and count_entries(dst) == n
                )

            t_conv = wait_converged(t, src, [dst], ctx.timeout, quick=quick, poll=0.002)
            time.sleep(0.3)  # let the transfers that follow the rename finish
            lo1 = lo_rx_bytes()
            kept = sum(
                1
                for rel, ino in inodes.items()
                if os.path.exists(dst / "big2" / rel) and os.lstat(dst / "big2" / rel).st_ino == ino
            )
    finally:
        if (src / "big2").exists():
            os.rename(src / "big2", src / "big")
    rm_rf(root)
    return {
        "rename_s": t_conv - t0,
        "rename_lo_mb": (lo1 - lo0) / 1e6,
        "rename_inodes_kept_pct": 100.0 * kept / max(1, len(inodes)),
    }


def sc_idle(ctx: Ctx, tool: str, run: int) -> dict[str, float]:
    root = ctx.dir(f"idle-{tool[0]}{run}")
    src, dst = root / "src", root / "dst"
    make_tree(src, 100, 5)
    secs = ctx.size["idle_s"]
    with Session(ctx, tool, root / "w", src, [dst]) as t:
        ready(t, src, [dst], ctx.timeout)
        time.sleep(2.0)
        c0 = tree_cpu(t.pid)
        time.sleep(secs)
        t.check()
        c1 = tree_cpu(t.pid)
        rss = tree_rss_kb(t.pid)
    rm_rf(root)
    return {"idle_cpu_s_per_min": (c1 - c0) * 60.0 / secs, "idle_rss_mb": rss / 1024}


SCENARIO_FNS: dict[str, Callable[[Ctx, str, int], dict[str, float]]] = {
    "latency": sc_latency,
    "burst": sc_burst,
    "overflow": sc_overflow,
    "startup": sc_startup,
    "fanout": sc_fanout,
    "rename": sc_rename,
    "idle": sc_idle,
}


# ============================================================ presentation
# metric -> (scenario label, figure label, unit, goal kind, goal value)
def metric_info(key: str, mode: str) -> tuple[str, str, str, str | None, float | None]:
    k = key.split("_")
    if key.startswith("latency_"):
        where, p = k[1], k[2]
        return (
            f"latency ({where})",
            f"{p} close→arrival",
            "ms",
            "ratio",
            1.0 if where == "local" else 0.3,
        )
    if key.startswith("burst_") and key.endswith("_write_s"):
        return (
            f"burst {int(k[1]):,}".replace(",", " "),
            "writing the files (same for both)",
            "s",
            None,
            None,
        )
    if key.startswith("burst_"):
        n = int(k[1])
        goal = 0.5 if n >= 100000 else 0.7
        return (f"burst {n:,}".replace(",", " "), "last write → identical", "s", "ratio", goal)
    if key.startswith("cpu_per_1k_"):
        return (
            "CPU",
            f"CPU s per 1 000 changes (burst {int(k[3]):,})".replace(",", " "),
            "s",
            None,
            None,
        )
    if key == "overflow_s":
        return ("inotify overflow", "SIGCONT → identical", "s", "abs", 10.0)
    if key == "overflow_frozen_s":
        return ("inotify overflow", "watcher frozen for", "s", None, None)
    if key == "overflow_files":
        return ("inotify overflow", "files created while frozen", "", None, None)
    if key == "overflow_seen":
        return ("inotify overflow", "overflow reported in log (1 = yes)", "", None, None)
    if key == "overflow_restarted":
        return ("inotify overflow", "frozen process restarted (1 = yes)", "", None, None)
    if key == "startup_s":
        return ("startup", "start → tree complete + probe arrived", "s", "ratio", 1.0)
    if key == "startup_rss_mb":
        return ("startup", "total RSS at that point", "MB", None, None)
    if key.startswith("fanout_"):
        n = k[1]
        if key.endswith("steady_rss_mb"):
            return (f"fan-out {n}", "total RSS before the burst", "MB", None, None)
        if key.endswith("rss_mb"):
            return (f"fan-out {n}", "peak total RSS during the burst", "MB", "ratio", 2.0)
        return (f"fan-out {n}", "last write → all targets identical", "s", "ratio", 1.0)
    if key == "rename_s":
        return ("rename (ssh)", "rename → target identical", "s", None, None)
    if key == "rename_lo_mb":
        return ("rename (ssh)", "loopback traffic (resent)", "MB", None, None)
    if key == "rename_inodes_kept_pct":
        return ("rename (ssh)", "target inodes kept", "%", None, None)
    if key == "idle_cpu_s_per_min":
        return ("idle", "CPU s per minute idle", "s", "ratio", 1.0)
    if key == "idle_rss_mb":
        return ("idle", "total RSS idle", "MB", None, None)
    return (key, key, "", None, None)


ORDER = [
    "latency_local",
    "latency_ssh",
    "burst_",
    "cpu_per_1k",
    "overflow",
    "startup",
    "fanout_8_",
    "fanout_32_",
    "fanout",
    "rename",
    "idle",
]


def sort_key(key: str) -> tuple[int, str]:
    for i, p in enumerate(ORDER):
        if key.startswith(p):
            if key.startswith("burst_"):
                return (i, f"{int(key.split('_')[1]):09d}{key}")
            if key.startswith("cpu_per_1k_"):
                return (i, f"{int(key.split('_')[3]):09d}")
            return (i, key)
    return (len(ORDER), key)


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "—"
    if unit == "":
        return f"{v:g}"
    if math.isinf(v):
        return "∞"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def summarize(raw: dict[str, dict[str, list[float]]], mode: str) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(raw, key=sort_key):
        vals = raw[key]
        scen, label, unit, gkind, gval = metric_info(key, mode)
        med = {t: (statistics.median(vals[t]) if vals.get(t) else None) for t in TOOLS}
        s, lq = med["syncsup"], med["lsyncd"]
        ratio = None
        if s is not None and lq is not None:
            if lq > 0:
                ratio = s / lq
            elif s == 0:
                ratio = 1.0
            else:
                ratio = math.inf
        verdict = None
        goal = None
        if gkind == "ratio":
            goal = f"≤ {gval:g}"
            if s is not None and lq is not None:
                verdict = "PASS" if (s <= gval * lq) else "MISS"
        elif gkind == "abs":
            goal = f"syncsup ≤ {gval:g} s"
            if s is not None:
                verdict = "PASS" if s <= gval else "MISS"
        rows.append(
            {
                "metric": key,
                "scenario": scen,
                "figure": label,
                "unit": unit,
                "syncsup": med["syncsup"],
                "lsyncd": med["lsyncd"],
                "ratio": ratio,
                "goal": goal,
                "verdict": verdict,
                "runs": {t: vals.get(t, []) for t in TOOLS},
            }
        )
    return rows


def table_text(rows: list[dict[str, Any]]) -> str:
    hdr = ("scenario", "figure", "syncsup", "Lsyncd", "ratio", "goal", "")
    data = [hdr]
    for r in rows:
        u = f" {r['unit']}" if r["unit"] else ""
        data.append(
            (
                r["scenario"],
                r["figure"],
                fmt(r["syncsup"], r["unit"]) + (u if r["syncsup"] is not None else ""),
                fmt(r["lsyncd"], r["unit"]) + (u if r["lsyncd"] is not None else ""),
                fmt(r["ratio"], "x") if r["ratio"] is not None else "—",
                r["goal"] or "",
                r["verdict"] or "",
            )
        )
    w = [max(len(row[i]) for row in data) for i in range(len(hdr))]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(row)).rstrip() for row in data)


def table_md(rows: list[dict[str, Any]]) -> str:
    out = [
        "| scenario | figure | syncsup | Lsyncd | syncsup / Lsyncd | goal | verdict |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        u = f" {r['unit']}" if r["unit"] else ""
        verdict = f"**{r['verdict']}**" if r["verdict"] == "MISS" else (r["verdict"] or "")
        out.append(
            f"| {r['scenario']} | {r['figure']} | "
            f"{fmt(r['syncsup'], r['unit'])}{u if r['syncsup'] is not None else ''} | "
            f"{fmt(r['lsyncd'], r['unit'])}{u if r['lsyncd'] is not None else ''} | "
            f"{fmt(r['ratio'], 'x') if r['ratio'] is not None else '—'} | "
            f"{r['goal'] or ''} | {verdict} |"
        )
    return "\n".join(out)


# ================================================================== machine
def _first_line(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except Exception as e:
        return f"? ({e})"


def machine() -> dict[str, Any]:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1])
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "syncsup"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(mem / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rsync": _first_line(["rsync", "--version"]),
        "lsyncd": _first_line(["lsyncd", "-version"]),
        "syncsup_commit": commit + (" (+ uncommitted changes in syncsup/)" if dirty else ""),
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        "max_queued_events": int(open("/proc/sys/fs/inotify/max_queued_events").read()),
    }


def ensure_lsyncd() -> None:
    if shutil.which("lsyncd"):
        return
    print("lsyncd is missing: apt-get install lsyncd ...", flush=True)
    r = subprocess.run(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lsyncd",
        shell=True,
    )
    if r.returncode != 0 or not shutil.which("lsyncd"):
        sys.exit("bench: could not install lsyncd (apt-get failed)")


# ===================================================================== main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="small sizes, 1 run (about a minute)")
    ap.add_argument("--runs", type=int, default=None, help="runs per scenario (default 3; smoke 1)")
    ap.add_argument(
        "--only",
        nargs="+",
        choices=SCENARIOS,
        metavar="SCENARIO",
        help=f"run only these: {' '.join(SCENARIOS)}",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for inspection")
    args = ap.parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    runs = args.runs or (1 if args.smoke else 3)
    selected = args.only or list(SCENARIOS)

    if os.geteuid() != 0:
        print("bench: note: not root; the throw-away sshd and apt-get may fail", file=sys.stderr)
    ensure_lsyncd()
    for prog in ("rsync", "ssh", "ssh-keygen"):
        if not shutil.which(prog):
            sys.exit(f"bench: {prog} is required")

    base = Path(tempfile.mkdtemp(prefix="ssb-", dir="/tmp"))
    ctx = Ctx(mode, base)
    mach = machine()
    started = _dt.datetime.now(_dt.UTC)
    print(f"syncsup vs Lsyncd — {mode} run, {runs} run(s) per scenario, in {base}")
    print(
        f"  {mach['cores']} cores, {mach['memory_gb']} GB, kernel {mach['kernel']}, "
        f"{mach['rsync']}, {mach['lsyncd']}, load {' '.join(mach['loadavg_at_start'])}"
    )

    raw: dict[str, dict[str, list[float]]] = {}
    failures: list[str] = []
    prev_handler = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    t_all = time.monotonic()
    try:
        for scn in selected:
            for run in range(runs):
                order = TOOLS if run % 2 == 0 else tuple(reversed(TOOLS))
                for tool in order:
                    t0 = time.monotonic()
                    try:
                        res = SCENARIO_FNS[scn](ctx, tool, run)
                    except BenchFailure as e:
                        msg = f"{scn} run {run + 1} {tool}: {e}"
                        failures.append(msg)
                        print(f"  FAIL {msg}", flush=True)
                        continue
                    except Exception:
                        msg = f"{scn} run {run + 1} {tool}: error\n{traceback.format_exc()}"
                        failures.append(msg)
                        print(f"  FAIL {msg}", flush=True)
                        continue
                    for k, v in res.items():
                        raw.setdefault(k, {}).setdefault(tool, []).append(v)
                    shown = ", ".join(f"{k}={v:.3g}" for k, v in res.items())
                    print(
                        f"  {scn:8s} run {run + 1}/{runs} {tool:7s} "
                        f"{time.monotonic() - t0:5.1f}s  {shown}",
                        flush=True,
                    )
    except KeyboardInterrupt:
        failures.append("interrupted")
        print("  interrupted", flush=True)
    finally:
        for t in list(LIVE):
            t.stop()
        ctx.close()
        signal.signal(signal.SIGTERM, prev_handler)
        left = processes_mentioning(os.fspath(base))
        for p in left:
            print(f"  ! leftover pid {p}: {cmdline(p)[:200]!r}: SIGKILL")
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if left:
            failures.append(f"processes left behind: {left}")
        if args.keep:
            print(f"  kept {base}")
        else:
            rm_rf(base)

    elapsed = time.monotonic() - t_all
    rows = summarize(raw, mode)
    print()
    print(table_text(rows))
    print(f"\n{mode} run: {runs} run(s), medians; {elapsed:.0f}s in all")
    if failures:
        print(f"\n{len(failures)} failure(s):")
        for f in failures:
            print("  - " + f.splitlines()[0])

    doc = {
        "mode": mode,
        "runs": runs,
        "scenarios": selected,
        "date": started.isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "machine": mach,
        "sizes": SIZES[mode],
        "rows": rows,
        "failures": failures,
    }
    md = (
        f"{mode} run of {_dt.date.today().isoformat()}, {runs} run(s) per scenario (medians), "
        f"{mach['cores']} cores, {mach['memory_gb']} GB, kernel {mach['kernel']}, "
        f"{mach['rsync']}, {mach['lsyncd']}, syncsup {mach['syncsup_commit']}\n\n"
        + table_md(rows)
        + "\n"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in ("latest", mode):
        (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
        (RESULTS / f"{name}.md").write_text(md)
    print(f"results: {RESULTS / 'latest.json'}, {RESULTS / 'latest.md'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
