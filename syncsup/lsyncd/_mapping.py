"""What an Lsyncd config recorded, mapped to a syncsup TOML document. Pure:
no Lua, no file system writes, so every rule is unit-testable.

The input is what the sandbox recorded (:class:`Recorded`): each ``sync{}``
after Lsyncd's own inheritance, with the default layers' functions marked
by name. A sync's mode is read off its ``action`` function, as Lsyncd
decides what a sync does: ``default.rsync.action`` is mode ``rsync``, and so
on. Whatever the config asked for that the TOML cannot express becomes a
``dropped`` message naming the key and the syncsup way to get it.

Values come from Lsyncd's defaults where the config did not set them, so
the TOML says what Lsyncd did: ``delay = 15`` for rsync and rsyncssh
(syncsup's own default is 1), rsync ``-lts`` (``archive = false``) unless
the config asked for archive.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncsup.lsyncd._lua import LuaFunction, LuaOther, Recorded, RecordedSync, array
from syncsup.lsyncd._messages import Messages
from syncsup.lsyncd._rsync import _text, _truthy, map_rsync, map_ssh

__all__ = ["Imported", "map_config"]

LAYERS = {"default.rsync": "rsync", "default.rsyncssh": "rsyncssh", "default.direct": "direct"}
HANDLERS = ("onCreate", "onModify", "onDelete", "onMove", "onStartup", "onAttrib")
_SYNCSUP_KEY = {"onCreate": "on_create", "onModify": "on_modify", "onDelete": "on_delete",
                "onMove": "on_move", "onStartup": "on_startup", "onAttrib": "on_modify"}
COMMAND_HINT = ('use a separate [[sync]] with mode = "command" and {key} = ["/path/to/program",'
                ' "{{path}}"] argv templates, or a Python Action class (action = '
                '"package.module:Class", see syncsup/syncer/actions.py)')
# Keys the mapping reads, or internal keys of Lsyncd's layers with no meaning
# for the result.
_HANDLED = {"source", "target", "host", "targetdir", "delay", "maxDelays", "maxProcesses",
            "init", "delete", "exclude", "excludeFrom", "filter", "filterFrom", "rsync", "ssh",
            "name", "exitcodes", "rsyncExitCodes", "sshExitCodes", "action", "prepare",
            "collect", "checkgauge", "monitor", *HANDLERS}
RSYNC_EXIT = {0: "ok", 1: "die", 2: "die", 3: "again", 4: "die", 5: "again", 6: "again",
              10: "again", 11: "again", 12: "again", 14: "again", 20: "again", 21: "again",
              22: "again", 23: "ok", 24: "ok", 25: "die", 30: "again", 35: "again",
              255: "again"}
SSH_EXIT = {0: "ok", 255: "again"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Imported:
    """The TOML document (as a dict for a TOML writer) and the findings."""

    doc: dict[str, Any]
    messages: Messages


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _path(value: str, cwd: Path, msgs: Messages, where: str, key: str) -> str:
    """Absolute path; Lsyncd resolves relative ones against its working
    directory, which is the importer's as far as anyone can tell."""
    if os.path.isabs(value):
        return value
    resolved = os.path.normpath(cwd / value)
    msgs.note(where, f"{key} {value!r} is relative; resolved against the current directory "
              f"(as Lsyncd started here would): {resolved}")
    return resolved


def _is_remote(spec: str) -> bool:
    """Reached over ssh, rsync's way: a colon before the first slash, but
    not two (that is an rsync daemon's module, like an ``rsync://`` URL)."""
    colon, slash = spec.find(":"), spec.find("/")
    return colon > 0 and (slash < 0 or colon < slash) and not _is_daemon(spec)


def _is_daemon(spec: str) -> bool:
    """``[user@]host::module[/path]`` or ``rsync://...``: an rsync daemon's module."""
    if spec.startswith("rsync://"):
        return True
    colon, slash = spec.find(":"), spec.find("/")
    return colon > 0 and (slash < 0 or colon < slash) and spec[colon:colon + 2] == "::"


