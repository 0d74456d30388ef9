"""``syncsup-target ROOT``: what a syncsup source may do on a target host.

As the forced command of the source's key (see docs/security.md)::

    command="/usr/local/bin/syncsup-target /srv/www",restrict ssh-ed25519 AAAA... syncsup@src

sshd runs it instead of whatever the client asked for, with the request in
``$SSH_ORIGINAL_COMMAND``. Without a forced command the same requests can
be given as arguments (``syncsup-target ROOT agent``). The request only
*selects* one of a few fixed services; nothing in it decides what may be
written or where, so no parsing of it can be tricked:

* ``rsync --server --daemon .``: an rsync transfer, served by rsync's own
  daemon mode with a generated module (``_daemon``): chrooted to ROOT,
  write-only, options on an allow-list that rsync itself enforces;
* ``syncsup-target ROOT agent``: syncsup's agent (renames and deletes
  through directory descriptors), chrooted to ROOT; ``... stats``: the same
  agent answering only the requests that read sizes and times (a first
  start's proof);
* ``syncsup-target ROOT info``, ``rsync --version``, ``true``: read-only
  answers for ``syncsup check``;
* ``syncsup-target ROOT status``: on a relay (a host that runs its own
  syncsup onward from ROOT), that daemon's JSON status file, named by the
  forced command's ``--relay-status=FILE`` (never by the request), for
  ``syncsup status --relays`` on the source.

Anything else is refused on stderr and in syslog, exit 1. If the kernel
cannot confine the account (see ``_confine``), nothing runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shlex
import stat
import subprocess
import sys
import time
from typing import NoReturn

from syncsup import __version__
from syncsup.paths import relative_to
from syncsup.target import _syslog
from syncsup.target._confine import ConfineError, describe, grant_chroot_for_exec
from syncsup.target._kernel import MECHANISMS

__all__ = ["EXIT_STATUS", "REQUESTS", "Refused", "build_parser", "classify", "main",
           "parse_options", "relay_status", "serve_status"]

# What ``syncsup-target --help`` and its man page (generated from
# build_parser() and these tables) say. The run-time path below does not use
# argparse: it must classify $SSH_ORIGINAL_COMMAND, which no option parser
# should interpret.
SUMMARY = "what a syncsup source may do on a target host"

DESCRIPTION = """\
syncsup-target is the forced command of a syncsup source's ssh key on a
target host: sshd runs it, whatever the client asked for, with the
client's request in $SSH_ORIGINAL_COMMAND. The request only selects one of
a few fixed services; nothing in it decides what may be written or where.
Every service works inside ROOT, the mirror's directory on this host. Behind
the forced command, rsync runs chrooted to ROOT (an account other than root
in a user namespace of its own) and the agent runs in an isolated
interpreter that Landlock and seccomp confine to ROOT, with no capability
beyond those root needs to keep owners. If the kernel lacks a mechanism,
nothing runs, unless the forced command accepts running without it
(--allow-without).

