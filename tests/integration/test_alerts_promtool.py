"""deploy/prometheus/alerts.yml checked with the real promtool, on series
scraped from real daemons: one healthy (no alert may fire) and one with a
target lagging (paused with pending changes), one failing (its path is
below a regular file), one halted (max_delete), and a watcher SIGKILLed
four times (restarts). Three states no test can reach in reasonable time
are constructed by hand on the real series of that daemon, and said so
below: a component degraded and down for minutes, and unwatched subtrees
(the watch limit). promtool runs on the result and must see exactly the
expected alerts at each evaluation time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.helpers.daemon import sync_entry, syncsup_argv, syncsup_env
from tests.helpers.procs import cmdline_of
from tests.helpers.promtool import RULES, expected, input_series, promtool_doc, scrape
from tests.helpers.sshd import free_port

PROMTOOL = shutil.which("promtool")
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(PROMTOOL is None, reason="promtool is missing: apt-get install "
                       "prometheus (scripts/install-deps.sh does)"),
]
STATIC_TESTS = RULES.parent / "alerts_test.yml"
ALERTS = ("SyncsupTargetLagging", "SyncsupTargetFailing", "SyncsupTargetHalted",
          "SyncsupComponentDown", "SyncsupComponentDegraded", "SyncsupComponentRestarting",
          "SyncsupWatchLimitReached", "SyncsupSubtreesBlind", "SyncsupSourceRootGone")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def run_tests(tmp_path, doc) -> None:
    path = tmp_path / "alerts_test.json"
    path.write_text(json.dumps(doc, indent=1))
    r = promtool("test", "rules", str(path))
    assert r.returncode == 0, f"promtool test rules failed:\n{r.stdout}{r.stderr}\n{path}"


def test_rules_pass_promtool_check():
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in r.stdout + r.stderr


def test_static_alert_tests_pass():
    r = promtool("test", "rules", str(STATIC_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_broken_expectation_fails(tmp_path):
    """The harness can fail: a healthy series with an alert expected."""
    series = [{"series": 'syncsup_target_healthy{sync="a",target="/t"}', "values": "1x40"}]
    checks = [{"eval_time": "30m", "alertname": "SyncsupTargetFailing",
               "exp_alerts": [expected("SyncsupTargetFailing", {"sync": "a", "target": "/t"})]}]
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(promtool_doc(series, checks)))
    assert promtool("test", "rules", str(path)).returncode != 0


def test_no_alert_fires_for_a_healthy_daemon(tmp_path, daemon_factory, settings):
    port = free_port()
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "f.txt").write_text("hello\n")
    d = daemon_factory([sync_entry(src, [dst], name="ok")],
                       settings_override={**settings, "metrics": f"127.0.0.1:{port}"})
    d.wait_idle()
    scrapes = []
    for _ in range(3):
        scrapes.append(scrape(port))
        time.sleep(1)
    assert ("syncsup_target_state", frozenset({("sync", "ok"), ("target", str(dst)),
                                               ("state", "idle")})) in scrapes[-1]
    checks = [{"eval_time": t, "alertname": a, "exp_alerts": []}
              for t in ("5m", "30m") for a in ALERTS]
    run_tests(tmp_path, promtool_doc(input_series(scrapes), checks))


def _target_state(m, sync: str) -> str | None:
    for (name, labels), v in m.items():
        lab = dict(labels)
        if name == "syncsup_target_state" and lab["sync"] == sync and v == 1:
            return lab["state"]
    return None


def test_alerts_fire_on_series_from_a_failing_daemon(tmp_path, daemon_factory, settings):
    port = free_port()
    t = {n: tmp_path / f"src-{n}" for n in ("ok", "lag", "fail", "halt")}
    for p in t.values():
        p.mkdir()
        (p / "f.txt").write_text("data\n")
    # A target that cannot be reached (ssh to a port where nothing listens:
    # rc 255) is retried for as long as it takes, never "stuck": it stays
    # "retrying". (A target that fails the same way each time, a local path
    # below a regular file, becomes "failed" after a few tries, and with the
    # tests' short timings that comes within seconds.)
    fail_target = f"127.0.0.1:{tmp_path}/dst-fail"
    halt_dst = tmp_path / "dst-halt"
    halt_dst.mkdir()
    for i in range(3):
        (halt_dst / f"extra{i}").write_text("only on the target\n")
    halt = sync_entry(t["halt"], [halt_dst], name="halt")
    halt["max_delete"] = 1
    lag_dst = tmp_path / "dst-lag"
    d = daemon_factory(
        [sync_entry(t["ok"], [tmp_path / "dst-ok"], name="ok"),
         sync_entry(t["lag"], [lag_dst], name="lag"),
         {**sync_entry(t["fail"], [fail_target], name="fail"),
          "ssh": {"port": free_port(), "options": ["ConnectTimeout=5"]}}, halt],
        settings_override={**settings, "metrics": f"127.0.0.1:{port}"})

    def states(st) -> dict[str, str]:
        return {s["name"]: s["targets"][0]["state"] for s in st["syncs"]}

    d.wait_for(lambda st: states(st)["fail"] == "retrying" and states(st)["halt"] == "failed"
               and states(st)["lag"] == "idle", "fail retrying, halt failed, lag idle")
    r = subprocess.run(syncsup_argv("pause", "--sync", "lag", d.config), env=syncsup_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for i in range(3):
        (t["lag"] / f"new{i}.txt").write_text("waiting\n")
    d.wait_for(lambda st: st["syncs"][1]["targets"][0]["pending"] >= 3, "lag pending")

    scrapes = [scrape(port)]
    # The watcher dies four times; a scrape after each restart.
    for _ in range(4):
        (c,) = [c for c in d.components("watcher") if c["name"] == "watcher"]
        assert c["state"] == "running" and c["pid"], c
        assert os.fsencode(d.config) in b"\0".join(cmdline_of(int(c["pid"])))
        os.kill(int(c["pid"]), signal.SIGKILL)
        d.wait_for(lambda st, pid=c["pid"]: any(
            x["name"] == "watcher" and x["state"] == "running" and x["pid"] != pid
            for x in st["components"]), "watcher restarted")
        scrapes.append(scrape(port))
    restarts = ("syncsup_component_restarts_total",
                frozenset({("component", "watcher"), ("role", "watcher")}))
    assert [m[restarts] for m in scrapes] == [0, 1, 2, 3, 4]
    lag_key = ("syncsup_target_lag_seconds", frozenset({("sync", "lag"),
                                                       ("target", str(lag_dst))}))
    assert scrapes[-1][lag_key] > scrapes[0][lag_key] > 0, "a paused target's lag grows"
    assert _target_state(scrapes[-1], "fail") == "retrying"
    assert _target_state(scrapes[-1], "halt") == "failed"
    assert _target_state(scrapes[-1], "lag") == "paused"

    # Constructed by hand (no test waits minutes for these), on the real
    # label sets of this daemon: the collator degraded and down, and two
    # subtrees of sync "halt" unwatched.
    last = dict(scrapes[-1])
    for state in ("running", "degraded"):
        last[("syncsup_component_state", frozenset({("component", "collator"),
                                                    ("role", "collator"),
                                                    ("state", state)}))] = \
            1.0 if state == "degraded" else 0.0
    last[("syncsup_component_up", frozenset({("component", "collator"),
                                             ("role", "collator")}))] = 0.0
    last[("syncsup_blind_subtrees", frozenset({("sync", "halt"),
                                               ("reason", "watch_limit")}))] = 2.0
    scrapes.append(last)

    def tl(sync: str, target) -> dict[str, str]:
        return {"sync": sync, "target": str(target)}

    collator = {"component": "collator", "role": "collator"}
    want = {
        "SyncsupTargetLagging": [tl("lag", lag_dst)],
        "SyncsupTargetFailing": [tl("fail", fail_target), tl("halt", halt_dst)],
        "SyncsupTargetHalted": [{**tl("halt", halt_dst), "state": "failed"}],
        "SyncsupComponentDown": [collator],
        "SyncsupComponentDegraded": [{**collator, "state": "degraded"}],
        "SyncsupWatchLimitReached": [{"sync": "halt"}],
        "SyncsupSubtreesBlind": [],
        "SyncsupSourceRootGone": [],
        "SyncsupComponentRestarting": [],  # restarts stopped 25 minutes ago
    }
    checks = [{"eval_time": "30m", "alertname": a,
               "exp_alerts": [expected(a, labels) for labels in want[a]]} for a in ALERTS]
    # Four restarts within minutes 1-4 of the series: firing at minute 5.
    checks.append({"eval_time": "5m", "alertname": "SyncsupComponentRestarting",
                   "exp_alerts": [expected("SyncsupComponentRestarting",
                                           {"component": "watcher", "role": "watcher"})]})
    series = input_series(scrapes, growing={lag_key})
    run_tests(tmp_path, promtool_doc(series, checks))
