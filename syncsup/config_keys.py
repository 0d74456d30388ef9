"""Every key the config file accepts, with its type, default and meaning:
the one list that both the parser and the documentation read.

The parser (``syncsup.config``) refuses any key of a table that is not
listed here, so a key cannot be accepted without being documented; the
key tables of docs/config.md and of syncsup.toml(5) are generated from this
list (``python -m syncsup._docgen``), and a unit test asks the parser which
keys it reads and fails on any that is missing here. Defaults are not
written twice: a key without an explicit ``default`` text shows the default
of the dataclass field of the same name.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
from dataclasses import dataclass
from pathlib import Path

from syncsup.timings import Timings

__all__ = ["SECTIONS", "Key", "default_text", "names", "table_markdown", "unknown_key_hint"]


@dataclass(frozen=True)
class Key:
    """One row of a key table: ``names`` (several keys that share a meaning
    share a row), the TOML type, the meaning (markdown), and the default as
    shown (None: taken from the section's dataclass)."""

    names: tuple[str, ...]
    type: str
    meaning: str
    default: str | None = None


def _k(names: str, type_: str, meaning: str, default: str | None = None) -> Key:
    return Key(tuple(names.split()), type_, " ".join(meaning.split()), default)


SETTINGS = (
    _k("state_dir", "path", """lock, sockets and the journal. Created mode 0700. Keep it
       short: unix socket paths are limited to 107 bytes.""",
       "`/var/lib/syncsup/<config name>` as root and for the systemd unit's user "
       "(its `StateDirectory=`), else `$XDG_STATE_HOME/syncsup/<config name>`"),
    _k("log_level", "string", """`debug`, `info`, `warning` or `error`. `info` logs one
       line per transfer; `debug` adds the rsync argv."""),
    _k("log_file", "path", """also append every log line to this file (stderr is always
       logged to). Created mode 0640, never opened through a symlink. Its directory must
       exist: `check` and `start` refuse the config otherwise."""),
    _k("log_format", "string", """`text`: one line per record (time, level, process);
       `json`: one JSON object per line (`time`, `level`, `role`, `component`, `pid`,
       `message`), on stderr and in `log_file`, for log shippers."""),
    _k("max_processes", "integer", """cap on the targets at work at once across all
       syncs: a target running a transfer (rsync, a proof, a command), or holding an open
       agent session (remote targets; a local target's agent runs inside the daemon), or
       both, counts one. A step that needs room when all is taken first closes an agent
       session that has nothing to do (the one unused longest), else waits, oldest batch
       first. `0`: no cap (every target at once: the memory then grows with the number of
       targets). The peak memory is about the daemon plus `max_processes` targets' processes:
       see "Memory" below. Example: `max_processes = 4`""", "four per CPU, at most 16"),
    _k("metrics", "string", """`"host:port"` on which the supervisor serves Prometheus
       metrics (`http://host:port/metrics`), e.g. `"127.0.0.1:9473"`; docs/operations.md
       lists them. Unset: no metrics, no port."""),
    _k("status_file", "path", """write the table `syncsup status` prints to this file
       every `status_interval` seconds (mode 0644, replaced atomically, never through a
       symlink), for tools that read Lsyncd's status file. Its directory must exist. A name
       ending in `.json` gets `syncsup status --json` instead (a relay's, for
       `syncsup-target --relay-status`: see "Cascades" in docs/operations.md)."""),
    _k("status_interval", "number", """seconds between two writes of `status_file`,
       1-86400."""),
    _k("strict_rsync", "bool", """at start, syncsup probes whether the local rsync's
       sender follows a symlink raced into a parent directory of the source, and refuses
       it only where another user can write in the source (docs/security.md); `true`
       refuses such an rsync for every source."""),
)

SYNC = (
    _k("name", "string", """1-64 letters, digits, `.`, `_`, `-`; unique. Names the journal
       and sockets.""", "`sync<N>`"),
    _k("source", "path", """the tree to watch. If it does not exist (a network mount
       that comes up late), `start` runs anyway and the sync waits for it: an error in
       the log, `waiting for source` in systemd's status, nothing deleted on the targets,
       the startup sync once it appears; the same if it goes away while the daemon runs.
       `check` reports it. A path that is not a directory ends `start` with exit 78
       (and so does a missing `--source`). The root itself is never followed: a symlink
       there is a config error (give the directory it names); see docs/status.md, "The
       source root".""", "required"),
    _k("mode", "string", """`rsync`: everything by rsync (local or over ssh). `rsyncssh`:
       remote targets; renames are replayed on the target by syncsup's agent over ssh (no
       data resent; `syncsup-target` must be installed there, see `[sync.ssh]
       target_command`, else each rename is a delete and a create, and the log and `check`
       say so), content by rsync. `direct`: local targets; renames replayed with rename(2),
       content by rsync.
       In both, a rename with an excluded end is not replayed: into an excluded name it
       deletes the old name, out of one it creates the new one, as rsync does. `command`:
       run your own actions (below)."""),
    _k("delay", "number", """seconds a change may wait to be batched with others (from its
       first event). `0` sends as soon as possible."""),
    _k("delete", "bool or string", """`true`: the target mirrors deletes; `false`: never
       delete on the target; `"startup"`: only the startup sync deletes extras;
       `"running"`: only live deletes are mirrored."""),
    _k("init", "bool", """`false` skips the startup sync (you vouch the targets are
       current); rescans after lost events still run."""),
    _k("max_delays", "integer", """this many changes flush a batch before `delay` has
       passed (counted as the watcher reads them: within 0.5 s while changes keep
       coming)."""),
    _k("max_delete", "integer", """refuse to delete more than this many entries in one
       transfer (`--max-delete`); hitting it halts the target (state `failed`) until
       `syncsup resync` or `resume`. 0: no limit."""),
    _k("full_sync_interval", "number", """seconds between full comparisons of source and
       targets (with `--checksum`), to repair changes made behind the daemon's back. 0: off;
       else at least 10."""),
    _k("startup_checksum", "bool", """`true`: a start with no seen-point (first start, lost
       state) compares every file by content (`--checksum`), trusting no ctime. Default
       `false`: files whose target copy the kernel's ctimes prove current are only
       quick-checked (see "First start on a populated target" in docs/operations.md)."""),
    _k("agent_max_size", "integer", """files up to this many bytes go through the target's
       agent (a long-lived channel: no process per batch), larger ones through rsync (delta
       transfer). 0: rsync for everything. At most 4194304. See "The agent" below."""),
    _k("targets", "list", """each a string — a local path, `[user@]host:/path` (a colon
       before the first slash means remote, as in rsync), or an rsync daemon's module,
       `[user@]host::module[/dir]` or `rsync://[user@]host[:port]/module[/dir]` (`mode =
       "rsync"` only: plain rsync over TCP, no ssh, no agent; see `[sync.rsyncd]`); a
       plain path becomes remote when `[sync.ssh] host` is set — or a table (keys below),
       e.g. `{ path = "/srv/www", host = "h1", user = "backup", confined = true }`.""",
       "required (optional in `command` mode)"),
    _k("exclude", "list of strings", """rsync exclude patterns (`--exclude`), applied to
       every transfer. Excluded files already on the target are left alone."""),
    _k("exclude_from", "path", """a file of exclude patterns (`--exclude-from`), read
       when each process starts; a file that cannot be read is a config error."""),
    _k("filter", "list of strings", """rsync filter rules, e.g. `["- *.tmp", "+ /keep/",
       "P /protected"]` (`--filter`)."""),
    _k("filter_from", "path", """a file of filter rules (`--filter="merge FILE"`), read
       like `exclude_from`."""),
    _k("on_create on_modify on_delete on_move on_startup", "list of strings",
       """`command` mode: argv templates, see below.""", "`[]`"),
    _k("action", "string", """`command` mode: `"package.module:Class"`, a subclass of
       `syncsup.syncer.actions.Action`.""", "none"),
    _k("ssh", "table", """how rsync reaches remote targets: `[sync.ssh]`, below.""",
       "`{}`"),
    _k("rsync", "table", """how rsync is run: `[sync.rsync]`, below.""", "`{}`"),
    _k("rsyncd", "table", """how rsync reaches rsync daemon targets: `[sync.rsyncd]`,
       below.""", "`{}`"),
)

TARGET = (
    _k("path", "string", """the directory on the target (local, or on `host`).""",
       "required"),
    _k("host", "string", """makes the target remote on this host.""",
       "`[sync.ssh] host`"),
    _k("user", "string", """login for `host`.""", "`[sync.ssh] user`"),
    _k("confined", "bool", """the key reaching this host runs only `syncsup-target ROOT`
       (see `[sync.ssh] confined`); `path` must be that ROOT.""",
       "`[sync.ssh] confined`"),
    _k("relay", "bool", """this host runs its own syncsup onward from `path` (a cascade):
       `syncsup status --relays` asks its `syncsup-target` for that daemon's status (see
       "Cascades" in docs/operations.md). Remote targets only.""", "false"),
)

SSH = (
    _k("host", "string", """makes plain target paths remote on this host (Lsyncd's `host` +
       `targetdir`).""", "none"),
    _k("user", "string", """login for `host`.""", "none"),
    _k("port", "integer", """1-65535""", "ssh's"),
    _k("identity_file", "path", """private key; `IdentitiesOnly=yes` is added with it.""",
       "ssh's"),
    _k("options", "list of strings", """extra `-o` options, each `Name=value`. They override
       syncsup's defaults `BatchMode=yes`, `ConnectTimeout=10`, `ServerAliveInterval=15`,
       `ServerAliveCountMax=3`. Host key checking stays as ssh configures it (on by
       default): add the target to `known_hosts`, or point `UserKnownHostsFile=` at
       one."""),
    _k("confined", "bool", """the targets' key runs only `syncsup-target ROOT` (its forced
       command, docs/security.md): transfers use rsync's daemon mode over ssh, renames and
       small changes go through the agent, which the target's kernel confines to ROOT. The
       target's path must be that ROOT. A table target may set its own `confined`."""),
    _k("target_command", "string", """the command that starts the agent on a target whose
       key is not confined (the path to it, if it is not on the remote `PATH`). Without it
       there, that target uses rsync for everything."""),
    _k("agent_idle", "number", """seconds an agent session may sit idle before it is
       closed; the next change opens another over the ssh master (about 0.1-0.3 s more for
       that change). An idle session costs a Python process on the target (and, where it
       could not go over the master, an ssh client here). 0: never closed."""),
    _k("master_idle", "number", """seconds an ssh master connection may sit with no batch
       for any of its targets before it is closed (the targets reached with the same login
       and ssh settings share one master; the longest `master_idle` among them applies); the
       next batch opens it again (one ssh handshake more for that batch, as every transfer
       costs without a master). An idle master costs an ssh process on each side. At least
       `agent_idle` (the agent's session runs over it). 0: never closed."""),
)

RSYNC = (
    _k("binary", "string", """the rsync program."""),
    _k("archive", "bool", """`-a`. With `false`, only `-lt`: symlinks stay symlinks, times
       kept; no permissions, owners, devices."""),
    _k("compress", "bool", """`-z`, worth it over slow links."""),
    _k("checksum", "bool", """`--checksum` on every subtree comparison (startup and
       recoveries too). Without it, a recovery after lost events compares by content only
       the files whose ctime says they changed (docs/operations.md, "After lost
       events")."""),
    _k("bwlimit", "int or string", """`--bwlimit`, KiB/s or with a suffix: `1000`,
       `"10M"`."""),
    _k("chown chmod usermap groupmap", "string", """passed as `--chown=` etc."""),
    _k("extra", "list of strings", """more rsync options, each starting with `-`, e.g.
       `["--acls", "--xattrs"]`."""),
    _k("timeout", "integer", """seconds; rsync's `--timeout`, and the syncer kills (TERM, 2 s
       grace, KILL of its process group) any transfer whose processes read or write nothing
       for that long — a stopped rsync, a dead link — and retries it. 0: never."""),
)

RSYNCD = (
    _k("password_file", "path", """the password for the daemon's `auth users`, read by rsync
       itself (`--password-file`): never on a command line or in an environment. It must be
       a regular file accessible by its owner only (`chmod 600`; owned by root when syncsup
       runs as root), as rsync requires.""", "none"),
    _k("port", "integer", """the daemon's TCP port, 1-65535, for targets written
       `host::module`; an `rsync://host:port/module` target says its own.""", "rsync's 873"),
)


def _timings() -> tuple[Key, ...]:
    """The ``[timings]`` keys: read from the fields of Timings, whose
    metadata holds each one's meaning and floor."""
    return tuple(_k(f.name, "number", f"{f.metadata['doc']} (floor: {f.metadata['floor']:g})")
                 for f in dataclasses.fields(Timings))


TIMINGS = _timings()

# The section name (as used in docs/config.md's markers) -> its keys and the
# dataclass whose field defaults they show.
SECTIONS: dict[str, tuple[tuple[Key, ...], str]] = {
    "settings": (SETTINGS, "Settings"),
    "sync": (SYNC, "Sync"),
    "sync.targets": (TARGET, "Target"),
    "sync.ssh": (SSH, "SshOptions"),
    "sync.rsync": (RSYNC, "RsyncOptions"),
    "sync.rsyncd": (RSYNCD, "RsyncdOptions"),
    "timings": (TIMINGS, "Timings"),
}


def names(section: str) -> frozenset[str]:
    """Every key ``section`` accepts."""
    return frozenset(n for key in SECTIONS[section][0] for n in key.names)


def unknown_key_hint(section: str, key: str) -> str:
    """``unknown key`` and, if one is close, the key that was probably meant."""
    close = difflib.get_close_matches(key, sorted(names(section)), n=1)
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key"


def _toml(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str | Path):
        return f'`"{value}"`'
    if isinstance(value, tuple | list):
        return "`[]`" if not value else f"`{list(value)}`"
    return f"`{value}`"


def default_text(section: str, key: Key) -> str:
    """The default of ``key`` as the docs show it."""
    if key.default is not None:
        return key.default
    from syncsup import config

    cls = getattr(config, SECTIONS[section][1])
    field = next(f for f in dataclasses.fields(cls) if f.name == key.names[0])
    return _toml(field.default)


def table_markdown(section: str) -> str:
    """The markdown table of ``section``'s keys."""
    rows = ["| key | type | default | meaning |", "|-----|------|---------|---------|"]
    for key in SECTIONS[section][0]:
        shown = ", ".join(f"`{n}`" for n in key.names)
        rows.append(f"| {shown} | {key.type} | {default_text(section, key)} | "
                    f"{key.meaning} |")
    return "\n".join(rows)