Without a forced command (a key that may run anything anyway), the same
requests can be given as arguments: syncsup-target ROOT agent. Targets in
a syncsup config whose key is confined this way set confined = true (see
syncsup.toml(5)); syncsup check asks for info to verify it."""

# (request, service)
REQUESTS: tuple[tuple[str, str], ...] = (
    ("rsync --server --daemon .",
     "an rsync transfer, served by rsync's own daemon mode with a generated module: "
     "chrooted to ROOT, write-only, options on an allow-list that rsync itself enforces; "
     "device files are refused"),
    ("syncsup-target ROOT agent",
     "syncsup's agent: small files, directories, symlinks, deletes and renames applied "
     "through directory descriptors that never follow a symlink, in an isolated interpreter "
     "that the kernel confines to ROOT (Landlock, seccomp, no capabilities)"),
    ("syncsup-target ROOT stats",
     "the agent confined the same way, answering only requests that read file sizes and "
     "times (a first start's proof that the copies in ROOT are current)"),
    ("syncsup-target ROOT info",
     "a JSON line for syncsup check: versions, ROOT, how the account is confined"),
    ("syncsup-target ROOT status",
     "on a relay: the JSON status file of the syncsup that runs onward from ROOT, as named "
     "by --relay-status (refused without it), for syncsup status --relays"),
    ("rsync --version, true", "read-only answers for syncsup check"),
)

MAX_STATUS = 1024 * 1024  # bytes of a relay's status file served

EXIT_STATUS: tuple[tuple[int, str], ...] = (
    (0, "the request was served (for rsync: rsync's own exit status)"),
    (1, "refused, on stderr and in syslog: a request that is not one of the above, "
        "ROOT is not a directory, or the account cannot be confined"),
    (70, "the agent stopped on an internal error (one fixed line on stderr)"),
    (2, "ROOT is missing or not an absolute path; the agent read a malformed frame"),
)

ENVIRONMENT: tuple[tuple[str, str], ...] = (
    ("SSH_ORIGINAL_COMMAND",
     "the client's request, set by sshd for a forced command; read only when ROOT is "
     "the only argument"),
)

EXAMPLE = ('command="/usr/local/bin/syncsup-target /srv/www",restrict '
           'ssh-ed25519 AAAA... syncsup@source')


def _epilog() -> str:
    import textwrap

    def wrap(text: str, indent: str) -> list[str]:
        return textwrap.wrap(text, 76, initial_indent=indent, subsequent_indent=" " * 6,
                             break_on_hyphens=False)

    lines = ["requests:"]
    for request, text in REQUESTS:
        lines += [f"  {request}", *wrap(text, " " * 6)]
    lines += ["", "environment:"]
    for name, text in ENVIRONMENT:
        lines += [f"  {name}", *wrap(text, " " * 6)]
    lines += ["", "exit status:"]
    for code, text in EXIT_STATUS:
        lines += wrap(text, f"  {code:<4}")
    lines += ["", "example (~/.ssh/authorized_keys of the target account):", f"  {EXAMPLE}",
              "", "See syncsup-target(1), syncsup(1) and docs/security.md."]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line as ``--help``, ``--version`` and the man page show it."""
    parser = argparse.ArgumentParser(
        prog="syncsup-target",
        usage="%(prog)s [--allow-without=MECHANISM] [--relay-status=FILE] ROOT "
              "[agent|stats|info|status]",
        description=DESCRIPTION,
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"syncsup-target {__version__}")
    parser.add_argument("--allow-without", metavar="MECHANISM", action="append",
                        choices=MECHANISMS,
                        help="serve the agent even where the kernel lacks MECHANISM (landlock or "
                             "seccomp), with the layers that remain; only in authorized_keys, "
                             "never needed on Linux 5.13+ with libseccomp")
    parser.add_argument("--relay-status", metavar="FILE",
                        help="on a relay: the status_file (ending in .json) of the syncsup "
                             "that runs onward from ROOT, served for the status request; "
                             "only in authorized_keys")
    parser.add_argument("root", metavar="ROOT",
                        help="the mirror's directory on this host (an absolute path)")
    parser.add_argument("request", metavar="REQUEST", nargs="?",
                        choices=SERVICES,
                        help="agent, stats, info or status, when not run as a forced command")
    return parser


SERVICES = ("agent", "stats", "info", "status")  # syncsup-target ROOT SERVICE


class Refused(Exception):
    """The request is not one syncsup-target serves."""