def _daemon_port(rsync_table: dict[Any, Any]) -> int | None:
    """rsync's ``--port=N`` (or ``--port``, ``N``) in ``rsync._extra``: the
    port of the daemon for ``host::module`` targets (an ``rsync://`` URL
    with its own port keeps it, as in rsync). Taken out of ``_extra`` into
    ``[sync.rsyncd] port``, so that ``syncsup check`` probes the same port
    the transfers use."""
    raw = rsync_table.get("_extra")
    values = array(raw) if isinstance(raw, dict) else [raw] if raw is not None else []
    port: int | None = None
    kept: list[Any] = []
    i = 0
    while i < len(values):
        arg, after = values[i], values[i + 1] if i + 1 < len(values) else None
        text = arg[len("--port="):] if isinstance(arg, str) and arg.startswith("--port=") \
            else _text(after) if arg == "--port" else None
        if text is not None and text.isdigit() and 0 < int(text) < 65536:
            port = int(text)
            i += 1 if arg != "--port" else 2
            continue
        kept.append(arg)
        i += 1
    if port is not None:
        rsync_table["_extra"] = {n: v for n, v in enumerate(kept, start=1)}
    return port


def _layer(config: dict[Any, Any]) -> str | None:
    """The default layer a sync inherits, from its layer functions."""
    for key in ("action", "prepare", "init", "collect"):
        fn = config.get(key)
        if isinstance(fn, LuaFunction) and fn.builtin:
            layer = LAYERS.get(fn.builtin.rsplit(".", 1)[0])
            if layer:
                return layer
    return None


def _describe(value: Any) -> str:
    if isinstance(value, LuaFunction):
        return value.describe()
    if isinstance(value, str):
        return f"the shell command {value!r}"
    return repr(value)


def _custom_code(config: dict[Any, Any], mode: str | None, msgs: Messages, where: str) -> None:
    """One line per piece of the config's own code, saying what replaces it."""
    for key in HANDLERS:
        value = config.get(key)
        if value is None or isinstance(value, bool):
            continue  # onMove = true is a layer flag ("do not split moves")
        hint = COMMAND_HINT.format(key=_SYNCSUP_KEY[key])
        if key == "onAttrib":
            hint += " (on_modify also fires on attribute changes)"
        what = f"syncsup's {mode} mode transfers changes itself; " if mode else ""
        msgs.dropped(where, f"{key} is {_describe(value)}: {what}{hint}")
    action = config.get("action")
    if isinstance(action, LuaFunction) and not action.builtin:
        instead = (f"syncsup's {mode} transfers replace it" if mode else
                   COMMAND_HINT.format(key="on_create"))
        msgs.dropped(where, f"action is {action.describe()}: {instead}")
    init = config.get("init")
    if isinstance(init, LuaFunction) and not init.builtin:
        msgs.dropped(where, f"init is {init.describe()}: syncsup runs its own startup sync "
                     "(init = true); to run a program at startup use on_startup in a "
                     '[[sync]] with mode = "command"')
    prepare = config.get("prepare")
    if isinstance(prepare, LuaFunction) and not prepare.builtin:
        msgs.dropped(where, f"prepare is {prepare.describe()}: it changed the config when "
                     "Lsyncd started, which the import cannot replay; check the keys it set")
    collect = config.get("collect")
    if isinstance(collect, LuaFunction) and not collect.builtin:
        msgs.dropped(where, f"collect is {collect.describe()}: syncsup classifies rsync exit "
                     "codes itself (docs/config.md, 'rsync exit codes')")


