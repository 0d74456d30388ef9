"""Lsyncd's ``rsync`` and ``ssh`` tables to ``[sync.rsync]`` and ``[sync.ssh]``.

Lsyncd turns its rsync table into one short-option cluster plus long
options: ``archive = true`` fills in links, perms, times, group, owner,
devices and specials where they are not set; the default layer sets only
``links``, ``times`` and ``protect_args`` (``rsync -lts``, not ``-a``).
syncsup runs ``-a`` (``archive = true``) or ``-lt`` (``archive = false``)
and takes any other option in ``extra``. So the mapping computes the flag
set Lsyncd would pass and picks the syncsup form that passes the same:
``-a`` when every archive part is on, else ``-lt`` plus ``--perms`` etc.,
``--no-links`` / ``--no-times`` when those were switched off.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from syncsup.lsyncd._lua import array
from syncsup.lsyncd._messages import Messages

__all__ = ["map_rsync", "map_ssh", "parse_ssh_args"]

ARCHIVE_PARTS = ("links", "perms", "times", "group", "owner", "devices", "specials")
# Lsyncd rsync booleans with an rsync long option of the same meaning.
FLAGS = {
    "perms": "--perms", "group": "--group", "owner": "--owner", "devices": "--devices",
    "specials": "--specials", "acls": "--acls", "xattrs": "--xattrs",
    "hard_links": "--hard-links", "sparse": "--sparse", "whole_file": "--whole-file",
    "update": "--update", "executability": "--executability",
    "one_file_system": "--one-file-system", "cvs_exclude": "--cvs-exclude",
    "copy_links": "--copy-links", "copy_unsafe_links": "--copy-unsafe-links",
    "copy_dirlinks": "--copy-dirlinks", "keep_dirlinks": "--keep-dirlinks",
    "inplace": "--inplace", "backup": "--backup", "ignore_times": "--ignore-times",
    "omit_dir_times": "--omit-dir-times", "omit_link_times": "--omit-link-times",
    "prune_empty_dirs": "--prune-empty-dirs", "ipv4": "--ipv4", "ipv6": "--ipv6",
    "append": "--append", "append_verify": "--append-verify", "existing": "--existing",
}
VALUED = {"backup_dir": "--backup-dir", "suffix": "--suffix", "temp_dir": "--temp-dir",
          "rsync_path": "--rsync-path"}
STRINGS = ("chown", "chmod", "usermap", "groupmap")
DEFAULT_BINARY = "/usr/bin/rsync"
DEFAULT_SSH = ("/usr/bin/ssh", "ssh")
# Options that would break how syncsup drives rsync (its file lists, its ssh
# command, its idea of success), whatever Lsyncd did with them.
_REFUSED = re.compile(r"^(-e|--rsh|--files-from|--from0|-0|--dry-run|-n|--list-only|"
                      r"--write-batch|--only-write-batch|--read-batch|--server|--sender|"
                      r"--daemon|--info|--out-format|--log-file)(=|$)")
# Long options whose value may come as the next _extra entry.
_TAKES_VALUE = frozenset(
    f"--{o}" for o in ("exclude", "include", "filter", "exclude-from", "include-from",
                       "bwlimit", "chmod", "chown", "usermap", "groupmap", "backup-dir",
                       "suffix", "temp-dir", "partial-dir", "compare-dest", "copy-dest",
                       "link-dest", "timeout", "contimeout", "max-size", "min-size",
                       "max-delete", "modify-window", "rsync-path", "iconv",
                       "compress-level", "skip-compress", "block-size", "checksum-choice"))


def _truthy(value: Any) -> bool:
    """Lua truth: everything but nil and false."""
    return value is not None and value is not False


def _text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (int, float, str)):
        return str(value)
    return None


def parse_ssh_args(args: list[str], out: dict[str, Any], msgs: Messages, where: str,
                   what: str) -> bool:
    """ssh arguments ``-p N``, ``-i FILE``, ``-o Name=value``, ``-l USER``
    into ``[sync.ssh]`` keys in ``out``. False (and one dropped line) if any
    argument has no equivalent, in which case ``out`` is left unchanged."""
    found: dict[str, Any] = {}
    options: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        flag, attached = arg[:2], arg[2:]
        if flag in ("-p", "-i", "-o", "-l") and arg.startswith("-"):
            value = attached or (args[i + 1] if i + 1 < len(args) else None)
            i += 1 if attached else 2
            if value is None:
                break
            if flag == "-p" and value.isdigit():
                found["port"] = int(value)
            elif flag == "-i":
                found["identity_file"] = value
            elif flag == "-l":
                found["user"] = value
            elif flag == "-o" and re.fullmatch(r"[A-Za-z0-9]+ *= *\S.*|[A-Za-z0-9]+ +\S.*", value):
                name, _, val = value.replace(" ", "=", 1).partition("=")
                options.append(f"{name.strip()}={val.strip(' =')}")
            else:
                break
            continue
        break
    else:
        if options:
            found["options"] = options
        out.update(found)
        return True
    msgs.dropped(where, f"{what} {shlex.join(args)!r}: only -p, -i, -o Name=value and -l "
                 "have [sync.ssh] equivalents (port, identity_file, options, user); set the "
                 "rest in ~/.ssh/config for the target host")
    return False


def _extra(values: list[Any], msgs: Messages, where: str, ssh: dict[str, Any],
           mode: str) -> list[str]:
    """``rsync._extra`` entries that syncsup can pass (each must start with
    '-'); a long option followed by its value as a separate entry is joined."""
    out: list[str] = []
    i = 0
    while i < len(values):
        arg = _text(values[i])
        i += 1
        if arg is None:
            msgs.dropped(where, f"rsync._extra[{i}] is not a string")
            continue
        if arg in _TAKES_VALUE and i < len(values) and isinstance(values[i], str):
            arg = f"{arg}={values[i]}"
            i += 1
        rsh = re.match(r"^(?:-e|--rsh=?)(.*)$", arg)
        if rsh and mode != "rsyncssh":
            command = rsh.group(1) or (_text(values[i]) if i < len(values) else "") or ""
            if not rsh.group(1):
                i += 1
            _rsh(command, ssh, msgs, where, "rsync._extra --rsh")
            continue
        if not arg.startswith("-"):
            msgs.dropped(where, f"rsync._extra entry {arg!r} is not an option: syncsup passes "
                         "only options (starting with '-') in [sync.rsync] extra")
            continue
        cluster = re.fullmatch(r"-([A-Za-z]+)", arg)
        if _REFUSED.match(arg) or (cluster and set(cluster.group(1)) & set("ne0")):
            msgs.dropped(where, f"rsync._extra {arg!r}: syncsup drives rsync's file lists, ssh "
                         "command and output itself; this option would break that")
            continue
        if arg in ("-v", "--verbose", "-q", "--quiet", "--progress", "-P"):
            msgs.note(where, f"rsync._extra {arg!r} ignored: syncsup logs one line per "
                      "transfer (log_level = \"debug\" adds the rsync command line)")
            continue
        out.append(arg)
    return out


def _rsh(command: str, ssh: dict[str, Any], msgs: Messages, where: str, what: str) -> None:
    try:
        argv = shlex.split(command)
    except ValueError:
        argv = []
    if not argv or argv[0].rsplit("/", 1)[-1] != "ssh":
        msgs.dropped(where, f"{what} = {command!r}: syncsup always connects with ssh; use "
                     "[sync.ssh] (port, identity_file, options) for its options")
        return
    parse_ssh_args(argv[1:], ssh, msgs, where, what)


def map_rsync(table: Any, mode: str, msgs: Messages, where: str
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``[sync.rsync]`` from Lsyncd's (inherited) rsync table, and the
    ``[sync.ssh]`` keys its ``rsh`` implies (rsync mode only)."""
    rsync: dict[str, Any] = {}
    ssh: dict[str, Any] = {}
    if not isinstance(table, dict):
        msgs.dropped(where, "rsync is not a table")
        return rsync, ssh
    t = dict(table)
    for key in ("_computed", "_rshIndex", "recursive"):
        t.pop(key, None)  # Lsyncd internals; -r is always on in both tools
    if _truthy(t.pop("archive", None)):
        for part in ARCHIVE_PARTS:
            t.setdefault(part, True)
    on = {part for part in ARCHIVE_PARTS if _truthy(t.get(part))}
    extra: list[str] = []
    umask_chmod = False
    if "perms" not in on:
        # Without -p rsync gives new files the source mode masked by the
        # receiver's umask: Lsyncd's (usually 022), but syncsup's processes
        # run with 077, which would make every new file 0600. -p with
        # --chmod=go-w gives what Lsyncd gave under umask 022 (and default.
        # direct copied with cp -p: plain -p there).
        on.add("perms")
        umask_chmod = mode != "direct"
        msgs.note(where, "Lsyncd's rsync ran without --perms, so new files got the source "
                  "mode masked by Lsyncd's umask; syncsup's daemon runs with umask 077, so "
                  "the import adds --perms" + (" with chmod go-w (umask 022's result)"
                                               if umask_chmod else " (default.direct "
                                               "copied with cp -p)")
                  + "; existing target files now follow the source's mode too")
    if on == set(ARCHIVE_PARTS):
        rsync["archive"] = True
    else:
        rsync["archive"] = False  # -lt
        extra += [f"--no-{p}" for p in ("links", "times") if p not in on]
        extra += [FLAGS[p] for p in ARCHIVE_PARTS if p in on and p in FLAGS]
    for part in ARCHIVE_PARTS:
        t.pop(part, None)
    for key in ("compress", "checksum"):
        if key in t and _truthy(t.pop(key)):
            rsync[key] = True
    binary = t.pop("binary", DEFAULT_BINARY)
    if isinstance(binary, str) and binary and binary != DEFAULT_BINARY:
        rsync["binary"] = binary
    elif not isinstance(binary, str) or not binary:
        msgs.dropped(where, "rsync.binary is not a program name; syncsup runs rsync from PATH")
    if "bwlimit" in t:
        value = t.pop("bwlimit")
        text = _text(value)
        if text is not None and re.fullmatch(r"[0-9]+(\.[0-9]+)?[KMGkmg]?", text):
            rsync["bwlimit"] = int(text) if text.isdigit() else text
        else:
            msgs.dropped(where, f"rsync.bwlimit = {value!r} is not a rate syncsup accepts "
                         "(KiB/s or with a K/M/G suffix)")
    for key in STRINGS:
        if key in t:
            value = _text(t.pop(key))
            if value:
                rsync[key] = value
            else:
                msgs.dropped(where, f"rsync.{key} is not a string")
    if umask_chmod:
        rsync["chmod"] = f"{rsync['chmod']},go-w" if rsync.get("chmod") else "go-w"
    if "timeout" in t:
        value = t.pop("timeout")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 \
                and float(value).is_integer():
            rsync["timeout"] = int(value)
        else:
            msgs.dropped(where, f"rsync.timeout = {value!r} is not a whole number of seconds")
    if _truthy(t.get("copy_unsafe_links")):
        msgs.note(where, "rsync.copy_unsafe_links: Lsyncd 2.2 refuses this key (newer Lsyncd "
                  "pass --copy-unsafe-links, as the import does)")
    for key, option in FLAGS.items():
        if key in t and _truthy(t.pop(key)):
            extra.append(option)
    for key, option in VALUED.items():
        if key in t:
            value = _text(t.pop(key))
            if value:
                extra.append(f"{option}={value}")
            else:
                msgs.dropped(where, f"rsync.{key} is not a string")
    protect = t.pop("protect_args", True)
    if not _truthy(protect):
        msgs.note(where, "rsync.protect_args = false ignored: file names never reach rsync's "
                  "command line in syncsup (they go through --files-from)")
    for key in ("verbose", "quiet"):
        if key in t and _truthy(t.pop(key)):
            msgs.note(where, f"rsync.{key} ignored: syncsup logs one line per transfer "
                      "(log_level = \"debug\" adds the rsync command line)")
    if "dry_run" in t and _truthy(t.pop("dry_run")):
        msgs.dropped(where, "rsync.dry_run: syncsup has no dry-run mirror; `syncsup check` "
                     "validates config, sources and targets without changing anything")
    if "password_file" in t and t.pop("password_file") is not None:
        msgs.dropped(where, "rsync.password_file is for rsync daemon targets (host::module, "
                     "rsync://host/module), and this sync's target is not one")
    if "rsh" in t:
        value = t.pop("rsh")
        if mode == "direct":
            msgs.note(where, "rsync.rsh ignored: default.direct targets are local")
        else:
            _rsh(str(value), ssh, msgs, where, "rsync.rsh")
    if "_extra" in t:
        values = t.pop("_extra")
        extra += _extra(array(values) if isinstance(values, dict) else [values], msgs, where,
                        ssh, mode)
    for key in sorted(t, key=str):
        msgs.dropped(where, f"rsync.{key} = {t[key]!r}: no syncsup equivalent (Lsyncd 2.2 "
                     "does not know it either); add the rsync option to [sync.rsync] extra "
                     "if you need it")
    deduped: list[str] = []
    for arg in extra:
        if arg not in deduped:
            deduped.append(arg)
    if deduped:
        rsync["extra"] = deduped
    return rsync, ssh