def classify(root: str, words: list[str]) -> str:
    """Which service ``words`` (the client's request) selects: ``daemon``,
    ``agent``, ``info``, ``version`` or ``true``. Raises Refused."""
    if words == ["true"]:
        return "true"
    if words == ["rsync", "--version"]:
        return "version"
    if words[:2] == ["rsync", "--server"]:
        if "--daemon" in words:
            return "daemon"
        raise Refused("plain rsync is not served through this key: syncsup uses rsync's daemon "
                      "mode for confined targets; set confined = true for this target")
    if len(words) == 3 and words[0] == "syncsup-target" and words[2] in SERVICES:
        asked = os.path.normpath(words[1])
        if asked != root:
            raise Refused(f"this key is confined to {root}, not {asked}: make the target's "
                          "path in the config the same as the forced command's ROOT")
        return words[2]
    raise Refused("only syncsup's rsync transfers and its agent are allowed")


def home_inside(root: str) -> str | None:
    """The account's home relative to ROOT if it is ROOT or below, else None."""
    try:
        home = os.path.realpath(pwd.getpwuid(os.geteuid()).pw_dir)
    except KeyError:
        return None
    return relative_to(home, root)


def _refuse(reason: str, command: str) -> int:
    msg = f"syncsup-target: refused: {reason} (command: {command[:200]!r})"
    print(msg, file=sys.stderr)
    _syslog.warn(msg)  # and stderr reached the client
    return 1


def _rsync_version() -> str:
    try:
        out = subprocess.run(["rsync", "--version"], capture_output=True, text=True,
                             timeout=20, check=False).stdout
    except OSError:
        return ""
    first = out.splitlines()[0].split() if out else []
    return first[2] if len(first) > 2 and first[0] == "rsync" else ""


def info(root: str, forced: bool, allow_without: frozenset[str] = frozenset()
         ) -> dict[str, object]:
    """What ``syncsup check`` shows about this target."""
    return {"syncsup": __version__, "root": root, "rsync": _rsync_version(),
            "confinement": describe(allow_without, home_inside(root) is not None),
            "uid": os.geteuid(), "forced": forced,
            "home_protected": home_inside(root) is not None}


def serve_agent(root: str, forced: bool, allow_without: frozenset[str],
                read_only: bool = False) -> NoReturn:
    """The agent, in a fresh, isolated interpreter that replaces this
    process (this call never returns). Behind the forced command it runs
    under the kernel layer (``_confined``: Landlock, seccomp, no
    capabilities but root's ownership ones), keeping numeric owners like the
    rsync daemon beside it. Run directly (a key that can run any command
    anyway) it is confined by its descriptors alone and maps owners by name,
    like a plain ``rsync -a`` over ssh (``_plain``)."""
    if forced:
        from syncsup.target._confined import start

        start(root, allow_without, read_only)
    from syncsup.target._plain import start as start_plain

    start_plain(root, read_only)


def parse_options(args: list[str]) -> tuple[frozenset[str], list[str]]:
    """``--allow-without=MECHANISM`` options before ROOT (only ever from the
    forced command in authorized_keys, which the key cannot change), and
    the arguments after them. Raises Refused for an unknown one.
    ``--relay-status`` is left in the arguments: :func:`relay_status`."""
    allowed: set[str] = set()
    rest = list(args)
    while rest and rest[0].startswith("--allow-without="):
        name = rest.pop(0).partition("=")[2]
        if name not in MECHANISMS:
            raise Refused(f"--allow-without takes one of {', '.join(MECHANISMS)}, not {name!r}")
        allowed.add(name)
    return frozenset(allowed), rest


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def relay_status(args: list[str]) -> tuple[str | None, list[str]]:
    """``--relay-status=FILE`` (an absolute path) before ROOT, and the
    arguments after it. Raises Refused for a relative one."""
    if not args or not args[0].startswith("--relay-status="):
        return None, args
    path = args[0].partition("=")[2]
    if not path.startswith("/"):
        raise Refused("--relay-status takes an absolute path")
    return path, args[1:]


