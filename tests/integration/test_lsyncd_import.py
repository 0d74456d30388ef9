"""``syncsup import-lsyncd`` end to end: real Lua (lupa) on the configs in
tests/data/lsyncd, the CLI's exit statuses and stdout/stderr contract, the
sandbox against escape attempts, and imported configs run by a real daemon
(local targets and an rsyncssh one through the test sshd) until the target
converges. One test runs the real ``lsyncd`` on the same config beside
syncsup and requires both to leave the same target tree.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.daemon import LOG_LEVEL, run_cli, syncsup_env
from tests.helpers.tree import diff_trees, snapshot, wait_converged

pytestmark = pytest.mark.timeout(300)

DATA = Path(__file__).resolve().parents[1] / "data" / "lsyncd"
HEADER = "# syncsup config imported from the Lsyncd config "


def prepare(name: str, base: Path, **subs: str) -> Path:
    """The corpus config ``name`` with its placeholders filled in, in ``base``."""
    text = (DATA / name).read_text()
    for key, value in {"BASE": str(base), "DATA": str(DATA), **subs}.items():
        text = text.replace(f"@{key}@", value)
    path = base / name
    path.write_text(text)
    return path


def import_config(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("import-lsyncd", path, cwd=cwd, timeout=120)


def stderr_lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("syncsup import-lsyncd: ")]


def imported(name: str, base: Path, expect_rc: int = 0, **subs: str) -> dict[str, Any]:
    """Import corpus config ``name``; the TOML document (checked: exit
    status, header, stdout holds only TOML)."""
    r = import_config(prepare(name, base, **subs), base)
    assert r.returncode == expect_rc, f"exit {r.returncode}\n{r.stderr}"
    assert r.stdout.startswith(HEADER + str(base / name)), r.stdout[:300]
    return tomllib.loads(r.stdout)


def runnable(doc: dict[str, Any], base: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """syncs and settings of an imported document, with the test's own
    state_dir (the import leaves it out, and the default is system-wide)."""
    settings = {**doc.get("settings", {}), "state_dir": str(base / "state"),
                "log_level": LOG_LEVEL}
    return doc["sync"], settings


def check_ok(d) -> None:
    r = run_cli("check", d.config, timeout=120)
    assert r.returncode == 0, f"syncsup check of the imported config failed:\n{r.stdout}{r.stderr}"


def churn(src: Path) -> None:
    """Changes of every kind Lsyncd handles: new files and trees, a rewrite,
    a rename of a file and of a directory, a delete, a symlink."""
    (src / "tree" / "deep").mkdir(parents=True, exist_ok=True)
    (src / "tree" / "deep" / "f.txt").write_bytes(os.urandom(3000))
    (src / "new.bin").write_bytes(os.urandom(20000))
    (src / "a.txt").write_text("rewritten " * 50)
    (src / "b.txt").rename(src / "b-renamed.txt")
    (src / "dir").rename(src / "dir-renamed")
    (src / "gone.txt").unlink()
    os.symlink("a.txt", src / "link")


def seed(src: Path) -> None:
    src.mkdir(exist_ok=True)
    (src / "a.txt").write_text("first\n")
    (src / "b.txt").write_text("second\n")
    (src / "gone.txt").write_text("to be deleted\n")
    (src / "dir").mkdir()
    (src / "dir" / "inner.txt").write_text("inner\n")
    (src / "private.txt").write_text("0600\n")
    os.chmod(src / "private.txt", 0o600)


# ------------------------------------------------------------ CLI contract
@pytest.mark.parametrize("name", ["flat_rsync.lua", "settings_assign.lua", "direct.lua",
                                  "loop_targets.lua", "loop_sources.lua", "user_layer.lua",
                                  "default_override.lua", "excludes.lua"])
def test_complete_imports_exit_0_and_pass_syncsups_parser(tmp_path, name):
    from syncsup import config as cfg

    doc = imported(name, tmp_path)
    conf = cfg.parse(doc, tmp_path / "sync.toml")
    assert conf.syncs and all(s.source.is_absolute() for s in conf.syncs)


def test_loops_and_string_functions_become_one_sync_with_three_targets(tmp_path):
    doc = imported("loop_targets.lua", tmp_path)
    (s,) = doc["sync"]
    assert s["targets"] == [f"{tmp_path}/mirror-A-1", f"{tmp_path}/mirror-B-2",
                            f"{tmp_path}/mirror-C-3"]
    assert s["exclude"] == ["*.tmp", "*.swp"] and s["delay"] == 1


def test_settings_both_syntaxes(tmp_path):
    call = imported("flat_rsync.lua", tmp_path)["settings"]
    assert call == {"log_file": f"{tmp_path}/lsyncd.log",
                    "status_file": f"{tmp_path}/lsyncd.status", "status_interval": 1}
    doc = imported("settings_assign.lua", tmp_path)
    assert doc["settings"]["max_processes"] == 2 and doc["sync"][0]["max_delays"] == 50


def test_user_layers_and_default_overrides(tmp_path):
    doc = imported("user_layer.lua", tmp_path)
    first, second = doc["sync"]
    assert first["rsync"] == {"archive": True, "compress": True,
                              "extra": ["--omit-dir-times", "--bwlimit=10000"]}
    assert (first["delay"], second["delay"]) == (1, 2)
    assert second["rsync"] == {"archive": False, "checksum": True, "extra": ["--perms"]}
    over = imported("default_override.lua", tmp_path)["sync"][0]
    assert over["delay"] == 1
    assert over["rsync"] == {"archive": False, "extra": ["--perms", "--group", "--owner"]}


def test_custom_oncreate_is_a_partial_import(tmp_path):
    r = import_config(prepare("custom_oncreate.lua", tmp_path), tmp_path)
    assert r.returncode == 2, r.stderr
    doc = tomllib.loads(r.stdout)
    assert len(doc["sync"]) == 1 and doc["sync"][0]["mode"] == "rsync"
    assert "# PARTIAL IMPORT" in r.stdout
    lines = stderr_lines(r)
    assert any("dropped: sync #2 (line 12, " in ln and "onCreate is a Lua function (line 7)" in ln
               and 'mode = "command"' in ln for ln in lines), lines
    assert any("onModify is the shell command" in ln for ln in lines), lines


@pytest.mark.parametrize("name,where", [("broken_syntax.lua", "broken_syntax.lua:7:"),
                                        ("broken_runtime.lua", "broken_runtime.lua:3:")])
def test_broken_lua_exits_78_with_one_line(tmp_path, name, where):
    r = import_config(prepare(name, tmp_path), tmp_path)
    assert r.returncode == 78, r.stderr
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and where in r.stderr, r.stderr


def test_unreadable_file_exits_1(tmp_path):
    r = import_config(tmp_path / "missing.lua", tmp_path)
    assert r.returncode == 1 and "cannot read" in r.stderr and r.stdout == ""
    r = import_config(tmp_path, tmp_path)
    assert r.returncode == 1 and r.stdout == ""


@pytest.mark.parametrize("name,expect", [
    ("escape_os_execute.lua", "os.execute is not available"),
    ("escape_io_open.lua", "io.open is not available"),
    ("escape_require.lua", "require is not available"),
    ("escape_dofile.lua", "dofile is not available"),
    ("escape_bytecode.lua", "escape_bytecode.lua:3:"),
    ("escape_memory.lua", "memory limit"),
    ("escape_rep.lua", "escape_rep.lua:1:"),
    ("escape_loop.lua", "instruction limit exceeded"),
    ("escape_pattern.lua", "too much CPU time"),
    ("escape_python.lua", "escape_python.lua:3: attempt to index a nil value"),
])
def test_sandbox_escapes_fail_cleanly_without_side_effects(tmp_path, name, expect):
    payload = tmp_path / "payload.lua"
    payload.write_text(f'os.execute("touch {tmp_path}/pwned")\n')
    t0 = time.monotonic()
    r = import_config(prepare(name, tmp_path), tmp_path)
    assert r.returncode == 78, f"{r.returncode}: {r.stderr}"
    assert expect in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stdout == ""
    assert not (tmp_path / "pwned").exists(), "the config escaped the sandbox"
    assert time.monotonic() - t0 < 110, "the sandbox limits did not stop it in time"


def test_bytecode_is_refused_by_load_itself(tmp_path):
    """Not only a crash of the chunk: load must say it refuses binary chunks."""
    conf = tmp_path / "bc.lua"
    conf.write_text('local f, err = load("\\27Lua", "x", "b")\nprint(err)\n'
                    'local g, err2 = load("\\27Lua")\nprint(err2)\n')
    r = import_config(conf, tmp_path)
    assert "only text chunks" in r.stderr, r.stderr
    assert "binary chunk" in r.stderr, r.stderr


def test_an_unset_variable_is_named(tmp_path):
    """os.getenv returning nil makes the config fail on nil: the one line
    says which variable the import's environment lacks."""
    conf = tmp_path / "env.lua"
    conf.write_text('local base = os.getenv("SYNCSUP_IMPORT_UNSET_BASE")\n'
                    'for part in string.gmatch(base, "[^/]+") do end\n'
                    f'sync {{ default.rsync, source = base, target = "{tmp_path}/dst" }}\n')
    os.environ.pop("SYNCSUP_IMPORT_UNSET_BASE", None)
    r = import_config(conf, tmp_path)
    assert r.returncode == 78, f"{r.returncode}: {r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "bad argument #1 to 'gmatch'" in lines[0], lines[0]
    assert "os.getenv returned nil for SYNCSUP_IMPORT_UNSET_BASE" in lines[0], lines[0]
    assert r.stdout == ""