def _exit_codes(config: dict[Any, Any], mode: str, msgs: Messages, where: str) -> None:
    """A changed exit code table is dropped only where syncsup classifies a
    code differently from what the table asks ("again" is retry, "die" is
    fatal or halt): a table that only says what syncsup already does (the
    usual one makes 23 "again", as syncsup has it) is a note."""
    expected = {"exitcodes": False if mode == "rsyncssh" else RSYNC_EXIT,
                "rsyncExitCodes": RSYNC_EXIT, "sshExitCodes": SSH_EXIT}
    for key, default in expected.items():
        table = config.get(key)
        if table is None or table == default:
            continue
        if not isinstance(table, dict) or (key == "sshExitCodes" and 0 in table):
            msgs.dropped(where, f"{key} is a custom exit code table: syncsup's classification "
                         "is fixed (docs/config.md, 'rsync exit codes')")
            continue
        if 0 not in table:
            # Lsyncd reads an exit code table with no _verbatim marker (one
            # written out, not copied from its default) as a list: no code 0.
            msgs.dropped(where, f"{key} has no entry for exit code 0, so Lsyncd stopped at the "
                         "first success (a table written out is read as a list: copy "
                         f"default.{'sshExitCodes' if key == 'sshExitCodes' else 'rsyncExitCodes'}"
                         " and change it); syncsup classifies exit codes itself")
            continue
        base = default if isinstance(default, dict) else RSYNC_EXIT
        changed = {c: v for c, v in table.items() if isinstance(c, int) and base.get(c) != v}
        changed.update({c: None for c in base if c not in table})
        differ = sorted(str(c) for c, v in changed.items() if _SYNCSUP_CLASS.get(v)
                        != _syncsup_class(c))
        if differ:
            msgs.dropped(where, f"{key} is a custom exit code table: syncsup classifies "
                         f"rsync exit code {', '.join(differ)} otherwise, and its "
                         "classification is fixed (docs/config.md, 'rsync exit codes')")
        else:
            msgs.note(where, f"{key}: the codes it changes ({', '.join(map(str, sorted(changed)))})"
                      " are classified so by syncsup too")


_SYNCSUP_CLASS = {"ok": "ok", "again": "retry", "die": "fatal"}


def _syncsup_class(code: int) -> str:
    from syncsup.syncer.exitcodes import Outcome, classify

    outcome = classify(code)
    return "fatal" if outcome in (Outcome.FATAL, Outcome.HALT) else str(outcome.value)


