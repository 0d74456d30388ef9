"""Running daemons are found without their config path: ``syncsup status``
alone lists them (recorded in the runtime directory at start, removed at
stop), ``status NAME`` shows one, ``stop NAME`` stops it, and an entry left
by a killed daemon is not listed, and pruned by the next start."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from syncsup.seen import MARKER
from tests.helpers.daemon import sync_entry, syncsup_argv, syncsup_env
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import wait_converged

pytestmark = pytest.mark.timeout(240)


def cli(runtime, *args, cwd=None):
    env = {**syncsup_env(), "SYNCSUP_RUNTIME_DIR": str(runtime)}
    return subprocess.run(syncsup_argv(*args), capture_output=True, text=True, env=env,
                          timeout=60, stdin=subprocess.DEVNULL, cwd=cwd)


def entries(runtime) -> list[str]:
    """What the runtime directory holds but the boot marker, which a daemon
    makes there where the directory is on a memory file system."""
    return sorted(n for n in os.listdir(runtime) if n != MARKER)


def test_status_and_stop_find_daemons_by_name(tmp_path, src, dst, daemon_factory):
    runtime = tmp_path / "run"
    (src / "f").write_bytes(os.urandom(2000))
    daemons = []
    for name in ("www", "other"):
        d = daemon_factory([sync_entry(src, [tmp_path / f"dst-{name}"], name=name)],
                           settings_override={"state_dir": str(tmp_path / name)},
                           config=tmp_path / "etc" / f"{name}.toml", start=False)
        d.env["SYNCSUP_RUNTIME_DIR"] = str(runtime)
        d.start()
        daemons.append(d)
    www, other = daemons
    wait_converged(src, tmp_path / "dst-www", timeout=120, on_timeout=www.describe)

    r = cli(runtime, "status", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [ln.split() for ln in r.stdout.splitlines()[1:]]
    assert sorted((n, pid, conf) for n, pid, conf in rows) == sorted(
        (name, str(d.pid), str(d.config)) for name, d in (("www", www), ("other", other))), \
        r.stdout
    listed = json.loads(cli(runtime, "status", "--json").stdout)
    assert {e["name"] for e in listed} == {"www", "other"}

    r = cli(runtime, "status", "--json", "www")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [s["name"] for s in json.loads(r.stdout)["syncs"]] == ["www"]
    r = cli(runtime, "stop")  # two run: which one?
    assert r.returncode == 2 and "www" in r.stderr and "other" in r.stderr, r.stderr

    r = cli(runtime, "stop", "www")
    assert r.returncode == 0, r.stdout + r.stderr
    assert www.proc is not None and www.proc.wait(30) == 0
    assert entries(runtime) == ["other"], "a stopped daemon's entry was left"

    # A daemon killed outright leaves its entry, which is then not listed.
    os.killpg(other.pid, signal.SIGKILL)
    other.proc.wait(30)
    assert_no_leftovers(tmp_path, timeout=15)
    r = cli(runtime, "status")
    assert r.returncode == 3 and "no syncsup daemon is running" in r.stdout, r.stdout
    r = cli(runtime, "stop")
    assert r.returncode == 3, r.stdout + r.stderr
    # The next daemon to start prunes it.
    third = daemon_factory([sync_entry(src, [tmp_path / "dst-third"], name="third")],
                           settings_override={"state_dir": str(tmp_path / "third")},
                           config=tmp_path / "etc" / "third.toml", start=False)
    third.env["SYNCSUP_RUNTIME_DIR"] = str(runtime)
    third.start()
    assert entries(runtime) == ["third"]
    assert third.stop() == 0
    assert entries(runtime) == []
