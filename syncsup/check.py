"""``syncsup check CONFIG``: everything that can be verified before starting,
without changing anything.

It validates the config, then checks that each source is a readable
directory, that rsync runs locally, and for every target that it can be
reached (ssh with the sync's own options), runs rsync (with its version) and
is writable, and for a mode that replays renames (``rsyncssh``) that
``syncsup-target`` runs there (renames go only through its agent); for an
rsync daemon's module, that it answers, lets the
sync's user in and is not read only. The local rsync's sender is probed
for following a symlink raced into the source, and judged against who can
write in each source.
It prints one line per check, ``ok:`` or ``problem:``, and returns the
number of problems. A ``warning:`` line is not a problem: it says what
works at a cost. Two say so: this process cannot keep other users' owners
on a local target (not root, and no ``CAP_CHOWN`` as the systemd unit's
service user holds, while the source holds files of another user; rsync
then gives them the daemon's uid, as it does for any user who is not
root); and an ``rsyncssh`` target where ``syncsup-target`` does not run
(renames travel as a delete and a create).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from syncsup import config as cfg
from syncsup.paths import is_within
from syncsup.privilege import can_access, can_chown
from syncsup.rsync_probe import judge, sender_follows
from syncsup.rsync_version import (
    MIN_TARGET,
    format_version,
    parse_version,
    rsync_version,
)
from syncsup.syncer.argv import DAEMON_CONNECT_TIMEOUT, daemon_options, ssh_argv

__all__ = ["run_checks"]



# How many entries of a source the owner warning looks at, at most: enough
# for a tree of several users, and a bound on the time ``check`` spends.
_OWNER_SCAN = 20000
CHECKS_AT_ONCE = 8  # hosts checked side by side (each target is a few ssh logins)


def _foreign_owner(source: str) -> tuple[str, int] | None:
    """An entry of ``source`` (itself included) owned by a uid other than
    ours, with that uid, among the first :data:`_OWNER_SCAN`; or None."""
    me = os.geteuid()
    try:
        uid = os.lstat(source).st_uid
    except OSError:
        return None
    if uid != me:
        return source, uid
    seen, stack = 0, [source]
    while stack and seen < _OWNER_SCAN:
        try:
            with os.scandir(stack.pop()) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            seen += 1
            try:
                uid = entry.stat(follow_symlinks=False).st_uid
                if uid != me:
                    return entry.path, uid
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
            except OSError:
                continue
    return None


def owner_warning(sync: cfg.Sync) -> str | None:
    """One line if the daemon, run as this process, would give other users'
    files its own uid on ``sync``'s local targets; else None."""
    if (can_chown() or sync.runs_commands or not sync.rsync.archive
            or sync.rsync.chown is not None
            or all(t.is_remote for t in sync.targets)):
        return None
    found = _foreign_owner(str(sync.source))
    if found is None:
        return None
    path, uid = found
    me = os.geteuid()
    what = (f"such files get uid {me}" if me != 0
            else "setting their owners fails (rsync exit 23)")
    return (f"{sync.name}: {path} belongs to uid {uid}, but this process (uid {me}) has "
            f"no CAP_CHOWN: on local targets {what} (run as root, or as the unit's service "
            "user with its capabilities, to keep owners)")


def _version(out: str) -> str:
    first = out.splitlines()[0] if out else ""
    parts = first.split()
    return parts[2] if len(parts) > 2 and parts[0] == "rsync" else first.strip() or "?"


def _local_target(sync: cfg.Sync, target: cfg.Target) -> list[str]:
    path = target.path
    probe = path if os.path.isdir(path) else os.path.dirname(path.rstrip("/"))
    if not os.path.isdir(probe):
        return [f"{sync.name} -> {target.spec}: neither it nor its parent directory exists"]
    if not can_access(probe, os.W_OK | os.X_OK):
        return [f"{sync.name} -> {target.spec}: {probe} is not writable"]
    real_src = os.path.realpath(sync.source)
    real_dst = os.path.realpath(path)
    if is_within(real_dst, real_src):
        return [f"{sync.name} -> {target.spec}: the target is inside its own source"]
    return []