def _str_list(value: Any, key: str, msgs: Messages, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    items = array(value) if isinstance(value, dict) else None
    if items is None or not all(isinstance(v, str) for v in items):
        msgs.dropped(where, f"{key} must be a string or a list of strings, not {value!r}")
        return []
    return items


def _targets(config: dict[Any, Any], mode: str, cwd: Path, msgs: Messages,
             where: str) -> list[str] | None:
    if mode == "rsyncssh":
        host, targetdir = config.get("host"), config.get("targetdir")
        if not isinstance(host, str) or not isinstance(targetdir, str) or not host \
                or not targetdir:
            msgs.dropped(where, "default.rsyncssh needs host and targetdir (Lsyncd refuses it "
                         "too): sync not imported")
            return None
        if "target" in config:
            msgs.note(where, "target ignored: default.rsyncssh uses host and targetdir")
        return [f"{host}:{targetdir}"]
    target = config.get("target")
    if not isinstance(target, str) or not target:
        msgs.dropped(where, f"default.{mode} needs a target (Lsyncd refuses it too): sync "
                     "not imported")
        return None
    if _is_daemon(target):
        if mode == "direct":
            msgs.dropped(where, f"target {target!r} is an rsync daemon's module, default.direct "
                         "is for local targets: sync not imported (default.rsync mirrors to a "
                         "daemon)")
            return None
        return [target]
    if _is_remote(target):
        if mode == "direct":
            msgs.dropped(where, f"target {target!r} is remote, default.direct is for local "
                         "targets (Lsyncd would run cp on a path with a colon): sync not "
                         "imported")
            return None
        if target.endswith(":"):
            target += "."  # Lsyncd: "host:" is the login's home directory
        return [target]
    return [_path(target, cwd, msgs, where, "target")]


def _merge_rsh(ssh: dict[str, Any], rsh: dict[str, Any], msgs: Messages,
               where: str) -> dict[str, Any]:
    """default.rsyncssh: the ssh table (Lsyncd's renames and deletes) and
    rsync.rsh (its transfers) as the one ``[sync.ssh]`` syncsup uses for
    both. A value only one of them gives is taken; the same value in both is
    a note; two different values cannot be one setting: rsh's is dropped,
    named."""
    out = dict(ssh)
    for key, value in rsh.items():
        if key == "options":
            names = {o.split("=", 1)[0].lower(): o for o in out.get("options", [])}
            for opt in value:
                have = names.get(opt.split("=", 1)[0].lower())
                if have is None:
                    out.setdefault("options", []).append(opt)
                elif have != opt:
                    msgs.dropped(where, f"rsync.rsh -o {opt}: the ssh table sets {have}; "
                                 "syncsup uses one ssh configuration for transfers and renames, "
                                 "so the ssh table's is kept")
        elif key not in out:
            out[key] = value
            if key != "user":
                msgs.note(where, f"rsync.rsh: {key} = {value!r} is used for renames too "
                          "(syncsup has one ssh configuration per sync)")
        elif out[key] != value:
            msgs.dropped(where, f"rsync.rsh gives {key} = {value!r} but the ssh table "
                         f"{out[key]!r}: syncsup uses one ssh configuration for transfers and "
                         "renames, so the ssh table's is kept")
        else:
            msgs.note(where, f"rsync.rsh: {key} = {value!r} is also in the ssh table")
    return out


def _map_sync(rec: RecordedSync, mode: str, cwd: Path, msgs: Messages,
              where: str) -> dict[str, Any] | None:
    """The [[sync]] table for one sync{} (without its name), or None."""
    config = rec.config
    entry: dict[str, Any] = {"source": _path(str(config["source"]), cwd, msgs, where, "source"),
                             "mode": mode}
    targets = _targets(config, mode, cwd, msgs, where)
    if targets is None:
        return None
    entry["targets"] = targets
    delay = _number(config.get("delay"))
    if delay is None or not 0 <= delay <= 86400:
        msgs.dropped(where, f"delay = {config.get('delay')!r} is not 0..86400 seconds; using 15")
        delay = 15
    entry["delay"] = delay
    delete = config.get("delete", True)
    if delete in (True, False, "startup", "running"):
        if delete is not True:
            entry["delete"] = delete
    else:
        msgs.dropped(where, f"delete = {delete!r}: syncsup knows true, false, \"startup\" and "
                     "\"running\"; using true")
    init = config.get("init")
    if init is False:
        entry["init"] = False
    elif init is not None and not isinstance(init, LuaFunction):
        msgs.dropped(where, f"init = {init!r}: only false (skip the startup sync) has a "
                     "meaning; using true")
    max_delays = _number(config.get("maxDelays"))
    if isinstance(max_delays, int) and max_delays >= 1:
        if max_delays != 1000:
            entry["max_delays"] = max_delays
    elif max_delays == 0:
        # Lsyncd delays an event only while fewer than maxDelays wait: with
        # 0, never, so every change is sent at once, whatever delay says.
        entry["delay"] = 0
        if delay != 0:
            msgs.note(where, f"maxDelays = 0: Lsyncd then syncs every change at once; "
                      f"imported as delay = 0 (not {delay})")
    elif "maxDelays" in config:
        msgs.dropped(where, f"maxDelays = {config.get('maxDelays')!r} is not a count >= 0")
    procs = config.get("maxProcesses")
    if "maxProcesses" not in rec.from_settings and procs not in (None, 1):
        msgs.note(where, f"maxProcesses = {procs!r}: syncsup runs one transfer per target at "
                  "a time and batches what changes meanwhile; [settings] max_processes caps "
                  "transfers across all syncs")
    if "exclude" in config:
        excludes = _str_list(config["exclude"], "exclude", msgs, where)
        if excludes:
            entry["exclude"] = excludes
    if "filter" in config:
        rules = _str_list(config["filter"], "filter", msgs, where)
        if rules:
            entry["filter"] = rules
    for lkey, skey in (("excludeFrom", "exclude_from"), ("filterFrom", "filter_from")):
        value = config.get(lkey)
        if isinstance(value, str) and value:
            entry[skey] = _path(value, cwd, msgs, where, lkey)
        elif value is not None:
            msgs.dropped(where, f"{lkey} = {value!r} is not a file name")
    rsync_table = config.get("rsync", {})
    if any(_is_daemon(t) for t in targets) and isinstance(rsync_table, dict):
        rsync_table = dict(rsync_table)
        password_file = rsync_table.pop("password_file", None)
        if isinstance(password_file, str) and password_file:
            entry["rsyncd"] = {"password_file": _path(password_file, cwd, msgs, where,
                                                      "rsync.password_file")}
        elif password_file is not None:
            msgs.dropped(where, f"rsync.password_file = {password_file!r} is not a file name")
        port = _daemon_port(rsync_table)
        if port is not None:
            entry.setdefault("rsyncd", {})["port"] = port
    rsh = isinstance(rsync_table, dict) and rsync_table.get("rsh") is not None
    rsync, rsh_ssh = map_rsync(rsync_table, mode, msgs, where)
    if (rsh or rsh_ssh) and any(_is_daemon(t) for t in targets):
        # rsync with --rsh and host::module runs a daemon over ssh: that is
        # not a push to the daemon syncsup makes, nor a confined target.
        msgs.dropped(where, f"rsync.rsh with the rsync daemon target {targets[0]!r} is rsync's "
                     "daemon over ssh, which syncsup runs only for confined targets: sync not "
                     "imported")
        return None
    ssh: dict[str, Any] = {}
    if mode == "rsyncssh":
        ssh = _merge_rsh(map_ssh(config.get("ssh", {}), msgs, where), rsh_ssh, msgs, where)
    else:
        if config.get("ssh") is not None:
            msgs.dropped(where, "ssh table: Lsyncd uses it with default.rsyncssh only; for "
                         "default.rsync set ssh options in rsync.rsh or ~/.ssh/config")
        ssh.update(rsh_ssh)
    user = ssh.pop("user", None)
    for t in entry["targets"]:
        login = t.split(":", 1)[0]
        if user and "@" in login and _is_remote(t) and login.split("@", 1)[0] != user:
            msgs.dropped(where, f"ssh -l {user} (rsync.rsh or ssh._extra): the target {t!r} "
                         "names its own user, which is kept")
    if user:
        entry["targets"] = [t if "@" in t.split(":", 1)[0] or not _is_remote(t)
                            else f"{user}@{t}" for t in entry["targets"]]
    if mode == "direct" and ssh:
        ssh = {}
    if ssh:
        entry["ssh"] = ssh
    if rsync:
        entry["rsync"] = rsync
    _exit_codes(config, mode, msgs, where)
    if config.get("monitor") not in (None, "inotify"):
        msgs.dropped(where, f"monitor = {config.get('monitor')!r}: syncsup watches with "
                     "inotify only")
    for key in sorted((k for k in config if k not in _HANDLED), key=str):
        value = config[key]
        if key == "onMove" or (key == "tunnel" and value is None):
            continue
        if isinstance(key, int):
            msgs.dropped(where, f"positional value {value!r} in the sync table: not a layer, "
                         "ignored (Lsyncd ignores it too)")
        elif key == "xargs":
            msgs.note(where, "xargs: Lsyncd 2.1 batched its remote deletes and moves through "
                      "xargs (Lsyncd 2.2 refuses the key); syncsup batches them itself")
        elif key == "tunnel":
            msgs.dropped(where, "tunnel: syncsup has no rsync-daemon tunnel; remote targets "
                         "use ssh directly (host:/path with [sync.ssh])")
        else:
            msgs.dropped(where, f"{key} = {_describe(value)}: unknown key, no syncsup "
                         "equivalent (Lsyncd 2.2 refuses unknown keys too)")
    return entry


def _name(config: dict[Any, Any], source: str, taken: set[str]) -> str:
    wanted = config.get("name")
    if not isinstance(wanted, str) or not _NAME_RE.match(wanted):
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.basename(source.rstrip("/")))
        wanted = base.strip("-._")[:56] or "sync"
        if not wanted[0].isalnum():
            wanted = "sync"
    name, n = wanted, 2
    while name in taken:
        name, n = f"{wanted[:60]}-{n}", n + 1
    taken.add(name)
    return name


