"""``syncsup check CONFIG``: everything that can be verified before starting,
without changing anything.

It validates the config, then checks that each source is a readable
directory, that rsync runs locally, and for every target that it can be
reached (ssh with the sync's own options), runs rsync (with its version) and
is writable. It prints one line per check, ``ok:`` or ``problem:``, and
returns the number of problems.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

from syncsup import config as cfg
from syncsup.syncer.argv import ssh_argv

__all__ = ["run_checks"]

TIMEOUT = 20  # seconds for each remote probe


def _version(out: str) -> str:
    first = out.splitlines()[0] if out else ""
    parts = first.split()
    return parts[2] if len(parts) > 2 and parts[0] == "rsync" else first.strip() or "?"


def _local_target(sync: cfg.Sync, target: cfg.Target) -> list[str]:
    path = target.path
    probe = path if os.path.isdir(path) else os.path.dirname(path.rstrip("/"))
    if not os.path.isdir(probe):
        return [f"{sync.name} -> {target.spec}: neither it nor its parent directory exists"]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [f"{sync.name} -> {target.spec}: {probe} is not writable"]
    real_src = os.path.realpath(sync.source)
    real_dst = os.path.realpath(path)
    if real_dst == real_src or real_dst.startswith(real_src + os.sep):
        return [f"{sync.name} -> {target.spec}: the target is inside its own source"]
    return []


def _remote_target(sync: cfg.Sync, target: cfg.Target) -> tuple[list[str], str]:
    """Probe a remote target: ssh, rsync there, writable. Two commands, the
    first of which a target confined by ``syncsup-target`` also allows."""
    assert target.host is not None
    login = f"{target.user}@{target.host}" if target.user else target.host
    name = f"{sync.name} -> {target.spec}"

    def remote(command: str) -> subprocess.CompletedProcess[str] | str:
        try:
            return subprocess.run([*ssh_argv(sync), "--", login, command], capture_output=True,
                                  text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                                  check=False)
        except subprocess.TimeoutExpired:
            return f"{name}: ssh did not answer in {TIMEOUT}s"
        except OSError as exc:
            return f"{name}: cannot run ssh: {exc.strerror}"

    proc = remote("rsync --version")
    if isinstance(proc, str):
        return [proc], ""
    if proc.returncode == 255:
        err = (proc.stderr.strip().splitlines() or ["ssh failed"])[-1]
        return [f"{name}: ssh failed: {err}"], ""
    if not proc.stdout.startswith("rsync"):
        return [f"{name}: rsync is not installed on {target.host}"], ""
    version = _version(proc.stdout)
    q = shlex.quote(target.path)
    probe = remote(f"if test -d {q}; then test -w {q}; else test -w \"$(dirname -- {q})\"; fi "
                   "&& echo WRITABLE")
    if isinstance(probe, str):
        return [probe], version
    if "syncsup-target: refused" in probe.stderr:
        return [], f"{version} (confined by syncsup-target; writability not probed)"
    if "WRITABLE" not in probe.stdout:
        return [f"{name}: {target.path} is not writable"], version
    return [], version


def run_checks(conf: cfg.Config, out: list[str]) -> int:
    """Append ``ok:``/``problem:`` lines to ``out``; return the problem count."""
    problems = 0

    def report(issues: list[str], ok: str) -> None:
        nonlocal problems
        problems += len(issues)
        out.extend(f"problem: {i}" for i in issues)
        if not issues:
            out.append(f"ok: {ok}")

    out.append(f"ok: config {conf.path} ({len(conf.syncs)} sync(s))")
    try:
        local = subprocess.run(["rsync", "--version"], capture_output=True, text=True,
                               timeout=TIMEOUT, check=False).stdout
        report([], f"rsync {_version(local)} (local)")
    except OSError:
        report(["rsync is not installed locally (apt-get install rsync)"], "")
    for sync in conf.syncs:
        src = sync.source
        if not os.path.isdir(src):
            report([f"{sync.name}: source {src} is not a directory"], "")
        elif not os.access(src, os.R_OK | os.X_OK):
            report([f"{sync.name}: source {src} is not readable"], "")
        else:
            report([], f"{sync.name}: source {src}")
        if sync.mode == "command":
            for kind in ("on_create", "on_modify", "on_delete", "on_move", "on_startup"):
                template = getattr(sync.commands, kind)
                if template and shutil.which(template[0]) is None:
                    report([f"{sync.name}: {kind}: {template[0]!r} is not an executable"], "")
            continue
        for target in sync.targets:
            if target.is_remote:
                issues, version = _remote_target(sync, target)
                writable = "" if "not probed" in version else ", writable"
                report(issues, f"{sync.name} -> {target.spec}: ssh works, rsync {version}"
                               f"{writable}")
            else:
                report(_local_target(sync, target), f"{sync.name} -> {target.spec}: writable")
    return problems