def _confined_target(name: str, target: cfg.Target, proc: subprocess.CompletedProcess[str]
                     ) -> tuple[list[str], str]:
    """Judge the answer of ``syncsup-target ROOT info`` on a confined target."""
    if proc.returncode != 0 or not proc.stdout.strip().startswith("{"):
        err = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        if proc.returncode == 127 or "not found" in err:
            err = "syncsup-target is not installed there (pip install syncsup)"
        return [f"{name}: the confined key does not answer: {err}"], ""
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return [f"{name}: syncsup-target answered garbage: {proc.stdout[:100]!r}"], ""
    issues = []
    version = parse_version(str(info.get("rsync", "")))
    if version is None or version < MIN_TARGET:
        issues.append(f"{name}: rsync there is {info.get('rsync') or 'missing'}; a confined "
                      f"target needs {format_version(MIN_TARGET)} or newer")
    confinement = str(info.get("confinement", ""))
    if not confinement.startswith("ok"):
        issues.append(f"{name}: the target cannot confine the key to its ROOT: {confinement}")
    if info.get("root") != target.path:
        issues.append(f"{name}: the key is confined to {info.get('root')}, the config says "
                      f"{target.path}")
    if not info.get("forced"):
        issues.append(f"{name}: confined = true, but the key is not restricted to "
                      "syncsup-target on that host (add command=\"syncsup-target ROOT\" to "
                      "its authorized_keys line)")
    how = confinement.removeprefix("ok: ")
    home = ", the account's start-up files protected" if info.get("home_protected") else ""
    return issues, f"{info.get('rsync')} (confined by syncsup-target to {info.get('root')}: " \
                   f"{how}{home})"