def _merge(entries: list[tuple[RecordedSync, str, dict[str, Any]]], msgs: Messages
           ) -> list[tuple[RecordedSync, dict[str, Any]]]:
    """Syncs of one source, mode and settings become one sync with several
    targets (one watcher instead of several); others stay apart, said why."""
    merged: list[tuple[RecordedSync, str, dict[str, Any]]] = []
    for rec, where, entry in entries:
        key = {k: v for k, v in entry.items() if k != "targets"}
        for _first, first_where, other in merged:
            if other["source"] != entry["source"]:
                continue
            other_key = {k: v for k, v in other.items() if k != "targets"}
            if json.dumps(key, sort_keys=True) == json.dumps(other_key, sort_keys=True):
                for t in entry["targets"]:
                    if t in other["targets"]:
                        msgs.note(where, f"target {t} repeats {first_where}; mirrored once")
                    else:
                        other["targets"].append(t)
                msgs.note(where, f"merged into the [[sync]] of {first_where} (same source, "
                          "mode and settings): one watcher, one more target")
                break
        else:
            for _first, first_where, other in merged:
                if other["source"] == entry["source"]:  # said once, against the first
                    other_key = {k: v for k, v in other.items() if k != "targets"}
                    diff = sorted(k for k in set(key) | set(other_key)
                                  if key.get(k) != other_key.get(k))
                    msgs.note(where, f"same source as {first_where} but different "
                              f"{', '.join(diff)}: kept as a separate [[sync]] (syncsup keeps "
                              "these per sync)")
                    break
            merged.append((rec, where, entry))
    return [(rec, entry) for rec, _where, entry in merged]


