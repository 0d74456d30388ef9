"""Building rsync command lines, pure.

File names never appear on a command line: they go NUL-separated into a
``--files-from`` list, so no name is ever parsed as an option or seen by a
shell (local or remote). The only strings on the command line come from the
config file.

Three kinds of transfer:

* ``tree``: subtrees rescanned whole, recursively, with ``--delete``
  (startup, overflow, new directories). No ``-I``: rsync's quick check,
  exact to the nanosecond (``--modify-window=-1``), keeps a full comparison
  cheap. A rescan that is not the startup one means events were lost (a
  watcher restart, a queue overflow); a lost same-size rewrite that kept its
  mtime would pass the quick check, so those add ``--checksum``, which costs
  a read only of files whose size matches on both sides.
* ``times``: the directories holding a batch's entries, after them, for
  their modification times (``-d``, no ``-I``; deleting only towards a
  receiver without ``--delete-missing-args``, see ``paths``); only those
  the paths step did not set (``syncsup.syncer.steps.covered``).
* ``paths``: entries named by events, one by one (``-d``, no recursion).
  ``-I`` because the quick check would skip a same-size rewrite made within
  one timestamp tick; ``--delete-missing-args`` so that a path gone from
  the source is deleted on the target; ``--force`` so that this works for
  non-empty directories too. Towards a receiver that may reject
  ``--delete-missing-args`` (before rsync 3.4.4), ``--ignore-missing-args``
  instead, and the times step deletes (``syncsup.syncer.deletions``). With
  rsync's ``--backup`` among the options,
  ``--checksum`` instead of ``-I``: ``-I`` rewrites a file whose content
  did not change (a chmod, a file the tree step already sent) and each
  rewrite leaves a backup copy of identical content, which rsync driven
  by Lsyncd (no ``-I``) never makes; the checksum still catches a same-size
  rewrite within one timestamp tick. With ``--append``, neither: ``-I
  --append`` skips a file whose size did not change whole, a new mode or
  owner too, which the quick check sets when the file's time did not change
  either. (A file of the same size and a new time keeps its old content,
  time and mode with ``--append`` whatever else is passed: rsync's own
  limit, which appending asks for.)
"""

from __future__ import annotations

import os
import shlex

from syncsup.config import Sync, Target
from syncsup.syncer.plan import Step

__all__ = ["DAEMON_CONNECT_TIMEOUT", "SSH_DEFAULTS", "daemon_options", "login_of",
           "names_imply_dirs", "rsync_argv",
           "ssh_argv", "ssh_command"]

# Fail fast on a dead host and notice a dead connection, instead of hanging.
SSH_DEFAULTS = ("BatchMode=yes", "ConnectTimeout=10", "ServerAliveInterval=15",
                "ServerAliveCountMax=3")


def ssh_argv(sync: Sync, control_path: str | None = None) -> list[str]:
    """ssh and its options for ``sync`` (without host or command).

    ``control_path`` points at the syncer's multiplexing master for this
    target (``ControlMaster=no``: use it if it is up, else connect directly),
    so a transfer costs no new ssh handshake.
    """
    parts = ["ssh"]
    if sync.ssh.port is not None:
        parts += ["-p", str(sync.ssh.port)]
    if sync.ssh.identity_file is not None:
        parts += ["-i", str(sync.ssh.identity_file), "-o", "IdentitiesOnly=yes"]
    user_keys = {o.split("=", 1)[0].strip().lower() for o in sync.ssh.options}
    for opt in SSH_DEFAULTS:
        if opt.split("=", 1)[0].lower() not in user_keys:
            parts += ["-o", opt]
    for opt in sync.ssh.options:
        parts += ["-o", opt]
    if control_path is not None:
        parts += ["-o", "ControlMaster=no", "-o", f"ControlPath={control_path}"]
    return parts


def login_of(sync: Sync, target: Target) -> bytes:
    """What one ssh connection is: the ssh command of ``sync`` (port, key,
    options) and ``target``'s login. Targets with the same one share an ssh
    master; any difference (another key, another option) gets its own, so
    no target ever rides on a connection made with another's authority."""
    return b"\0".join(os.fsencode(p) for p in [*ssh_argv(sync), "--", target.login])


# Seconds rsync waits for an rsync daemon to accept the connection (like
# ssh's ConnectTimeout): a dead host fails with rsync's 35 instead of hanging.
DAEMON_CONNECT_TIMEOUT = 10


