"""Every setting Lsyncd's manual documents, as one list.

The list is the reference the importer is held to: the project's corpus of
Lsyncd configs (tests/data/lsyncd_corpus) must use each entry at least once,
and the "Every Lsyncd setting" table of docs/lsyncd.md must name each entry,
so neither can silently fall behind. The names come from the manual's
"Config Layer 4" page and were checked against the ``checkgauge`` tables of
the default layers compiled into Lsyncd 2.2.3 (the Debian package), which is
what decides whether Lsyncd itself accepts a key.

Lsyncd 2.2.3 refuses a config that uses a key of :data:`REFUSED_BY_2_2_3`
("Parameter ... unknown"): they are documented for other Lsyncd versions
(``copy_unsafe_links`` for newer ones, ``xargs`` for 2.1), so users bring
them, and the importer still says what they become.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MANUAL", "REFUSED_BY_2_2_3", "Setting"]


@dataclass(frozen=True)
class Setting:
    """One documented setting: ``name`` as the docs table writes it (scope
    and key, e.g. ``rsync.acls``) and ``pattern``, a regular expression that
    finds a use of it in a config's text."""

    name: str
    pattern: str


def _key(scope: str, key: str) -> Setting:
    return Setting(f"{scope}.{key}", rf"(?<![\w.]){key}\s*=(?!=)")


_SETTINGS = ("logfile", "pidfile", "nodaemon", "statusFile", "statusInterval", "logfacility",
             "logident", "insist", "inotifyMode", "maxProcesses", "maxDelays")
_SYNC = ("source", "target", "delay", "maxDelays", "maxProcesses", "init", "exclude",
         "excludeFrom", "filter", "filterFrom", "exitcodes", "rsyncExitCodes", "sshExitCodes",
         "onCreate", "onModify", "onDelete", "onMove", "onStartup", "onAttrib", "action",
         "collect", "prepare")
_RSYNC = ("acls", "append", "append_verify", "archive", "backup", "backup_dir", "binary",
          "bwlimit", "checksum", "chown", "chmod", "compress", "copy_dirlinks", "copy_links",
          "copy_unsafe_links", "cvs_exclude", "dry_run", "executability", "existing", "group",
          "groupmap", "hard_links", "ignore_times", "inplace", "ipv4", "ipv6", "keep_dirlinks",
          "links", "one_file_system", "omit_dir_times", "omit_link_times", "owner",
          "password_file", "perms", "protect_args", "prune_empty_dirs", "quiet", "rsh",
          "rsync_path", "sparse", "suffix", "temp_dir", "timeout", "times", "update",
          "usermap", "verbose", "whole_file", "xattrs", "_extra")
_SSH = ("binary", "identityFile", "options", "port", "_extra")
# The inside of a table up to a key, which may pass one level of inner
# tables (ssh.options = { ... }, rsync._extra = { ... }).
_BODY = r"(?:[^{}]|\{[^{}]*\})*?"

MANUAL: tuple[Setting, ...] = (
    *(Setting(f"settings.{k}", rf"settings\s*=?\s*\{{[^}}]*(?<![\w.]){k}\s*=")
      for k in _SETTINGS),
    Setting("default.rsync", r"default\.rsync(?!ssh)\b"),
    Setting("default.rsyncssh", r"default\.rsyncssh\b"),
    Setting("default.direct", r"default\.direct\b"),
    *(_key("sync", k) for k in _SYNC),
    Setting('sync.delete = true', r"(?<![\w.])delete\s*=\s*true"),
    Setting('sync.delete = false', r"(?<![\w.])delete\s*=\s*false"),
    Setting('sync.delete = "startup"', r"(?<![\w.])delete\s*=\s*[\"']startup[\"']"),
    Setting('sync.delete = "running"', r"(?<![\w.])delete\s*=\s*[\"']running[\"']"),
    Setting("sync.target host:path", r"target\s*=\s*[\"'][^\"'/:]+:[^:]"),
    Setting("sync.target host::module", r"target\s*=\s*[\"'][^\"'/]+::"),
    Setting("sync.target rsync://", r"target\s*=\s*[\"']rsync://"),
    _key("rsyncssh", "host"),
    _key("rsyncssh", "targetdir"),
    _key("rsyncssh", "xargs"),
    *(Setting(f"ssh.{k}", rf"ssh\s*=\s*\{{{_BODY}(?<![\w.]){k}\s*=") for k in _SSH),
    # rsync = { ... } or rsync = helper { ... }
    *(Setting(f"rsync.{k}", rf"rsync\s*=\s*\w*\s*\{{{_BODY}(?<![\w.]){k}\s*=")
      for k in _RSYNC),
)

REFUSED_BY_2_2_3 = frozenset({"rsync.copy_unsafe_links", "rsyncssh.xargs"})
