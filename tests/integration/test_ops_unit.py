"""Operations: ``deploy/syncsup@.service`` has the settings the
design relies on, passes ``systemd-analyze verify`` and keeps its
``systemd-analyze security`` exposure low when that tool is available; and
``syncsup unit``, run from a virtual environment, writes a unit that names
that installation and a drop-in for a config."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.daemon import sync_entry, write_config
from tests.helpers.procs import assert_no_leftovers
from tests.helpers.tree import wait_converged

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "syncsup@.service"
INSTALLED_BINARY = "/usr/local/bin/syncsup"
MAN_DOCS = "man:syncsup(1) man:syncsup.toml(5)"
# `systemd-analyze security --offline=yes` of the unit as shipped, and of an
# instance with the drop-in `syncsup unit --config` writes for a config whose
# targets are local or on loopback (its IP allow-list: localhost only)
MAX_EXPOSURE = 1.9
MAX_EXPOSURE_WITH_DROPIN = 1.8
MIRROR_CAPS = {"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
               "CAP_FSETID"}
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")

pytestmark = pytest.mark.timeout(120)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd allows a key more than once)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        assert section is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def _one(svc: dict[str, list[str]], key: str) -> str:
    assert key in svc, f"[Service] {key}= is missing"
    return svc[key][-1]


def _true(v: str) -> bool:
    return v.lower() in ("1", "yes", "true", "on")


def _seconds(v: str) -> float:
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    v = v.strip()
    for u in sorted(units, key=len, reverse=True):
        if v.endswith(u) and v[: -len(u)].strip().replace(".", "", 1).isdigit():
            return float(v[: -len(u)]) * units[u]
    return float(v)


def test_unit_file_settings():
    unit = parse_unit(UNIT.read_text())
    assert {"Unit", "Service", "Install"} <= set(unit), set(unit)
    svc = unit["Service"]
    assert _one(svc, "Type") == "notify"
    assert _seconds(_one(svc, "WatchdogSec")) > 0
    assert _one(svc, "KillMode") == "mixed"
    assert _one(svc, "Restart") == "on-failure"
    assert "78" in " ".join(svc.get("RestartPreventExitStatus", [])).split()
    assert _one(svc, "ProtectSystem") in ("strict", "full", "yes", "true")
    # a system user, not root, holding exactly what mirroring owners takes
    assert _one(svc, "User") == "syncsup" and "DynamicUser" not in svc
    assert set(_one(svc, "AmbientCapabilities").split()) == MIRROR_CAPS
    assert set(_one(svc, "CapabilityBoundingSet").split()) == MIRROR_CAPS
    assert _true(_one(svc, "PrivateTmp"))
    assert _true(_one(svc, "NoNewPrivileges"))
    # the instance's state alone is writable: systemd makes it the user's,
    # /var/lib/syncsup stays root's (no link the user could put beside it)
    assert _one(svc, "StateDirectory") == "syncsup/%i"
    assert not any("/var/lib" in v for v in svc.get("ReadWritePaths", [])), svc
    # the supervisor (main pid) sends the notifications, nobody else
    assert svc.get("NotifyAccess", ["main"])[-1] == "main"
    exec_start = _one(svc, "ExecStart").split()
    assert "start" in exec_start and any("%i" in a for a in exec_start), exec_start
    if "ExecReload" in svc:
        assert "HUP" in _one(svc, "ExecReload"), svc["ExecReload"]
    assert unit["Install"].get("WantedBy"), unit["Install"]


def _verify(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text, "ExecStart no longer names /usr/local/bin/syncsup"
    # The unit names the installed entry point; on this machine the package
    # runs from the checkout, so point ExecStart at a binary that exists here.
    binary = shutil.which("syncsup")
    replacement = binary if binary and os.path.isabs(binary) else f"{sys.executable} -m syncsup"
    unit = tmp_path / "syncsup@www.service"
    # Nor are the man pages installed system-wide here: name the checkout's.
    assert MAN_DOCS in text
    docs = " ".join((REPO / "man" / page).as_uri() for page in ("syncsup.1", "syncsup.toml.5"))
    unit.write_text(text.replace(INSTALLED_BINARY, replacement).replace(MAN_DOCS, docs))
    r = _verify(unit)
    out = (r.stdout + r.stderr).strip()
    about_unit = [ln for ln in out.splitlines() if "syncsup" in ln]
    assert r.returncode == 0 and not about_unit, (
        f"systemd-analyze verify exited {r.returncode}:\n{out}"
    )

    # The tool really checks the unit: the unmodified one fails here only
    # because the installed binary is absent.
    if not os.path.exists(INSTALLED_BINARY):
        original = tmp_path / "orig" / "syncsup@www.service"
        original.parent.mkdir()
        original.write_text(text.replace(MAN_DOCS, docs))
        r = _verify(original)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and INSTALLED_BINARY in out, (
            f"expected a complaint about the missing {INSTALLED_BINARY}:\n{out}"
        )
        other = [ln for ln in out.splitlines() if "syncsup" in ln and INSTALLED_BINARY not in ln]
        assert not other, "systemd-analyze found other problems:\n" + "\n".join(other)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _exposure(unit: Path, cwd: Path) -> float:
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                       capture_output=True, text=True, timeout=90, cwd=cwd,
                       stdin=subprocess.DEVNULL)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, f"no exposure in the output of systemd-analyze security:\n{r.stdout}{r.stderr}"
    return float(m.group(1))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """syncsup built once as a wheel, from a copy of this checkout: what
    ``pip install DIR`` builds and installs each time, built here once for
    the module's venvs."""
    base = tmp_path_factory.mktemp("wheel")
    build = base / "build"
    shutil.copytree(REPO, build, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", "tests", "bench", "demo"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--disable-pip-version-check", "-w", str(base / "dist"), str(build)],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stdout + r.stderr
    (built,) = (base / "dist").glob("syncsup-*.whl")
    return built