def daemon_options(sync: Sync) -> list[str]:
    """rsync's options for a target served by an rsync daemon: the password
    file (rsync reads it itself; no password is ever on a command line or in
    an environment), a connection timeout, and ``TCP_NODELAY`` unless the
    options set socket options of their own.

    Without ``TCP_NODELAY`` the connection's handshake stalls twice: the
    client writes two small messages back to back, Nagle's algorithm holds
    the second until the first is acknowledged, and the daemon, waiting for
    both, delays that acknowledgement (40 ms on Linux). Measured on
    loopback: 92 ms for one small file, 5 ms with it. rsync buffers its
    data itself, so only those handshake writes go out sooner."""
    opts = [f"--contimeout={DAEMON_CONNECT_TIMEOUT}"]
    if "sockopts" not in _options(sync.rsync.extra)[0]:
        opts.append("--sockopts=TCP_NODELAY")
    if sync.rsyncd.password_file is not None:
        opts.append(f"--password-file={sync.rsyncd.password_file}")
    return opts


def ssh_command(sync: Sync, control_path: str | None = None) -> str:
    """The ``-e`` argument for rsync. rsync splits it itself (spaces, with
    single or double quotes), so every part is quoted."""
    return " ".join(shlex.quote(p) for p in ssh_argv(sync, control_path))


def _options(extra: tuple[str, ...] | list[str]) -> tuple[set[str], set[str]]:
    """The long options of ``extra`` (their names, without dashes or value)
    and the letters of its short option clusters. An element not starting
    with ``-`` is a value given on its own and is skipped; a value attached
    to a short option counts as letters, which can only make a caller more
    careful."""
    longs: set[str] = set()
    shorts: set[str] = set()
    for a in extra:
        if a.startswith("--"):
            longs.add(a[2:].partition("=")[0])
        elif a.startswith("-"):
            shorts.update(a[1:])
    return longs, shorts


def _backs_up(extra: tuple[str, ...] | list[str]) -> bool:
    """Whether rsync's own options ask it to keep backups (``--backup``,
    ``--backup-dir``, or ``b`` in a cluster of short options)."""
    longs, shorts = _options(extra)
    return bool({"backup", "backup-dir"} & longs) or "b" in shorts


def _appends(extra: tuple[str, ...] | list[str]) -> bool:
    """Does rsync append to files (``--append``, ``--append-verify``)?"""
    return bool({"append", "append-verify"} & _options(extra)[0])


# rsync options known neither to take a name out of the list nor to stop
# it listing the directories above a name (and their ``no-`` forms).
_IMPLYING_LONG = frozenset((
    "8-bit-output", "acls", "address", "append", "append-verify", "archive", "atimes",
    "backup", "backup-dir", "block-size", "blocking-io", "bwlimit", "checksum",
    "checksum-choice", "chmod", "chown", "compress", "compress-choice", "compress-level",
    "contimeout", "copy-devices", "copy-dirlinks", "copy-links", "copy-unsafe-links",
    "crtimes", "debug", "delay-updates", "delete", "delete-after", "delete-before",
    "delete-delay", "delete-during", "delete-excluded", "delete-missing-args", "devices",
    "dirs", "dry-run", "executability", "fake-super", "force", "fsync", "fuzzy", "group",
    "groupmap", "hard-links", "human-readable", "ignore-errors", "ignore-existing",
    "ignore-times", "info", "inplace", "ipv4", "ipv6",
    "itemize-changes", "keep-dirlinks", "links", "log-file", "log-file-format", "max-alloc",
    "max-delete", "max-size", "min-size", "modify-window", "msgs2stderr", "munge-links",
    "numeric-ids", "omit-dir-times", "omit-link-times", "one-file-system", "open-noatime",
    "out-format", "outbuf", "owner", "partial", "partial-dir", "password-file", "perms",
    "port", "preallocate", "progress", "protect-args", "quiet", "recursive", "rsync-path",
    "safe-links", "secluded-args", "size-only", "skip-compress", "sockopts", "sparse",
    "specials", "stats", "suffix", "super", "temp-dir", "timeout", "times", "trust-sender",
    "update", "usermap", "verbose", "whole-file", "write-devices"))
_IMPLYING_SHORT = frozenset("vqcarlLkKHpEAXogDtOJUNSzPWxuhibsd0468Iyn")