def _settings(rec: Recorded, cwd: Path, msgs: Messages) -> dict[str, Any]:
    s = dict(rec.settings)
    out: dict[str, Any] = {}
    where = "settings"
    if rec.settings_assigned:
        msgs.note(where, "settings = {...} (with '='): Lsyncd 2.2 refuses this old form; "
                  "imported as settings{...}")
    if isinstance(s.get("logfile"), str):
        out["log_file"] = _path(s.pop("logfile"), cwd, msgs, where, "logfile")
    if isinstance(s.get("statusFile"), str):
        out["status_file"] = _path(s.pop("statusFile"), cwd, msgs, where, "statusFile")
        msgs.note(where, "statusFile: syncsup writes its own status table there (as "
                  "`syncsup status` prints it), not Lsyncd's report format")
    if "statusInterval" in s:
        value = _number(s.pop("statusInterval"))
        if value is not None and 1 <= value <= 86400:
            if value != 10:
                out["status_interval"] = value
        else:
            out["status_interval"] = 1 if value is not None and value < 1 else 86400
            msgs.dropped(where, f"statusInterval = {value!r}: syncsup writes the status file "
                         f"every 1 to 86400 s; using {out['status_interval']}")
    if "maxProcesses" in s:
        value = _number(s.pop("maxProcesses"))
        if isinstance(value, int) and value >= 0:
            out["max_processes"] = value
        else:
            msgs.dropped(where, f"maxProcesses = {value!r} is not a count")
    s.pop("maxDelays", None)  # applied to every sync, as Lsyncd does
    if "nodaemon" in s:
        value = s.pop("nodaemon")
        if _truthy(value):
            msgs.note(where, "nodaemon: syncsup always runs in the foreground (under systemd: "
                      "deploy/syncsup@.service)")
        else:
            msgs.note(where, "nodaemon = false: syncsup does not detach; run it as a "
                      "service (deploy/syncsup@.service)")
    if "insist" in s:
        if _truthy(s.pop("insist")):
            msgs.note(where, "insist: syncsup always keeps retrying unreachable targets")
        else:
            msgs.dropped(where, "insist = false: syncsup never exits because a target is "
                         "unreachable at startup; it retries and shows the error in "
                         "`syncsup status`")
    if "inotifyMode" in s:
        value = s.pop("inotifyMode")
        msgs.note(where, f"inotifyMode = {value!r}: syncsup always reacts to both modify and "
                  "close-write events (batched by delay); the mirror ends up the same")
    for key in ("logfacility", "logident"):
        if key in s:
            s.pop(key)
            msgs.dropped(where, f"{key}: syncsup logs to stderr (the journal under systemd) "
                         "or log_file; set SyslogFacility=/SyslogIdentifier= in the unit")
    if "pidfile" in s:
        s.pop("pidfile")
        msgs.note(where, "pidfile: syncsup writes no pid file; systemd tracks its main "
                  "process and `syncsup status` shows every pid")
    for key in sorted(s, key=str):
        msgs.dropped(where, f"{key}: unknown setting, no syncsup equivalent (Lsyncd 2.2 "
                     "refuses it too)")
    return out