def rejects_missing_args(sync: cfg.Sync, target: cfg.Target, timeout: float) -> bool:
    """Whether the target's rsync, as a receiver, rejects the entry that
    ``--delete-missing-args`` lists for a name gone from the source (rsync
    before 3.4.4 may: "invalid file mode 00"), tried, not read from its
    version: a transfer from an empty directory naming one random name,
    which exists on neither side, so nothing is written or deleted (a
    failure to connect says nothing here: the ssh check reports it)."""
    with tempfile.TemporaryDirectory(prefix="syncsup-check-") as tmp:
        empty = os.path.join(tmp, "empty")
        os.mkdir(empty)
        with open(os.path.join(tmp, "list"), "wb") as fh:
            fh.write(b"./.syncsup-check-" + os.urandom(16).hex().encode() + b"\0")
        argv = [sync.rsync.binary, "-d", "--from0", f"--files-from={tmp}/list",
                "--delete-missing-args", *sync.rsync.extra,
                "-e", " ".join(shlex.quote(p) for p in ssh_argv(sync))]
        try:
            proc = subprocess.run([*argv, "--", f"{empty}/", target.rsync_dest()],
                                  capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
    # rsync's 2 is "protocol incompatibility", the receiver's answer to that
    # entry; its message comes over ssh's stderr and is sometimes lost when
    # the connection closes first, so the code decides.
    return proc.returncode == 2


def _remote_target(sync: cfg.Sync, target: cfg.Target, timeout: float
                   ) -> tuple[list[str], str, list[str]]:
    """Probe a remote target: ssh, rsync there, writable; a confined one
    through ``syncsup-target``'s ``info`` answer. Each ssh call may take
    ``timeout`` seconds. Returns the problems, rsync's version there, and
    warnings (what works, at a cost)."""
    login = target.login
    name = f"{sync.name} -> {target.spec}"

    def remote(command: str) -> subprocess.CompletedProcess[str] | str:
        try:
            return subprocess.run([*ssh_argv(sync), "--", login, command], capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                                  check=False)
        except subprocess.TimeoutExpired:
            return f"{name}: ssh did not answer in {timeout:g}s"
        except OSError as exc:
            return f"{name}: cannot run ssh: {exc.strerror}"

    if target.confined:
        answer = remote(f"syncsup-target {shlex.quote(target.path)} info")
        if isinstance(answer, str):
            return [answer], "", []
        if answer.returncode == 255:
            err = (answer.stderr.strip().splitlines() or ["ssh failed"])[-1]
            return [f"{name}: ssh failed: {err}"], "", []
        return (*_confined_target(name, target, answer), [])
    proc = remote("rsync --version")
    if isinstance(proc, str):
        return [proc], "", []
    if proc.returncode == 255:
        err = (proc.stderr.strip().splitlines() or ["ssh failed"])[-1]
        return [f"{name}: ssh failed: {err}"], "", []
    if not proc.stdout.startswith("rsync"):
        return [f"{name}: rsync is not installed on {target.host}"], "", []
    version = _version(proc.stdout)
    q = shlex.quote(target.path)
    probe = remote(f"if test -d {q}; then test -w {q}; else test -w \"$(dirname -- {q})\"; fi "
                   "&& echo WRITABLE")
    if isinstance(probe, str):
        return [probe], version, []
    if "syncsup-target: refused" in probe.stderr:
        return [f"{name}: the key is confined by syncsup-target there: set confined = true "
                "for this target"], version, []
    if "WRITABLE" not in probe.stdout:
        return [f"{name}: {target.path} is not writable"], version, []
    if sync.moves_on_target:
        # renames are replayed only by the agent: without it, each is a
        # delete and a create (the data sent again)
        program = sync.ssh.target_command
        agent = remote(f"{shlex.quote(program)} --version")
        if isinstance(agent, str):
            return [agent], version, []
        if not agent.stdout.startswith("syncsup-target"):
            # it mirrors all the same: a warning, not a problem
            return [], version, [f"{name}: {program} does not run on {target.host}, so "
                                 "renames cannot be replayed there (each travels as a delete "
                                 f"and a create): install syncsup-target on {target.host} "
                                 "(pip install syncsup) or set [sync.ssh] target_command"]
    return [], version, []


def _daemon_verdict(rc: int, stderr: str) -> str | None:
    """What a dry-run push to an rsync daemon's module says (None: it took
    it). rsync's messages are kept: they name the module."""
    lines = [ln.strip() for ln in stderr.replace("Password: ", "").splitlines() if ln.strip()]
    first = lines[0] if lines else f"rsync exited {rc}"
    if rc == 0:
        return None
    if "auth failed" in stderr:
        return (f"authentication failed ({first}): check [sync.rsyncd] password_file and the "
                "module's auth users and secrets file")
    if "Unknown module" in stderr:
        return f"no such module on the daemon ({first})"
    if rc in (10, 35) or "failed to connect" in stderr:
        return f"the rsync daemon is unreachable ({first})"
    if "read only" in stderr:
        return f"the module is read only ({first})"
    return first


def _daemon_target(sync: cfg.Sync, target: cfg.Target, timeout: float) -> list[str]:
    """Ask the daemon to take an empty directory, without writing
    (``--dry-run``): that logs in to the module (the password, the module's
    name, ``read only``), as every transfer will, and changes nothing. stdin
    is not a terminal and there is none to open: with no password file
    rsync gets no password rather than prompting."""
    name = f"{sync.name} -> {target.spec}"

    def rsync(*args: str) -> subprocess.CompletedProcess[str] | str:
        argv = [sync.rsync.binary, *daemon_options(sync), f"--timeout={timeout:.0f}", *args]
        try:
            return subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                  timeout=timeout + DAEMON_CONNECT_TIMEOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True, check=False)
        except subprocess.TimeoutExpired:
            return f"{name}: the rsync daemon did not answer in {timeout:.0f}s"
        except OSError as exc:
            return f"{name}: cannot run {sync.rsync.binary}: {exc.strerror}"

    with tempfile.TemporaryDirectory(prefix="syncsup-check-") as empty:
        proc = rsync("--dry-run", "-d", empty + "/", target.rsync_dest())
    if isinstance(proc, str):
        return [proc]
    verdict = _daemon_verdict(proc.returncode, proc.stderr)
    if verdict is not None:
        return [f"{name}: {verdict}"]
    parent = target.path.rpartition("/")[0]
    if not parent:
        return []
    # rsync creates the target directory, not the ones above it
    where = dataclasses.replace(target, path=parent).rsync_dest().rstrip("/")
    listed = rsync("--list-only", "-d", where)
    if isinstance(listed, str):
        return [listed]
    if listed.returncode != 0:
        err = (listed.stderr.strip().splitlines() or [f"rsync exited {listed.returncode}"])[0]
        return [f"{name}: {parent} is not a directory in module {target.module} (rsync "
                f"creates only the last directory of the path): {err}"]
    return []


Checked = tuple[list[str], str, list[str]]  # (problems, the ``ok:`` text, warnings)