def names_imply_dirs(extra: tuple[str, ...] | list[str]) -> bool:
    """With these extra options, does every name rsync is given bring the
    directories above it, with their attributes (``steps.covered``)?

    Only if every option is one known to leave the list alone: a filter
    (``--exclude``, ``-f``, ``-F``, ``-C``...) takes a name out of it with
    its directories, and only the sync's own rules are read to know which;
    ``--no-implied-dirs`` (``--no-i-d``) and ``--no-relative`` stop rsync
    listing them. An option not known here answers no, and the times step
    then stays whole."""
    longs, shorts = _options(extra)
    return (all(name.removeprefix("no-") in _IMPLYING_LONG for name in longs)
            and shorts <= _IMPLYING_SHORT)


def rsync_argv(sync: Sync, target: Target, step: Step, list_file: str, startup: bool,
               control_path: str | None = None, missing_args: bool = True,
               super_receiver: bool = False) -> list[str]:
    """argv for one ``tree`` or ``paths`` step of ``sync`` to ``target``,
    reading NUL-separated relative names from ``list_file``. A tree step's
    ``checksum`` adds ``--checksum`` (a rescan after lost events); its
    ``empty_guard`` adds ``--max-delete=0`` (an empty source root must never
    wipe the mirror: rsync then deletes nothing and exits 25).
    ``missing_args``: the receiver takes ``--delete-missing-args``; if
    not, a times step deletes instead (its directories that lost an entry
    are listed with their entries). ``super_receiver``: this process is not
    uid 0 but may set owners (``privilege.super_receiver``, asked once by
    the caller): a local receiver gets ``--super``."""
    kind = step.kind.value
    if kind not in ("tree", "paths", "times"):
        raise ValueError(f"not an rsync step: {kind!r}")
    verify = step.checksum
    opts = sync.rsync
    deletes = sync.deletes(startup)
    # Without archive, keep symlinks as symlinks and times (for the quick check).
    argv = [opts.binary, "-a" if opts.archive else "-lt", "--from0",
            f"--files-from={list_file}", "--force", "--stats"]
    if target.confined and opts.archive:
        # syncsup-target refuses device files (a device node written inside
        # ROOT would open the host's disks to its local users).
        argv.insert(2, "--no-devices")
    if opts.archive and not target.is_remote and super_receiver:
        # A local receiver running as a service user with CAP_CHOWN: rsync
        # keeps owners only as uid 0 or with --super. Never towards a remote
        # login, whose rsync would fail on every chown (rc 23).
        argv.insert(2, "--super")
    # Times exact to the nanosecond: by default rsync takes times within the
    # same second as equal, and leaves a directory's time stale.
    argv += ["--modify-window=-1"]
    if kind == "tree":
        argv += ["-r"]
        if verify or opts.checksum:
            argv += ["--checksum"]
        if deletes:
            argv += ["--delete"]
    elif kind == "paths":
        # With ``checksum`` (files a proof left unproven), or when rsync keeps
        # backups (a re-sent identical file would leave a backup copy):
        # compared by content, sent only if they differ; with ``--append``,
        # by the quick check; else always sent.
        argv += ["-d"]
        if verify or _backs_up(opts.extra):
            argv += ["--checksum"]
        elif not _appends(opts.extra):
            argv += ["-I"]
    else:
        argv += ["-d"]  # the quick check: a listed directory's unchanged entries cost nothing
        if deletes and not missing_args:
            argv += ["--delete"]
    argv += ["--delete-missing-args" if deletes and kind != "times" and missing_args
             else "--ignore-missing-args"]
    if opts.compress:
        argv += ["-z"]
    for flag, value in (("--bwlimit", opts.bwlimit), ("--chown", opts.chown),
                        ("--chmod", opts.chmod), ("--usermap", opts.usermap),
                        ("--groupmap", opts.groupmap)):
        if value is not None:
            argv += [f"{flag}={value}"]
    if opts.timeout:
        argv += [f"--timeout={opts.timeout}"]
    if step.empty_guard:
        argv += ["--max-delete=0"]
    elif sync.max_delete and deletes:
        argv += [f"--max-delete={sync.max_delete}"]
    argv += [f"--exclude={pattern}" for pattern in sync.exclude]
    if sync.exclude_from is not None or sync.filter_from is not None:
        raise ValueError("expand_rule_files() first: rule files cannot be read under --from0")
    argv += [f"--filter={rule}" for rule in sync.filter]
    argv += list(opts.extra)
    if target.is_daemon:
        argv += daemon_options(sync)
    elif target.is_remote:
        argv += ["-e", ssh_command(sync, control_path)]
    argv += [str(sync.source).rstrip("/") + "/", target.rsync_dest()]
    return argv
