"""Operations: what a sysadmin and systemd see of a running daemon.

Prometheus metrics scraped over HTTP while syncing; the sd_notify protocol
(READY=1, STATUS=, WATCHDOG=1, STOPPING=1) received on a real unix datagram
socket set as NOTIFY_SOCKET; journald priority prefixes on stderr under
JOURNAL_STREAM; ``log_format = "json"`` with ``log_file``.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.daemon import Daemon, sync_entry, syncsup_argv, syncsup_env
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.sshd import free_port
from tests.helpers.tree import diff_trees, snapshot, wait_converged

pytestmark = pytest.mark.timeout(240)

TRANSFER_LINE = re.compile(
    r"target (?P<target>.+?): batch \d+, (?P<paths>\d+) paths, (?P<trees>\d+) trees, "
    r"\d+ renames, (?P<bytes>\d+) bytes, [\d.]+s: (?P<outcome>ok|retry|fatal)"
)


def converge(d, src, *dsts, timeout: float = 120):
    return wait_converged(src, dsts, timeout=timeout, on_timeout=d.describe)


def start_with_env(d: Daemon, extra_env: dict[str, str], wait: bool = True) -> Daemon:
    """Start a daemon made by ``daemon_factory(..., start=False)`` with extra
    environment variables (the factory's own start drops NOTIFY_SOCKET). The
    factory still stops it and checks for leftovers at teardown."""
    env = syncsup_env()
    env.update(extra_env)
    with open(d.log_path, "ab") as log:
        d.proc = subprocess.Popen(
            syncsup_argv("start", d.config),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=d.cwd,
            env=env,
            start_new_session=True,
        )
    if wait:
        d.wait_ready()
    return d


def poll(pred, what: str, timeout: float = 120.0, interval: float = 0.2, context=None):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            extra = context() if context else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{extra}")
        time.sleep(interval)


# ------------------------------------------------------------------ metrics
def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=15) as resp:
        assert resp.status == 200
        ctype = resp.headers.get("Content-Type", "")
        assert ctype.startswith("text/plain"), ctype
        text = resp.read().decode()
    out: dict[tuple[str, frozenset], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape_until(port: int, pred, what: str, context, timeout: float = 60.0) -> dict:
    """Scrape until ``pred(metrics)`` holds; returns those metrics."""
    found: list[dict] = []

    def attempt() -> bool:
        m = scrape(port)
        if pred(m):
            found.append(m)
            return True
        return False

    poll(attempt, what, timeout, context=context)
    return found[-1]


def val(m: dict, name: str, **labels) -> float | None:
    return m.get((name, frozenset(labels.items())))


TARGET_METRICS = (
    "syncsup_target_lag_seconds",
    "syncsup_target_pending_paths",
    "syncsup_target_last_success_timestamp_seconds",
    "syncsup_target_healthy",
    "syncsup_sent_bytes_total",
)
SYNC_METRICS = (
    "syncsup_watches",
    "syncsup_unwatched_subtrees",
    "syncsup_inotify_overflows_total",
    "syncsup_rescans_total",
)
COMPONENTS = {
    "supervisor": "supervisor",
    "collator": "collator",
    "syncer": "syncer",
    "watcher": "watcher",
}


def test_metrics_scraped_while_syncing(tmp_path, src, dst, settings, daemon_factory):
    port = free_port()
    (src / "sub").mkdir()
    (src / "sub" / "a.bin").write_bytes(os.urandom(40_000))
    d = daemon_factory(
        [sync_entry(src, [dst])], settings_override={**settings, "metrics": f"127.0.0.1:{port}"}
    )
    converge(d, src, dst)
    st = d.wait_idle()
    m = scrape(port)
    names = {k[0] for k in m}
    tl = {"sync": "www", "target": str(dst)}

    def ctx():
        try:
            dump = "\n".join(
                f"{k[0]}{dict(k[1])} {v}"
                for k, v in sorted(scrape(port).items(), key=lambda kv: kv[0][0])
            )
        except Exception as e:  # context only
            dump = repr(e)
        return f"metrics:\n{dump}\n{d.describe()}"

    for n in TARGET_METRICS:
        assert val(m, n, **tl) is not None, f"{n}{tl} missing; have {sorted(names)}"
    for n in SYNC_METRICS:
        assert val(m, n, sync="www") is not None, f"{n}{{sync=www}} missing; have {sorted(names)}"
    for comp, role in COMPONENTS.items():
        for n in ("syncsup_component_restarts_total", "syncsup_component_up"):
            assert val(m, n, component=comp, role=role) is not None, (
                f"{n}{{component={comp},role={role}}} missing:\n{ctx()}"
            )
        assert val(m, "syncsup_component_up", component=comp, role=role) == 1, ctx()
        assert val(m, "syncsup_component_restarts_total", component=comp, role=role) == 0, ctx()

    (t,) = d.targets(st)
    (s,) = st["syncs"]
    ok0 = val(m, "syncsup_transfers_total", outcome="ok", **tl)
    assert ok0 is not None and ok0 >= 1, f"no ok transfer counted after the initial sync:\n{ctx()}"
    assert val(m, "syncsup_target_pending_paths", **tl) == 0, ctx()
    assert val(m, "syncsup_target_lag_seconds", **tl) == 0, ctx()
    assert val(m, "syncsup_target_healthy", **tl) == 1, ctx()
    last0 = val(m, "syncsup_target_last_success_timestamp_seconds", **tl)
    assert last0 == pytest.approx(t["last_sync"]), (t, last0)
    sent0 = val(m, "syncsup_sent_bytes_total", **tl)
    assert sent0 >= 40_000, f"the initial sync sent a 40 kB random file: {sent0}"
    assert val(m, "syncsup_watches", sync="www") == s["watches"] >= 2, (s, ctx())
    assert val(m, "syncsup_unwatched_subtrees", sync="www") == 0
    assert val(m, "syncsup_inotify_overflows_total", sync="www") == 0
    assert val(m, "syncsup_rescans_total", sync="www") >= 1, "the startup sync is a rescan"

    # ---- paused: pending and lag rise, nothing is transferred
    r = subprocess.run(
        syncsup_argv("pause", d.config),
        env=syncsup_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    payload = {f"m{i}.bin": os.urandom(30_000) for i in range(4)}
    for name, data in payload.items():
        (src / name).write_bytes(data)
    (src / "newdir").mkdir()

    def paused_backlog(x):
        return (val(x, "syncsup_target_pending_paths", **tl) or 0) >= 4 and (
            val(x, "syncsup_target_lag_seconds", **tl) or 0
        ) > 0

    m1 = scrape_until(port, paused_backlog, "pending >= 4 and lag > 0 while paused", ctx)
    assert val(m1, "syncsup_transfers_total", outcome="ok", **tl) == ok0, ctx()
    assert val(m1, "syncsup_target_healthy", **tl) == 1, "paused is not unhealthy"

    # ---- resumed: the work goes out, counters move, pending back to 0
    r = subprocess.run(
        syncsup_argv("resume", d.config),
        env=syncsup_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    converge(d, src, dst)

    def settled(x):
        return (
            val(x, "syncsup_target_pending_paths", **tl) == 0
            and (val(x, "syncsup_transfers_total", outcome="ok", **tl) or 0) > ok0
            and (val(x, "syncsup_sent_bytes_total", **tl) or 0) >= sent0 + 120_000
        )

    m2 = scrape_until(port, settled, "pending 0, more ok transfers, 120 kB more sent", ctx)
    assert val(m2, "syncsup_target_lag_seconds", **tl) == 0, ctx()
    assert val(m2, "syncsup_target_last_success_timestamp_seconds", **tl) > last0, ctx()
    assert val(m2, "syncsup_watches", sync="www") >= 3, "newdir is watched too"
    assert (val(m2, "syncsup_transfers_total", outcome="retry", **tl) or 0) == 0, ctx()

    # ---- a component restart shows in the counters
    killed = d.kill_component("watcher")
    assert killed is not None, d.describe()
    wl = {"component": "watcher", "role": "watcher"}

    def watcher_restarted(x):
        return (
            val(x, "syncsup_component_restarts_total", **wl) == 1
            and val(x, "syncsup_component_up", **wl) == 1
        )

    scrape_until(port, watcher_restarted, "watcher restart counted and watcher up again", ctx)
    (src / "after-restart").write_bytes(b"x" * 10)
    converge(d, src, dst)

    d.stop()
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        scrape(port)
    assert_no_leftovers(tmp_path)
    assert not diff_trees(snapshot(src), snapshot(dst))


# ---------------------------------------------------------------- sd_notify
class NotifyListener:
    """A bound AF_UNIX datagram socket, as systemd's NOTIFY_SOCKET; records
    (sender pid, message) with SO_PASSCRED."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[int | None, str]] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        cred_size = struct.calcsize("3i")
        while not self.done.is_set():
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(cred_size))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", cdata[:cred_size])[0]
            with self.lock:
                self.messages.append((pid, data.decode(errors="replace")))

    def snapshot(self) -> list[tuple[int | None, str]]:
        with self.lock:
            return list(self.messages)

    def fields(self) -> list[str]:
        """Every ``KEY=VALUE`` line received, in order."""
        return [ln for _, msg in self.snapshot() for ln in msg.split("\n") if ln]

    def last_status(self) -> str:
        st = [f for f in self.fields() if f.startswith("STATUS=")]
        return st[-1] if st else ""

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()

    def describe(self) -> str:
        return "notify datagrams:\n" + "\n".join(f"  pid {p}: {m!r}" for p, m in self.snapshot())