def test_print_goes_to_stderr_and_getenv_is_noted(tmp_path):
    conf = tmp_path / "p.lua"
    conf.write_text('print("hello from the config")\n'
                    f'sync {{ default.rsync, source = os.getenv("SRC_DIR"), '
                    f'target = "{tmp_path}/dst" }}\n')
    env_src = tmp_path / "src"
    old = os.environ.get("SRC_DIR")
    os.environ["SRC_DIR"] = str(env_src)
    try:
        r = import_config(conf, tmp_path)
    finally:
        if old is None:
            os.environ.pop("SRC_DIR")
        else:
            os.environ["SRC_DIR"] = old
    assert r.returncode == 0, r.stderr
    assert "hello from the config" in r.stderr and "hello" not in r.stdout
    assert tomllib.loads(r.stdout)["sync"][0]["source"] == str(env_src)
    assert any("SRC_DIR was read at import time" in ln for ln in stderr_lines(r))


# ------------------------------------------------------ imported, then run
def converges_like_lsyncd(daemon_factory, doc, src: Path, tmp_path: Path) -> None:
    """The imported config passes check, mirrors ``src`` to tmp_path/dst at
    start, and keeps it identical through churn."""
    syncs, settings = runnable(doc, tmp_path)
    d = daemon_factory(syncs, settings_override=settings, start=False)
    check_ok(d)
    d.start()
    wait_converged(src, tmp_path / "dst", on_timeout=d.describe)
    churn(src)
    wait_converged(src, tmp_path / "dst", on_timeout=d.describe)


