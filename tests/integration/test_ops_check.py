"""Operations: ``syncsup check CONFIG`` on good and broken configs
and targets (local and over ssh); it prints ``ok:``/``problem:`` lines,
exits 0 / 1 / 78, and changes nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.daemon import run_cli, sync_entry, syncsup_argv, syncsup_env, write_config
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.sshd import free_port
from tests.helpers.tree import diff_trees, snapshot

pytestmark = pytest.mark.timeout(180)


def local_rsync_version() -> str:
    out = subprocess.run(["rsync", "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"version\s+v?(\d+\.\d+\.\d+\S*)", out)
    assert m, out
    return m.group(1)


def run_check(tmp_path: Path, doc: dict):
    """Write ``doc``, run ``syncsup check`` on it, and require that it changed
    nothing under tmp_path (no state_dir, targets untouched, nothing new)."""
    cfg = write_config(tmp_path / "syncsup.toml", doc)
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    before = snapshot(tmp_path)
    r = run_cli("check", cfg, timeout=120, cwd=cwd)
    after = snapshot(tmp_path)
    assert not diff_trees(before, after, names=("before", "after")), (
        "syncsup check changed files:\n"
        + "\n".join(diff_trees(before, after, names=("before", "after")))
    )
    assert not (tmp_path / "state").exists(), "syncsup check created the state_dir"
    assert_no_leftovers(tmp_path)
    return r


def lines_of(r, prefix: str) -> list[str]:
    return [ln for ln in r.stdout.splitlines() if ln.startswith(prefix)]


def _doc(tmp_path: Path, syncs: list[dict]) -> dict:
    return {"settings": {"state_dir": str(tmp_path / "state"), "log_level": "info"}, "sync": syncs}


def _populated(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    (p / "keep.txt").write_bytes(b"already on the target\n")
    (p / "sub").mkdir(exist_ok=True)
    (p / "sub" / "x").write_bytes(os.urandom(1000))
    return p


def test_check_good_config_local_and_ssh(tmp_path, src, sshd):
    (src / "f").write_bytes(b"source file\n")
    dst = _populated(tmp_path / "dst")
    fresh = tmp_path / "fresh-target"  # does not exist yet; its parent does
    remote_dir = _populated(tmp_path / "remote")
    remote = sshd.target(remote_dir)
    doc = _doc(tmp_path, [sync_entry(src, [dst, fresh, remote], ssh=sshd.ssh_config())])

    r = run_check(tmp_path, doc)
    assert r.returncode == 0, f"check exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert not lines_of(r, "problem:"), r.stdout
    oks = lines_of(r, "ok:")
    assert oks, r.stdout
    out_lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert all(ln.startswith("ok:") for ln in out_lines), r.stdout
    version = local_rsync_version()
    local = [ln for ln in oks if "rsync" in ln and "local" in ln]
    assert local and version in local[0], f"no local rsync version {version}:\n{r.stdout}"
    rem = [ln for ln in oks if remote in ln]
    assert rem, f"no line for {remote}:\n{r.stdout}"
    assert version in rem[0], f"the remote rsync version ({version}) is not printed: {rem[0]}"
    assert "ssh" in rem[0], rem[0]
    for t in (dst, fresh):
        assert any(str(t) in ln for ln in oks), f"no ok line for {t}:\n{r.stdout}"
    assert any(str(src) in ln for ln in oks), f"no ok line for the source:\n{r.stdout}"
    assert not fresh.exists(), "check created the target"


BROKEN = (
    "missing-source",
    "local-target-parent-missing",
    "remote-target-parent-missing",
    "ssh-port-closed",
    "ssh-unknown-host-key",
    "several-problems",
)


@pytest.mark.parametrize("case", BROKEN)
def test_check_reports_problems(case, tmp_path, src, sshd):
    (src / "f").write_bytes(b"source file\n")
    dst = _populated(tmp_path / "dst")
    ssh = sshd.ssh_config()
    # (sync entry, substrings each expected problem line must name)
    expect: list[list[str]]
    if case == "missing-source":
        missing = tmp_path / "no-such-source"
        entry = sync_entry(missing, [dst])
        expect = [[str(missing)]]
    elif case == "local-target-parent-missing":
        bad = tmp_path / "no" / "such" / "dst"
        entry = sync_entry(src, [dst, bad])
        expect = [[str(bad)]]
    elif case == "remote-target-parent-missing":
        bad = sshd.target(tmp_path / "no" / "such" / "dst")
        entry = sync_entry(src, [dst, bad], ssh=ssh)
        expect = [[bad]]
    elif case == "ssh-port-closed":
        remote = sshd.target(_populated(tmp_path / "remote"))
        entry = sync_entry(src, [dst, remote], ssh={**ssh, "port": free_port()})
        expect = [[remote, "ssh"]]
    elif case == "ssh-unknown-host-key":
        empty = tmp_path / "empty_known_hosts"
        empty.write_text("")
        remote = sshd.target(_populated(tmp_path / "remote"))
        opts = [o for o in ssh["options"] if not o.startswith("UserKnownHostsFile=")]
        entry = sync_entry(
            src, [dst, remote], ssh={**ssh, "options": [*opts, f"UserKnownHostsFile={empty}"]}
        )
        expect = [[remote, "ssh"]]
    elif case == "several-problems":
        missing = tmp_path / "no-such-source"
        bad = tmp_path / "no" / "such" / "dst"
        entry = sync_entry(missing, [dst, bad])
        expect = [[str(missing)], [str(bad)]]
    else:  # pragma: no cover
        raise AssertionError(case)

    r = run_check(tmp_path, _doc(tmp_path, [entry]))
    assert r.returncode == 1, f"check exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    problems = lines_of(r, "problem:")
    assert len(problems) == len(expect), (
        f"expected {len(expect)} problem line(s):\n{r.stdout}\n{r.stderr}"
    )
    for words in expect:
        assert any(all(w in ln for w in words) for ln in problems), (
            f"no problem line naming {words}:\n{r.stdout}"
        )
    # the rest is still checked and reported
    assert any("rsync" in ln and "local" in ln for ln in lines_of(r, "ok:")), r.stdout
    if case != "several-problems" and case != "missing-source":
        assert any(str(dst) in ln for ln in lines_of(r, "ok:")), (
            f"the good target {dst} must still be reported ok:\n{r.stdout}"
        )


def test_check_without_local_rsync(tmp_path, src, dst):
    """No rsync on PATH: one problem line saying so; the rest is still checked."""
    doc = _doc(tmp_path, [sync_entry(src, [dst])])
    cfg = write_config(tmp_path / "syncsup.toml", doc)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("ssh",):
        path = shutil.which(tool)
        if path:
            os.symlink(path, bindir / tool)
    env = {**syncsup_env(), "PATH": str(bindir)}
    r = subprocess.run(
        syncsup_argv("check", cfg), capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 1, f"check exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    problems = lines_of(r, "problem:")
    assert len(problems) == 1 and "rsync" in problems[0], r.stdout
    assert any(str(dst) in ln for ln in lines_of(r, "ok:")), r.stdout
    assert not (tmp_path / "state").exists()
    assert_no_leftovers(tmp_path)


def test_check_bad_config_exits_78(tmp_path, src, dst):
    doc = _doc(tmp_path, [{**sync_entry(src, [dst]), "delay": -1}])
    r = run_check(tmp_path, doc)
    assert r.returncode == 78, f"check exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "config error" in err[0] and "delay" in err[0], r.stderr
    assert not lines_of(r, "ok:"), r.stdout

    cfg = tmp_path / "syncsup.toml"
    cfg.write_text("[settings\nnot toml")
    r = run_cli("check", cfg, timeout=60)
    assert r.returncode == 78, f"check exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert "config error" in r.stderr, r.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("command", ["check", "start"])
@pytest.mark.parametrize("key", ["log_file", "status_file"])
def test_output_file_in_a_missing_directory_exits_78(command, key, tmp_path, src, dst):
    """A ``log_file`` or ``status_file`` whose directory does not exist is a
    config problem for both ``check`` and ``start``: one line naming the key,
    exit 78, no state_dir made, nothing started (the daemon used to run on,
    printing that it could not open the file once per process)."""
    doc = _doc(tmp_path, [sync_entry(src, [dst])])
    missing = tmp_path / "no-such-dir"
    doc["settings"][key] = str(missing / "syncsup.out")
    cfg = write_config(tmp_path / "syncsup.toml", doc)
    r = run_cli(command, cfg, timeout=120)
    assert r.returncode == 78, f"{command} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, r.stderr
    assert err[0].startswith(f"syncsup: config error: settings.{key}: "), err[0]
    assert f"{missing} does not exist" in err[0], err[0]
    assert not lines_of(r, "ok:"), r.stdout
    assert not (tmp_path / "state").exists()
    assert not missing.exists()
    assert_no_leftovers(tmp_path)

    missing.mkdir()  # the same config is fine once the directory is there
    r = run_cli("check", cfg, timeout=120)
    assert r.returncode == 0, f"check exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