def _target(sync: cfg.Sync, target: cfg.Target, timeout: float) -> Checked:
    """One target's check: (problems, the ``ok:`` text, warnings)."""
    if target.is_daemon:
        return (_daemon_target(sync, target, timeout),
                f"{sync.name} -> {target.spec}: the rsync daemon's module answers, the login "
                "works and it is not read only", [])
    if not target.is_remote:
        return _local_target(sync, target), f"{sync.name} -> {target.spec}: writable", []
    issues, version, warnings = _remote_target(sync, target, timeout)
    writable = "" if "confined" in version else ", writable"
    if not issues and rejects_missing_args(sync, target, timeout):
        if target.confined:
            issues = [f"{sync.name} -> {target.spec}: rsync {version.split()[0]} there "
                      "rejects --delete-missing-args (\"invalid file mode 00\"), which a "
                      "confined target needs for the deletions its agent leaves to rsync: "
                      "install rsync 3.4.4 or newer there"]
        else:
            writable += (", its rsync rejects --delete-missing-args: deletions go by "
                         "directory listing")
    return issues, f"{sync.name} -> {target.spec}: ssh works, rsync {version}{writable}", warnings


def _source(i: int, sync: cfg.Sync, report: Callable[[list[str], str], None],
            out: list[str]) -> None:
    """The lines about one sync's source (and its commands, in command mode)."""
    src = sync.source
    if not os.path.isdir(src):
        what = ("is not a directory (syncsup start refuses it)" if os.path.lexists(src)
                else "does not exist (syncsup start waits for it, deleting nothing)")
        report([f"sync[{i}].source: {src} {what}"], "")
    elif not can_access(src, os.R_OK | os.X_OK):
        report([f"{sync.name}: source {src} is not readable"], "")
    else:
        report([], f"{sync.name}: source {src}")
        warning = owner_warning(sync)
        if warning is not None:
            out.append(f"warning: {warning}")
    if sync.runs_commands:
        for kind in ("on_create", "on_modify", "on_delete", "on_move", "on_startup"):
            template = getattr(sync.commands, kind)
            if template and shutil.which(template[0]) is None:
                report([f"{sync.name}: {kind}: {template[0]!r} is not an executable"], "")


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
    probed: dict[str, bool | None] = {}
    for binary in sorted({s.rsync.binary for s in conf.syncs}):
        found = rsync_version(binary)
        if found is None:
            report([f"{binary} is not installed locally (apt-get install rsync)"], "")
            continue
        probed[binary] = sender_follows(binary, conf.timings.probe_timeout)
        how = {False: "its sender does not follow a symlink raced into the source (probed)",
               True: "its sender follows a symlink raced into the source (probed)",
               None: "whether its sender follows a raced symlink could not be probed"
                     + ("" if can_chown() else " (the probe needs root or CAP_CHOWN)")}
        report([], f"rsync {format_version(found)} (local): {how[probed[binary]]}")
    for sync in conf.syncs:
        binary = sync.rsync.binary
        if binary in probed and not sync.runs_commands:
            verdict = judge(binary, probed[binary], sync.source, conf.settings.strict_rsync)
            if verdict.refuse:
                report([f"{sync.name}: {verdict.refuse} (syncsup start refuses it)"], "")
            elif verdict.warn:
                report([], f"{sync.name}: {verdict.warn} (start warns)")
    # Each remote target costs a few ssh logins and waits on the network:
    # the hosts are checked side by side, each host's targets one after
    # another (a host may limit its logins or an rsync daemon its
    # connections), and every line is reported in the config's order,
    # after its sync's source.
    hosts: dict[str | None, list[tuple[int, int]]] = {}
    for i, sync in enumerate(conf.syncs):
        if not sync.runs_commands:
            for j, target in enumerate(sync.targets):
                hosts.setdefault(target.host, []).append((i, j))
    timeout = conf.timings.check_timeout

    def check_host(keys: list[tuple[int, int]]) -> dict[tuple[int, int], Checked]:
        return {(i, j): _target(conf.syncs[i], conf.syncs[i].targets[j], timeout)
                for i, j in keys}

    pool = ThreadPoolExecutor(max_workers=max(1, min(CHECKS_AT_ONCE, len(hosts))))
    futures = {host: pool.submit(check_host, keys) for host, keys in hosts.items()}
    checks = {key: futures[host] for host, keys in hosts.items() for key in keys}
    try:
        for i, sync in enumerate(conf.syncs):
            _source(i, sync, report, out)
            for j in range(0 if sync.runs_commands else len(sync.targets)):
                issues, ok, warnings = checks[(i, j)].result()[(i, j)]
                report(issues, ok)
                out.extend(f"warning: {w}" for w in warnings)
    finally:
        pool.shutdown(cancel_futures=True)
    return problems