def _venv(tmp_path: Path, wheel: Path, name: str = "syncsup", system_site: bool = True,
          extra: tuple[str, ...] = ()) -> Path:
    """syncsup installed (not editable) into a virtual environment, as
    docs/operations.md installs it under /opt; its dependencies come from
    this interpreter's site-packages (``system_site``) or ``extra``. The
    venv gets no pip of its own: this interpreter's pip installs into it
    (``--python``), which saves seeding one per venv."""
    venv = tmp_path / "opt" / name
    subprocess.run([sys.executable, "-m", "venv", "--without-pip",
                    *(["--system-site-packages"] * system_site), str(venv)],
                   check=True, timeout=120)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                        "install", "-q", "--no-deps", "--disable-pip-version-check", str(wheel),
                        *extra], capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stdout + r.stderr
    return venv


@needs_analyze
def test_unit_exposure_is_low(tmp_path):
    """The sandbox of the shipped unit, measured: every directive checked by
    systemd's own analyzer (there is no systemd as PID 1 to run it here)."""
    unit = tmp_path / "syncsup@.service"
    unit.write_text(UNIT.read_text())
    exposure = _exposure(unit, tmp_path)
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}"
    documented = (REPO / "docs" / "operations.md").read_text()
    assert f"exposure {exposure}" in documented, \
        f"docs/operations.md does not give the unit's exposure ({exposure})"


def test_unit_command_from_a_venv(tmp_path, src, dst, sshd, wheel):
    """``syncsup unit`` from a venv: ExecStart= is that venv's syncsup and
    Documentation= its installed man pages; with --config, a drop-in that
    makes the local target writable and allows only the ssh target's
    address. systemd-analyze verifies both (when installed) and measures
    the instance's exposure. The venv's syncsup then mirrors."""
    venv = _venv(tmp_path, wheel)
    binary = venv / "bin" / "syncsup"
    assert (venv / "bin" / "syncsup-target").is_file()
    doc = {"settings": {"state_dir": str(tmp_path / "state")},
           "sync": [sync_entry(src, [dst, sshd.target(tmp_path / "remote")],
                               ssh=sshd.ssh_config())]}
    cfg = write_config(tmp_path / "etc" / "www.toml", doc)
    units = tmp_path / "units"
    units.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(binary), "unit", "--output", str(units), "--config", str(cfg)],
                       capture_output=True, text=True, timeout=120, env=env,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    unit_file, dropin = units / "syncsup@.service", units / "syncsup@www.service.d/sandbox.conf"
    users = units / "syncsup.conf"  # not the system's unit directory: beside the unit
    assert r.stdout.split() == ["wrote", str(unit_file), "wrote", str(users),
                                "wrote", str(dropin)], r.stdout
    assert users.read_text().splitlines()[-1].split()[:2] == ["u", "syncsup"]
    if not _has_user("syncsup"):  # not in /etc/sysusers.d: not created, the command named
        assert f"systemd-sysusers {users}" in r.stderr, r.stderr
        assert not _has_user("syncsup")
    svc = parse_unit(unit_file.read_text())
    assert _one(svc["Service"], "ExecStart").split()[0] == str(binary)
    docs = svc["Unit"]["Documentation"][-1].split()
    assert docs and all(d.startswith("file://") for d in docs), docs
    for d in docs:
        assert Path(d.removeprefix("file://")).is_file(), f"{d} is not installed"
    extra = parse_unit(dropin.read_text())["Service"]
    assert f"-{dst}" in extra["ReadWritePaths"], extra
    assert extra["IPAddressDeny"] == ["any"]
    assert extra["IPAddressAllow"][-1].split() == ["localhost", "127.0.0.1"], extra

    if shutil.which("systemd-analyze") is not None:
        instance = units / "syncsup@www.service"  # the template with its drop-in
        r = _verify(instance)
        out = (r.stdout + r.stderr).strip()
        assert r.returncode == 0 and "syncsup" not in out, out
        dropped = _exposure(instance, units)
        assert dropped <= MAX_EXPOSURE_WITH_DROPIN, f"exposure {dropped}"

    (src / "a.txt").write_bytes(b"from the venv\n")
    proc = subprocess.Popen([str(binary), "start", str(cfg)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_converged(src, [dst, tmp_path / "remote"], timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert_no_leftovers(tmp_path)


def test_smallest_target_install(tmp_path, wheel):
    """A target host needs only syncsup-target: a venv of its own with
    syncsup and msgpack and nothing else (docs/operations.md) answers the
    source's ``info`` probe."""
    venv = _venv(tmp_path, wheel, "syncsup-target", system_site=False, extra=("msgpack",))
    root = tmp_path / "root"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(venv / "bin" / "syncsup-target"), str(root), "info"],
                       capture_output=True, text=True, timeout=60, env=env,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads(r.stdout)
    assert info["root"] == str(root) and info["confinement"].startswith("ok"), info
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "import zmq"],
                       capture_output=True, timeout=60, env=env)
    assert r.returncode != 0, "the target's venv has pyzmq: not the smallest install"