@pytest.mark.parametrize("name", ["flat_rsync.lua", "direct.lua", "default_override.lua"])
def test_imported_config_converges(tmp_path, daemon_factory, name):
    src = tmp_path / "src"
    seed(src)
    converges_like_lsyncd(daemon_factory, imported(name, tmp_path), src, tmp_path)


def test_imported_fan_out_converges_on_every_target(tmp_path, daemon_factory):
    src = tmp_path / "src"
    seed(src)
    syncs, settings = runnable(imported("loop_targets.lua", tmp_path), tmp_path)
    d = daemon_factory(syncs, settings_override=settings, start=False)
    check_ok(d)
    d.start()
    (src / "skip.tmp").write_text("excluded\n")
    churn(src)
    targets = [tmp_path / f"mirror-{m}-{i}" for i, m in enumerate("ABC", start=1)]
    (src / "skip.tmp").unlink()  # excluded: compare what is meant to arrive
    wait_converged(src, targets, on_timeout=d.describe)
    assert not any((t / "skip.tmp").exists() for t in targets)


def test_imported_excludes_and_filters_apply(tmp_path, daemon_factory):
    for sub in ("src", "src2"):
        seed(tmp_path / sub)
    syncs, settings = runnable(imported("excludes.lua", tmp_path), tmp_path)
    d = daemon_factory(syncs, settings_override=settings, start=False)
    check_ok(d)
    d.start()
    skipped = {"src": ["x.log", "obj.o", "build/out.txt"],
               "src2": ["old.bak", "cache/c.txt", "t.tmp", "m.pyc", "scratch/s.txt"]}
    for sub, names in skipped.items():
        for rel in [*names, "kept.txt", "keep/k.txt"]:
            p = tmp_path / sub / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(rel)
    for sub, dst in (("src", "dst"), ("src2", "dst2")):
        gone = [n.encode() for n in skipped[sub]] + [b"build", b"cache", b"scratch"]
        want = {k: v for k, v in snapshot(tmp_path / sub).items()
                if not any(k == g or k.startswith(g + b"/") for g in gone)}
        assert b"keep/k.txt" in want and b"kept.txt" in want
        deadline = time.monotonic() + 120
        while snapshot(tmp_path / dst, tolerate_vanish=True) != want:
            if time.monotonic() > deadline:
                got = snapshot(tmp_path / dst, tolerate_vanish=True)
                raise AssertionError("\n".join(diff_trees(want, got, names=("want", dst)))
                                     + d.describe())
            time.sleep(0.3)