def serve_status(path: str | None, root: str = "/nonexistent") -> int:
    """A relay's status: the JSON status file the forced command names,
    checked to be one JSON object and printed on one line with its age in
    seconds (``{"age": ..., "status": ...}``). Nothing the client sent
    chooses the file.

    The file is read here, outside the agent's kernel confinement, so it
    must not lie inside ROOT, where the key writes (and could, with a
    symlink in a parent directory, point it at any file of that name), and
    it must be a regular file (a FIFO or a device could block or stream)."""
    if path is None:
        raise Refused("this key may not read a relay's status: add --relay-status=FILE to its "
                      "forced command")
    real = os.path.realpath(path)
    if relative_to(real, os.path.realpath(root)) is not None:
        raise Refused(f"--relay-status={path} lies inside ROOT {root}, which the key writes: "
                      "write the relay's status_file outside it")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                print(f"syncsup-target: the relay status {path} is not a regular file",
                      file=sys.stderr)
                return 1
            age = max(0.0, time.time() - st.st_mtime)
            data = fh.read(MAX_STATUS + 1)
    except OSError as exc:
        print(f"syncsup-target: cannot read the relay status {path}: {exc.strerror}",
              file=sys.stderr)
        return 1
    try:
        doc = json.loads(data, parse_constant=_not_json) if len(data) <= MAX_STATUS else None
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        print(f"syncsup-target: {path} is not a JSON status (set the relay's status_file to "
              "a name ending in .json)", file=sys.stderr)
        return 1
    # With its age: the file outlives its daemon (it is not removed at a
    # stop, as Lsyncd's is not), so a stale one must be told from a live one.
    print(json.dumps({"age": round(age, 3), "status": doc}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help", "--version"):
        # Only from a command line: behind a forced command the arguments
        # are the ones in authorized_keys, never the client's.
        try:
            build_parser().parse_args(args[:1])
        except SystemExit as exc:
            return int(exc.code or 0)
    try:
        allow_without, args = parse_options(args)
        status_file, args = relay_status(args)
    except Refused as exc:
        return _refuse(str(exc), shlex.join(args))
    if not args or not args[0].startswith("/"):
        build_parser().print_usage(sys.stderr)
        print("syncsup-target: ROOT must be an absolute path; it is meant to be the forced "
              "command of a key in authorized_keys (see syncsup-target --help)", file=sys.stderr)
        return 2
    root = os.path.realpath(args[0])
    forced = "SSH_ORIGINAL_COMMAND" in os.environ and len(args) == 1
    # Without a forced command the request is our own command line, which has
    # the same form as the request a forced command gets: syncsup-target ROOT ...
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "") if len(args) == 1 else shlex.join(
        ["syncsup-target", *args])
    try:
        words = shlex.split(command)
    except ValueError:
        return _refuse("unparsable command", command)
    try:
        service = classify(root, words)
    except Refused as exc:
        return _refuse(str(exc), command)
    if not os.path.isdir(root):
        return _refuse(f"ROOT {root} is not a directory", command)
    if forced and os.geteuid() == 0 and service != "true" and home_inside(root) is not None:
        # As root the mirror keeps owners: it could hand root's home (and so
        # its start-up files) to another account.
        return _refuse(f"ROOT {root} contains root's home directory: confine root's key to a "
                       "directory outside it", command)
    try:
        if service == "true":
            return 0
        if service == "version":
            print(f"rsync  version {_rsync_version()}  (served by syncsup-target {__version__})")
            return 0
        if service == "info":
            print(json.dumps(info(root, forced, allow_without)))
            return 0
        if service == "status":
            try:
                return serve_status(status_file, root)
            except Refused as exc:
                return _refuse(str(exc), command)
        if service in ("agent", "stats"):
            return serve_agent(root, forced, allow_without, read_only=service == "stats")
        from syncsup.target._daemon import run_daemon

        grant_chroot_for_exec()
        return run_daemon(root, home_inside(root))
    except ConfineError as exc:
        return _refuse(f"cannot confine the account to {root}: {exc.strerror}", command)