def map_ssh(table: Any, msgs: Messages, where: str) -> dict[str, Any]:
    """``[sync.ssh]`` from default.rsyncssh's ssh table."""
    ssh: dict[str, Any] = {}
    if not isinstance(table, dict):
        msgs.dropped(where, "ssh is not a table")
        return ssh
    t = dict(table)
    t.pop("_computed", None)
    binary = t.pop("binary", DEFAULT_SSH[0])
    if binary not in DEFAULT_SSH:
        msgs.dropped(where, f"ssh.binary = {binary!r}: syncsup runs ssh from PATH")
    if "port" in t:
        port = _text(t.pop("port"))
        if port is not None and port.isdigit() and 0 < int(port) < 65536:
            ssh["port"] = int(port)
        else:
            msgs.dropped(where, f"ssh.port = {port!r} is not a port number")
    if "identityFile" in t:
        ident = _text(t.pop("identityFile"))
        if ident:
            ssh["identity_file"] = ident
        else:
            msgs.dropped(where, "ssh.identityFile is not a path")
    options: list[str] = []
    if "options" in t:
        raw = t.pop("options")
        items = raw.items() if isinstance(raw, dict) else []
        for name, value in sorted(items, key=lambda kv: str(kv[0])):
            text = _text(value)
            if isinstance(name, int) and text and re.fullmatch(r"[A-Za-z0-9]+=.+", text):
                options.append(text)  # a list of "Name=value" strings
            elif isinstance(name, str) and name.isalnum() and text is not None:
                options.append(f"{name}={text}")
            else:
                msgs.dropped(where, f"ssh.options entry {name!r} = {value!r} is not an ssh "
                             "option Name=value")
    if options:
        ssh["options"] = options
    if "_extra" in t:
        raw = t.pop("_extra")
        args = [str(a) for a in (array(raw) if isinstance(raw, dict) else [raw])]
        if args:
            found: dict[str, Any] = {}
            if parse_ssh_args(args, found, msgs, where, "ssh._extra"):
                if found.get("options"):
                    ssh["options"] = [*ssh.get("options", []), *found.pop("options")]
                ssh.update(found)
    for key in sorted(t, key=str):
        msgs.dropped(where, f"ssh.{key}: no syncsup equivalent")
    return ssh