def test_imported_rsyncssh_converges_over_the_test_sshd(tmp_path, daemon_factory, sshd):
    src = tmp_path / "src"
    seed(src)
    doc = imported("rsyncssh.lua", tmp_path, HOST=f"{sshd.user}@{sshd.host}",
                   PORT=str(sshd.port), IDENTITY=str(sshd.identity_file),
                   KNOWN_HOSTS=str(sshd.known_hosts))
    (s,) = doc["sync"]
    assert s["mode"] == "rsyncssh" and s["ssh"]["port"] == sshd.port
    converges_like_lsyncd(daemon_factory, doc, src, tmp_path)


def test_imported_rsyncssh_login_from_rsh_converges(tmp_path, daemon_factory, sshd):
    """rsync.rsh under default.rsyncssh gives the login user, port, key and
    options; pidfile, nodaemon = false and maxDelays = 0 need nothing from
    the user: a complete import (exit 0), the target's user and port set,
    delay 0, and it mirrors over the test's sshd."""
    src = tmp_path / "src"
    seed(src)
    doc = imported("rsyncssh_rsh.lua", tmp_path, HOST=sshd.host, USER=sshd.user,
                   PORT=str(sshd.port), IDENTITY=str(sshd.identity_file),
                   KNOWN_HOSTS=str(sshd.known_hosts))
    (s,) = doc["sync"]
    assert s["targets"] == [f"{sshd.user}@{sshd.host}:{tmp_path / 'dst'}"]
    assert s["ssh"]["port"] == sshd.port and s["ssh"]["identity_file"] == str(
        sshd.identity_file)
    assert s["delay"] == 0
    converges_like_lsyncd(daemon_factory, doc, src, tmp_path)


# ------------------------------------------------- the same as real Lsyncd
def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.parametrize("name,dsts", [("flat_rsync.lua", ["dst"]),
                                       ("user_layer.lua", ["dst", "dst2"])])