# STATUS= (and READY=1, which goes with it) every 0.2 s: what is waited for
# is what the daemon tells systemd, not its pace.
FAST_NOTIFY = {"notify_interval": 0.2}


def test_sd_notify_ready_status_watchdog_stopping(tmp_path, src, dst, daemon_factory):
    for i in range(200):
        (src / f"f{i:03d}").write_bytes(os.urandom(2000))
    (src / "big.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        d = daemon_factory([sync_entry(src, [dst])], start=False, timings=FAST_NOTIFY)
        start_with_env(
            d, {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "600000"}, wait=False
        )

        def ctx():
            return listener.describe() + "\n" + d.describe()

        poll(lambda: "READY=1" in listener.fields(), "READY=1", 120, interval=0.05, context=ctx)
        # READY=1 means the initial sync is done: the mirror is complete now.
        diff = diff_trees(snapshot(src), snapshot(dst))
        assert not diff, "READY=1 before the initial sync was done:\n" + "\n".join(diff)
        fields = listener.fields()
        upto = fields[: fields.index("READY=1") + 2]
        status_lines = [f for f in upto if f.startswith("STATUS=")]
        assert status_lines, f"no STATUS= with READY=1:\n{ctx()}"
        assert "1 target" in status_lines[-1] and "0 pending" in status_lines[-1], ctx()
        st = d.wait_idle()
        assert all(t["state"] == "idle" for t in d.targets(st)), st

        # STATUS= follows what is going on: pending work while paused ...
        r = subprocess.run(
            syncsup_argv("pause", d.config),
            env=syncsup_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        n_before = len(listener.fields())
        for i in range(3):
            (src / f"new{i}").write_bytes(os.urandom(1000))
        poll(
            lambda: any(
                re.search(r"\b[1-9]\d* pending", f)
                for f in listener.fields()[n_before:]
                if f.startswith("STATUS=")
            ),
            "STATUS= with pending work",
            60,
            context=ctx,
        )
        # ... and back to 0 pending after resume
        r = subprocess.run(
            syncsup_argv("resume", d.config),
            env=syncsup_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        converge(d, src, dst)
        poll(
            lambda: re.search(r"(=|, )0 pending\b", listener.last_status()),
            "STATUS= back to 0 pending",
            60,
            context=ctx,
        )

        # WATCHDOG=1 every WATCHDOG_USEC/2 (0.3 s here)
        poll(
            lambda: listener.fields().count("WATCHDOG=1") >= 3,
            "3 WATCHDOG=1 pings",
            60,
            context=ctx,
        )

        d.stop()
        poll(lambda: "STOPPING=1" in listener.fields(), "STOPPING=1", 15, context=ctx)
        msgs = listener.snapshot()
        fields = listener.fields()
        assert fields.count("READY=1") == 1, f"READY=1 must be sent once:\n{ctx()}"
        assert fields.index("READY=1") < fields.index("STOPPING=1"), ctx()
        # NotifyAccess=main: everything comes from the main process
        senders = {p for p, _ in msgs}
        assert senders == {d.pid}, f"notify messages from {senders}, main pid {d.pid}:\n{ctx()}"
        for f in fields:
            assert re.fullmatch(r"[A-Z_]+=.*", f), f"not a KEY=VALUE notify line: {f!r}"
    finally:
        listener.close()
    assert_no_leftovers(tmp_path)


def test_sd_notify_ready_when_a_target_is_failing(tmp_path, src, dst, daemon_factory):
    """An unreachable target must not hold back READY=1 forever (the unit has
    TimeoutStartSec=infinity): READY comes once every target finished or is
    failing, and STATUS= says which."""
    (src / "f").write_bytes(os.urandom(10_000))
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    user = pwd.getpwuid(os.getuid()).pw_name
    remote = f"{user}@127.0.0.1:{tmp_path / 'remote'}"
    ssh = {
        "port": free_port(),  # nothing listens there
        "options": ["StrictHostKeyChecking=yes", f"UserKnownHostsFile={known_hosts}"],
    }
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        d = daemon_factory([sync_entry(src, [dst, remote], ssh=ssh)], start=False,
                           timings=FAST_NOTIFY)
        start_with_env(d, {"NOTIFY_SOCKET": str(listener.path)}, wait=False)

        def ctx():
            return listener.describe() + "\n" + d.describe()

        poll(lambda: "READY=1" in listener.fields(), "READY=1", 120, interval=0.05, context=ctx)
        diff = diff_trees(snapshot(src), snapshot(dst))
        assert not diff, "READY=1 before the local target's initial sync:\n" + "\n".join(diff)
        fields = listener.fields()
        upto = fields[: fields.index("READY=1") + 2]
        status_lines = [f for f in upto if f.startswith("STATUS=")]
        assert status_lines and "failing" in status_lines[-1], (
            f"STATUS= must say a target is failing:\n{ctx()}"
        )
        st = d.status()
        (t_remote,) = [t for t in d.targets(st) if t["target"] == remote]
        assert t_remote["state"] in ("retrying", "failed", "startup"), t_remote
        assert not (tmp_path / "remote").exists()
        d.stop()
        poll(lambda: "STOPPING=1" in listener.fields(), "STOPPING=1", 15, context=ctx)
        assert listener.fields().count("READY=1") == 1, ctx()
        assert "WATCHDOG=1" not in listener.fields(), "WATCHDOG=1 without WATCHDOG_USEC"
    finally:
        listener.close()
    assert_no_leftovers(tmp_path)


# -------------------------------------------------------------------- logs
def test_journald_priority_prefixes_under_journal_stream(tmp_path, src, dst, daemon_factory):
    (src / "a").write_bytes(os.urandom(25_000))
    d = daemon_factory([sync_entry(src, [dst])], start=False)
    d.log_path.touch()
    stl = os.stat(d.log_path)
    start_with_env(d, {"JOURNAL_STREAM": f"{stl.st_dev}:{stl.st_ino}"})
    converge(d, src, dst)
    d.wait_idle()
    assert d.kill_component("watcher", sig=signal.SIGKILL) is not None
    d.wait_for(
        lambda s: (
            all(c["state"] == "running" for c in s["components"])
            and any(c["name"] == "watcher" and c["restarts"] == 1 for c in s["components"])
        ),
        "the watcher restarted",
        60,
    )
    (src / "b").write_bytes(os.urandom(7_000))
    converge(d, src, dst)
    d.wait_idle()
    d.stop()
    assert_no_leftovers(tmp_path)

    lines = [ln for ln in d.log_text().splitlines() if ln.strip()]
    assert lines, "no log output"
    bad = [ln for ln in lines if not re.match(r"<[0-7]>", ln)]
    assert not bad, "lines without a journald priority prefix:\n" + "\n".join(bad[:20])
    transfers = [ln for ln in lines if TRANSFER_LINE.search(ln)]
    assert transfers, "no per-transfer line at info:\n" + "\n".join(lines[-40:])
    assert all(ln.startswith("<6>") for ln in transfers if ": ok" in ln), transfers
    died = [ln for ln in lines if "watcher" in ln and "died" in ln]
    assert died and all(ln.startswith("<4>") for ln in died), (
        "the watcher's death must be logged at warning (<4>):\n" + "\n".join(lines[-40:])
    )


def test_json_log_file(tmp_path, src, dst, settings, daemon_factory):
    log_file = tmp_path / "syncsup.jsonl"
    (src / "first").write_bytes(os.urandom(30_000))
    d = daemon_factory(
        [sync_entry(src, [dst])],
        settings_override={**settings, "log_file": str(log_file), "log_format": "json"},
    )
    converge(d, src, dst)
    st = d.wait_idle()
    pids = {c["name"]: c["pid"] for c in st["components"]}
    (src / "second").write_bytes(os.urandom(45_000))
    converge(d, src, dst)
    d.wait_idle()
    d.stop()
    assert_no_leftovers(tmp_path)

    assert log_file.exists(), "log_file was not written"
    raw = [ln for ln in log_file.read_text().splitlines() if ln.strip()]
    assert raw, "log_file is empty"
    docs = []
    for ln in raw:
        try:
            doc = json.loads(ln)
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line in {log_file}: {ln!r}") from None
        assert isinstance(doc, dict), ln
        assert set(doc) >= {"time", "level", "role", "component", "pid", "message"}, doc
        assert isinstance(doc["time"], (int, float)) and doc["time"] > 1e9, doc
        assert doc["level"] in ("debug", "info", "warning", "error", "critical"), doc
        assert doc["role"] in ("supervisor", "collator", "syncer", "watcher"), doc
        assert isinstance(doc["message"], str), doc
        docs.append(doc)
    assert {doc["role"] for doc in docs} == {"supervisor", "collator", "syncer", "watcher"}, (
        "every process logs to the same log_file"
    )
    for doc in docs:
        name = doc["role"]
        assert isinstance(doc["component"], str) and doc["component"], doc
        assert doc["pid"] == pids[name], f"pid of {name} is {pids[name]}: {doc}"
    sent = []
    for doc in docs:
        m = TRANSFER_LINE.search(doc["message"])
        if m and doc["role"] == "syncer":
            assert m["target"] == str(dst), doc
            sent.append((int(m["bytes"]), m["outcome"], doc["level"]))
    assert sent, "no per-transfer lines in the JSON log"
    assert all(o == "ok" and lvl == "info" for _, o, lvl in sent), sent
    assert any(b >= 45_000 for b, _, _ in sent), f"no transfer with the 45 kB file's bytes: {sent}"

    # stderr follows log_format too
    err = [ln for ln in d.log_text().splitlines() if ln.strip()]
    not_json = []
    for ln in err:
        try:
            json.loads(ln)
        except json.JSONDecodeError:
            not_json.append(ln)
    assert not not_json, "stderr lines that are not JSON:\n" + "\n".join(not_json[:20])


def test_json_log_component_is_the_status_name(tmp_path, src, dst, settings, daemon_factory):
    """The JSON ``component`` field names a component as ``syncsup status``
    and the metrics' ``component`` label do (``supervisor``, ``ROLE:SYNC``),
    so log lines can be joined with them; the sync name alone would be the
    same for the three processes of a sync."""
    log_file = tmp_path / "syncsup.jsonl"
    (src / "f").write_bytes(b"x" * 1000)
    d = daemon_factory(
        [sync_entry(src, [dst], name="web")],
        settings_override={**settings, "log_file": str(log_file), "log_format": "json"},
    )
    converge(d, src, dst)
    st = d.wait_idle()
    names = {c["name"] for c in st["components"]}
    d.stop()
    assert_no_leftovers(tmp_path)
    docs = [json.loads(ln) for ln in log_file.read_text().splitlines() if ln.strip()]
    seen = {(doc["role"], doc["component"]) for doc in docs}
    assert {r for r, _ in seen} == {"supervisor", "collator", "syncer", "watcher"}, seen
    wrong = sorted((r, c) for r, c in seen if c not in names)
    assert not wrong, (
        f"JSON 'component' values {wrong} are not component names "
        f"{sorted(names)} (status / metrics label)"
    )