def map_config(rec: Recorded, cwd: Path) -> Imported:
    """The TOML document for everything ``rec`` holds, and the findings."""
    msgs = Messages()
    for name, value in rec.getenv:
        what = "unset" if value is None else repr(value)
        msgs.note("os.getenv", f"{name} was read at import time ({what}); that value is "
                  "now fixed in the TOML")
    settings = _settings(rec, cwd, msgs)
    entries: list[tuple[RecordedSync, str, dict[str, Any]]] = []
    for sync in rec.syncs:
        source = sync.config.get("source")
        line = f"line {sync.line}, " if sync.line else ""
        where = f"sync #{sync.index} ({line}source {source})"
        if not isinstance(source, str) or not source:
            msgs.dropped(where, "no source (Lsyncd refuses this sync too): not imported")
            continue
        for key, value in sync.config.items():
            if isinstance(value, LuaOther):
                msgs.dropped(where, f"{key} is a {value.kind}, which has no TOML form")
        mode = _layer(sync.config)
        _custom_code(sync.config, mode, msgs, where)
        if mode is None:
            msgs.dropped(where, "uses no default layer (default.rsync, default.rsyncssh or "
                         "default.direct), only its own actions: sync not imported (write it "
                         'as a [[sync]] with mode = "command", see the lines about its actions)')
            continue
        entry = _map_sync(sync, mode, cwd, msgs, where)
        if entry is not None:
            entries.append((sync, where, entry))
    taken: set[str] = set()
    syncs = []
    for sync, entry in _merge(entries, msgs):
        syncs.append({"name": _name(sync.config, entry["source"], taken), **entry})
    cap = settings.get("max_processes")
    remote = sum(1 for s in syncs for t in s.get("targets", [])
                 if _over_ssh(t, bool((s.get("ssh") or {}).get("host"))))
    if isinstance(cap, int) and 0 < cap < remote:
        msgs.note("settings", f"maxProcesses = {cap}: syncsup's max_processes also counts "
                  f"each open agent session of an ssh target ({remote} here), so they are "
                  "closed and opened again in turn; raise it to the number of ssh targets "
                  "to keep every session open")
    doc: dict[str, Any] = {}
    if settings:
        doc["settings"] = settings
    if syncs:
        doc["sync"] = syncs
    else:
        msgs.dropped("", "no sync could be imported: the TOML has no [[sync]] and syncsup "
                     "will refuse it until you add one")
    return Imported(doc=doc, messages=msgs)


def _over_ssh(target: Any, sync_host: bool) -> bool:
    """Is an imported target (a string or a table) reached over ssh (not a
    local path, not an rsync daemon's module)? ``sync_host``: its sync's
    ``[sync.ssh] host`` makes plain paths remote."""
    spec = target.get("path") if isinstance(target, dict) else target
    if isinstance(target, dict) and target.get("host"):
        return True
    if not isinstance(spec, str) or spec.startswith("rsync://") or "::" in spec:
        return False
    return sync_host or (not spec.startswith("/") and ":" in spec.split("/", 1)[0])