def test_lsyncd_and_syncsup_leave_the_same_tree(tmp_path, daemon_factory, name, dsts):
    """Both tools get the same config and the same source (through a
    symlink each, so their targets differ); both must mirror it, and the
    two targets must be identical, modes included (Lsyncd's default is
    rsync -lts, not -a: the import must keep that)."""
    lsyncd = shutil.which("lsyncd")
    if lsyncd is None:
        pytest.skip("lsyncd is not installed (bash scripts/install-deps.sh --with-lsyncd)")
    src = tmp_path / "src"
    seed(src)
    sides = {}
    for side in ("lsyncd", "syncsup"):
        base = tmp_path / side
        base.mkdir()
        (base / "src").symlink_to(src)
        sides[side] = (base, prepare(name, base))
    syncs, settings = runnable(imported(name, sides["syncsup"][0]), sides["syncsup"][0])
    for sync in syncs:  # a source root is never a symlink: give syncsup the real directory
        sync["source"] = os.path.realpath(sync["source"])
    d = daemon_factory(syncs, settings_override=settings, start=False)
    check_ok(d)
    with open(tmp_path / "lsyncd.out", "wb") as log:
        proc = subprocess.Popen([lsyncd, "-nodaemon", str(sides["lsyncd"][1])], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    def describe() -> str:
        out = (tmp_path / "lsyncd.out").read_text(errors="replace")[-3000:]
        return f"lsyncd (exit {proc.poll()}):\n{out}\n{d.describe()}"

    try:
        d.start()
        all_dsts = [sides[s][0] / t for s in sides for t in dsts]
        wait_converged(src, all_dsts, on_timeout=describe)
        churn(src)
        (src / "later.txt").write_text("x" * 5000)
        os.chmod(src / "later.txt", 0o640)
        wait_converged(src, all_dsts, timeout=180, on_timeout=describe)
        assert proc.poll() is None, describe()
        for t in dsts:
            a, b = snapshot(sides["lsyncd"][0] / t), snapshot(sides["syncsup"][0] / t)
            assert a == b, "\n".join(diff_trees(a, b, names=("lsyncd", "syncsup")))
    finally:
        _stop(proc)


# VmHWM, not ru_maxrss: ru_maxrss survives exec, so a test started by a
# large pytest worker would report the worker's size.
MEASURE = """
import io, sys
from syncsup.lsyncd import import_lsyncd
out, err = io.StringIO(), io.StringIO()
rc = import_lsyncd(sys.argv[1], out, err)
with open("/proc/self/status") as fh:
    peak = next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:"))  # KiB
sys.stdout.write(f"{rc} {peak} {len(out.getvalue())}\\n" + err.getvalue())
"""


@pytest.mark.parametrize("name,body,expect", [
    # one 4 MiB string fifty times in a table: 200 MB of JSON from the child
    ("huge_table.lua", 'local s = string.rep("y", 4 * 1024 * 1024)\nlocal t = {}\n'
     'for i = 1, 50 do t[i] = s end\n', "built a result larger than 4 MiB of JSON"),
    # a print's first call is written whole by the sandbox: 50 of them here
    ("huge_print.lua", 'local s = string.rep("x", 4 * 1024 * 1024)\n'
     "for i = 1, 50 do print(s) end\nlocal t = {}\n", "printed more than 1 MiB"),
])
def test_a_huge_output_of_the_sandbox_is_refused_with_the_importers_memory_bounded(
        tmp_path, name, body, expect):
    """The child's limits do not bound the importer itself: it reads the
    child's output with caps, kills it past one and refuses the config in
    one line (exit 78), its own peak memory far below what the child
    produced (200 MB)."""
    conf = tmp_path / name
    conf.write_text(body + 'sync{default.rsync, source = "/tmp/a", target = "/tmp/b", '
                    "huge = t}\n")
    r = subprocess.run([sys.executable, "-c", MEASURE, str(conf)], capture_output=True,
                       text=True, env=syncsup_env(), timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    first, *lines = r.stdout.splitlines()
    rc, peak_kib, out_len = map(int, first.split())
    assert rc == 78 and out_len == 0, r.stdout[:500]
    assert len(lines) == 1 and expect in lines[0], lines[:3]
    assert lines[0].startswith(f"syncsup import-lsyncd: {name}: "), lines[0]
    assert peak_kib < 100 * 1024, f"the importer peaked at {peak_kib // 1024} MiB"
