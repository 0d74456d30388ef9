"""The ``syncsup`` command line.

:func:`build_parser` is the one description of the commands, their options,
exit statuses and signals: ``syncsup --help``, the man page (man/syncsup.1)
and the shell completions are generated from it (``python -m
syncsup._docgen``), so they cannot drift apart. Building it has no side
effects, which is what lets the generator import it.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from syncsup import __version__, adhoc, proto
from syncsup import config as cfg
from syncsup.client import NotRunning, request
from syncsup.logs import setup_logging
from syncsup.statedir import is_running
from syncsup.status import format_status, to_json
from syncsup.text import printable

__all__ = ["ENVIRONMENT", "EXIT_STATUS", "FILES", "SIGNALS", "SUMMARY", "build_parser",
           "main"]

EX_NOT_RUNNING = 3

SUMMARY = "live mirror daemon for Linux: inotify and rsync under a supervisor"

DESCRIPTION = """\
A live mirror daemon for Linux: it watches directory trees with inotify,
collates changes for a short delay and pushes them with rsync to local
paths or user@host:/path over ssh. Pending changes live in a journal, so
nothing is lost when any part of it is killed."""

# (status, meaning): what every command returns
EXIT_STATUS: tuple[tuple[int, str], ...] = (
    (0, "success; for start, a clean stop after SIGTERM, SIGINT or syncsup stop"),
    (1, "start cannot start (already running, unusable state_dir, rsync missing); "
        "check found a problem; the daemon did not answer or refused the request; "
        "stop: the daemon did not stop within 15 seconds; import-lsyncd cannot read "
        "the file; unit cannot write a file"),
    (2, "a usage error on the command line; import-lsyncd: a partial import, where "
        "something that changes behaviour was not mapped (listed on stderr; settings "
        "with no meaning for syncsup are notes, with exit 0)"),
    (EX_NOT_RUNNING, "status, stop, resync, pause, resume: the daemon is not running "
        "(the LSB convention)"),
    (cfg.EX_CONFIG, "a bad config, with one line on stderr naming the key (EX_CONFIG; "
        "the systemd unit never restarts it); start: the source's rsync follows a raced "
        "symlink where another user can write in the source, or strict_rsync refuses it "
        "(one line naming what to change); import-lsyncd: the Lua config is broken"),
)

# (signals, effect) on a running `syncsup start`
SIGNALS: tuple[tuple[str, str], ...] = (
    ("TERM, INT", "stop: the children are stopped in order, exit 0, nothing is left running"),
    ("HUP", "reload the config: the children restart on it and pending work stays in the "
            "journal; a broken new config is refused and logged"),
    ("USR1", "compare every target again, as syncsup resync does"),
)

# (variable, what it does): for the man page
ENVIRONMENT: tuple[tuple[str, str], ...] = (
    ("XDG_STATE_HOME", "where a user's state directories go when the config has no "
                       "state_dir: $XDG_STATE_HOME/syncsup/NAME (default ~/.local/state)"),
    ("NOTIFY_SOCKET, WATCHDOG_USEC", "set by systemd for a Type=notify unit: start reports "
                                     "readiness, a one-line status and the watchdog"),
    ("JOURNAL_STREAM", "set by systemd when stderr goes to the journal: log lines carry "
                       "their priority and no time stamp"),
    ("SYNCSUP_RUNTIME_DIR", "where running daemons record themselves for status without "
                            "a config (default /run/syncsup for root, else "
                            "$XDG_RUNTIME_DIR/syncsup)"),
)

# (path, what it is): for the man page
FILES: tuple[tuple[str, str], ...] = (
    ("/etc/syncsup/NAME.toml", "a config, as deploy/syncsup@.service runs it "
                               "(syncsup@NAME); any path works"),
    ("/var/lib/syncsup/NAME", "root's state directory for the config NAME.toml when it "
                              "sets no state_dir: the lock, the sockets and one journal per "
                              "sync (journal-SYNC.db)"),
    ("$XDG_STATE_HOME/syncsup/NAME", "the same for any other user"),
    ("STATE_DIR/sync.toml", "the config written by start --source ... --target ..."),
)

START_DESCRIPTION = """\
Run the daemon in the foreground until SIGTERM or SIGINT, as systemd runs
it. CONFIG is the TOML file described in syncsup.toml(5).

Without CONFIG, --source and at least one --target describe one mirror, as
lsyncd -rsync SRC DST does. The config they amount to is written to
sync.toml (mode 0600) in the mirror's state directory, named on stderr, and
the daemon starts from that file exactly as it would from a config file:
same validation, same refusals. Give that file to syncsup status and
syncsup stop. The state directory is /var/lib/syncsup/NAME for root, else
$XDG_STATE_HOME/syncsup/NAME (~/.local/state by default); NAME defaults to
adhoc- and a hash of the source and targets, so the same command line
finds its journal again after a restart.

Exit 0 after a clean stop, 78 for a bad config (one line naming the key),
1 if it cannot start, 2 for CONFIG together with --source, or neither."""

STATUS_DESCRIPTION = """\
Ask the running daemon what it is doing: every process (role, pid, state,
restarts, uptime) and every target (state, pending paths, lag, last sync,
last error). Exit 0 if it answered, 3 if it is not running, 1 if it did
not answer.

Without CONFIG, list the daemons running (name, pid, config): each records
itself at start under the base name of its state_dir (www for
/var/lib/syncsup/www, adhoc-... for start --source), and that NAME can
stand for the config here and in stop, resync, pause and resume. Exit 3 if
none runs.

With --relays, each target marked relay = true is asked (over ssh, through
its syncsup-target) for the status of the syncsup that runs onward from it:
its targets' state, pending paths and lag behind the relay, added to the
table (and as "relays" to --json). A relay that cannot be asked is shown as
unavailable, with why; it does not change the exit status."""

CHECK_DESCRIPTION = """\
Validate the config, the sources, the local and remote rsync (with their
versions), ssh and that every target is writable; one line per problem.
Changes nothing. Exit 0, 1 if a problem was found, 78 for a bad config."""

STOP_DESCRIPTION = """\
Ask the running daemon to stop, as SIGTERM would, and wait up to 15
seconds for it to exit; without CONFIG or NAME, the only daemon running.
Exit 0 once stopped, 3 if it was not running, 1 if it is still running, 2
if several run and none was named."""

RESYNC_DESCRIPTION = """\
Compare everything again, with rsync --checksum (SIGUSR1 does it for every
target). Exit 0 if the daemon accepted it, 1 if it refused, 3 if it is not
running."""

PAUSE_DESCRIPTION = """\
Stop sending to the targets; changes are still recorded, and sent after
resume. Exit 0 if the daemon accepted it, 1 if it refused, 3 if it is not
running."""

RESUME_DESCRIPTION = """\
Send what was recorded while paused; also restarts a target halted by
max_delete. Exit 0 if the daemon accepted it, 1 if it refused, 3 if it is
not running."""

IMPORT_DESCRIPTION = """\
Convert an Lsyncd Lua config to a syncsup TOML config on stdout. The Lua
config is run in a sandboxed Lua 5.3; stderr lists one line per finding.
Exit 0 when everything was mapped, 2 when something was dropped (the TOML
is still printed), 78 when the Lua config is broken, 1 when it cannot be
read."""


def _epilog() -> str:
    """Exit statuses and signals for ``syncsup --help`` (the man page has
    them as sections)."""
    import textwrap

    def item(head: str, text: str) -> list[str]:
        return textwrap.wrap(text, 76, initial_indent=f"  {head:<4}", break_on_hyphens=False,
                             subsequent_indent=" " * 6)

    lines = ["exit status:"]
    for code, text in EXIT_STATUS:
        lines += item(str(code), text)
    lines += ["", "signals to syncsup start:"]
    for sigs, text in SIGNALS:
        lines += textwrap.wrap(f"{sigs}: {text}", 76, initial_indent="  ", break_on_hyphens=False,
                               subsequent_indent=" " * 6)
    lines += ["", "See syncsup(1) and syncsup.toml(5)."]
    return "\n".join(lines)


def _config_error(exc: cfg.ConfigError) -> NoReturn:
    """One line naming the key, exit 78."""
    print(f"syncsup: config error: {exc}", file=sys.stderr)
    raise SystemExit(cfg.EX_CONFIG) from None


def _load(path: str, sources: bool = False, files: bool = False,
          client: bool = False) -> cfg.Config:
    """The config, or exit 78 with one line; ``sources``: each must be a
    directory or not exist yet (start: a missing one is waited for; ``check``
    lists it among its problems, and status or stop must work while a source
    is away); ``files``: the directories of
    ``log_file`` and ``status_file`` must exist (start and check);
    ``client``: the command only talks to the running daemon."""
    try:
        conf = cfg.load(path, client=client)
        if files:
            cfg.check_output_files(conf)
        if sources:
            cfg.check_sources(conf, missing_ok=True)
        return conf
    except cfg.ConfigError as exc:
        _config_error(exc)


def cmd_start(args: argparse.Namespace) -> int:
    from syncsup.supervisor import StartError, Supervisor

    config = args.config if args.config is not None else _write_adhoc(args)
    conf = _load(config, sources=True, files=True)
    setup_logging(conf.settings, "supervisor")
    try:
        sup = Supervisor(conf)
    except (StartError, OSError) as exc:
        print(f"syncsup: cannot start: {exc}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, StartError) else 1
    return sup.run()


def _check_start_args(args: argparse.Namespace, error: Callable[[str], NoReturn]) -> None:
    """CONFIG, or --source with at least one --target: exactly one of them
    (argparse's usage error, exit 2, otherwise)."""
    given = [opt for opt, value in (("--source", args.source), ("--target", args.target),
                                    ("--mode", args.mode), ("--delay", args.delay),
                                    ("--name", args.name), ("--state-dir", args.state_dir))
             if value is not None]
    if args.config is not None and given:
        error(f"give either CONFIG or --source and --target, not both "
              f"({args.config} and {', '.join(given)})")
    if args.config is None and (args.source is None or not args.target):
        error("give CONFIG, or --source SRC and at least one --target DST")


def _write_adhoc(args: argparse.Namespace) -> str:
    """Write the config that ``--source``/``--target`` amount to and return
    its path, or exit: 78 for a bad config (nothing written), 1 if that
    mirror already runs (its file left as it is) or the file cannot be
    written."""
    try:
        plan = adhoc.prepare(args.source, args.target, mode=args.mode, delay=args.delay,
                             name=args.name, state_dir=args.state_dir)
        # Validated before anything is written: a mistyped source leaves no
        # state directory behind. The file is loaded and checked again at start.
        cfg.check_sources(cfg.parse(plan.doc, plan.path))
    except cfg.ConfigError as exc:
        _config_error(exc)
    if is_running(plan.state_dir):
        print(f"syncsup: cannot start: syncsup is already running with state_dir "
              f"{plan.state_dir} (config {plan.path})", file=sys.stderr)
        raise SystemExit(1)
    try:
        adhoc.write(plan)
    except cfg.ConfigError as exc:
        _config_error(exc)
    except OSError as exc:
        print(f"syncsup: cannot start: cannot write {plan.path}: {exc.strerror}",
              file=sys.stderr)
        raise SystemExit(1) from None
    print(f"syncsup: config written to {plan.path} (syncsup status|stop {plan.path})",
          file=sys.stderr)
    return str(plan.path)


def _ask(conf: cfg.Config, msg: proto.Message) -> proto.Message | int:
    """The supervisor's reply to ``msg``, or the exit code to return: 3 (and
    a message) if it is not running, 1 if it does not answer."""
    try:
        reply = request(conf, msg)
    except NotRunning as exc:
        print(exc, file=sys.stderr)
        return EX_NOT_RUNNING
    except TimeoutError as exc:
        print(f"syncsup: {exc}", file=sys.stderr)
        return 1
    if reply is None:
        return 1
    return reply


def _list_running(as_json: bool) -> int:
    """``syncsup status`` without a config: the daemons running."""
    from syncsup import registry
    from syncsup.statedir import read_pid

    rows = []
    for entry in registry.running():
        try:
            pid = read_pid(_load(str(entry.config), client=True).settings.state_dir) or "?"
        except OSError:
            pid = "?"
        rows.append({"name": entry.name, "config": str(entry.config), "pid": pid})
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no syncsup daemon is running (none recorded in {registry.registry_dir()})")
    else:
        print(f"{'NAME':<24} {'PID':>8}  CONFIG")
        print("\n".join(f"{r['name']:<24} {r['pid']:>8}  {r['config']}" for r in rows))
    return 0 if rows else EX_NOT_RUNNING


def cmd_status(args: argparse.Namespace) -> int:
    if args.config is None:
        return _list_running(args.json)
    reply = _ask(_load(_daemon_config(args.config), client=True), proto.StatusRequest())
    if isinstance(reply, int):
        return reply
    if not isinstance(reply, proto.StatusReply):
        print(f"syncsup: unexpected answer {type(reply).__name__}", file=sys.stderr)
        return 1
    relays = None
    if args.relays:
        from syncsup.relays import ask_relays, format_relays

        relays = ask_relays(_load(_daemon_config(args.config), client=True))
    if args.json:
        doc = to_json(reply.status)
        if relays is not None:
            doc["relays"] = [r.to_json() for r in relays]
        print(json.dumps(doc, indent=2))
    else:
        print(format_status(reply.status))
        if relays is not None:
            print(f"\n{format_relays(relays)}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from syncsup.statedir import read_pid

    conf = _load(_daemon_config(args.config), client=True)
    pid = read_pid(conf.settings.state_dir)
    try:
        request(conf, proto.Stop(reason="syncsup stop"))
    except NotRunning as exc:
        print(exc, file=sys.stderr)
        return EX_NOT_RUNNING
    return 0 if _wait_stopped(conf, pid, 15.0) else 1


def _wait_stopped(conf: cfg.Config, pid: str | None, timeout: float) -> bool:
    """Wait until no daemon holds the lock of ``conf``'s state_dir; False
    after ``timeout`` seconds. The supervisor's exit, which releases the
    lock, wakes us through a pidfd of the pid it wrote there (read before it
    was asked to stop), so the command returns as it stops; once that pid is
    gone with the lock still held (it was not the supervisor's), or without
    one, it checks ten times a second."""
    from syncsup.processes import wait_exited

    watched = int(pid) if pid is not None and pid.isdigit() else None
    deadline = time.monotonic() + timeout
    while is_running(conf.settings.state_dir):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if watched is None:
            time.sleep(min(left, 0.1))
        elif wait_exited(watched, min(left, 0.1)):
            watched = None
    return True


def cmd_check(args: argparse.Namespace) -> int:
    from syncsup.check import run_checks

    conf = _load(args.config, sources=False, files=True)
    lines: list[str] = []
    problems = run_checks(conf, lines)
    # what a remote or an rsync daemon said (its MOTD, an @ERROR line) is
    # in these lines: no control character reaches the terminal
    print("\n".join(printable(line, 2000) for line in lines))
    if problems:
        print(f"{problems} problem(s)", file=sys.stderr)
    return 1 if problems else 0


def cmd_control(args: argparse.Namespace) -> int:
    msg = proto.Control(command=proto.Command(args.command),
                        sync=getattr(args, "sync", None) or "",
                        target_spec=getattr(args, "target", None) or "")
    reply = _ask(_load(_daemon_config(args.config), client=True), msg)
    if isinstance(reply, int):
        return reply
    if not isinstance(reply, proto.ControlReply):
        print(f"syncsup: unexpected answer {type(reply).__name__}", file=sys.stderr)
        return 1
    print(reply.message, file=sys.stdout if reply.ok else sys.stderr)
    return 0 if reply.ok else 1


def cmd_unit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from syncsup import unit

    conf = _load(args.config) if args.config is not None else None
    binary = args.binary or unit.find_binary()
    if not binary.startswith("/"):
        print(f"syncsup: --binary must be an absolute path, not {binary!r}", file=sys.stderr)
        return 1
    docs, found = unit.documentation()
    if not found:
        print("syncsup: the man pages are not installed beside this syncsup (an editable "
              "install?); Documentation= names man:syncsup(1)", file=sys.stderr)
    if conf is not None and conf.path != Path("/etc/syncsup") / f"{conf.path.stem}.toml":
        print(f"syncsup: note: syncsup@{conf.path.stem} runs /etc/syncsup/"
              f"{conf.path.stem}.toml, not {conf.path}", file=sys.stderr)
    text = unit.render_unit(binary, docs)
    if args.output is None:
        sys.stdout.write(unit.dropin(conf) if conf is not None else text)
        return 0
    try:
        written = unit.write_files(Path(args.output), text, conf)
    except OSError as exc:
        print(f"syncsup: cannot write into {args.output}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    note = unit.ensure_user(written[1])
    if note is not None:
        print(f"syncsup: {note}", file=sys.stderr)
    return 0


# import-lsyncd is imported lazily: the daemon never loads the importer or lupa
def cmd_import_lsyncd(args: argparse.Namespace) -> int:
    from syncsup.lsyncd import import_lsyncd

    return import_lsyncd(args.config)


UNIT_DESCRIPTION = """\
Print the systemd unit syncsup@.service for this installation: ExecStart=
names the syncsup command being run (wherever pip installed it), and
Documentation= the man pages installed beside it. The unit is sandboxed
(see docs/operations.md); with --config, print instead the drop-in that
opens the sandbox to what that config needs: its local targets, log and
status files, sources under /home, and an IP allow-list of its target hosts.
With --output DIR (e.g. /etc/systemd/system) both are written there, the
drop-in as syncsup@NAME.service.d/sandbox.conf (NAME: the config's file name
without .toml), and the sysusers.d file of the unit's user, syncsup, into
/etc/sysusers.d (beside the unit for a DIR that is not the system's); as
root, with that file in /etc/sysusers.d, a missing user is created with
systemd-sysusers. Exit 0, 1 if a file cannot be written, 78 for a bad
config."""


def _add_config(p: argparse.ArgumentParser, help: str = "the config file (TOML)") -> None:
    p.add_argument("config", metavar="CONFIG", help=help)


def _add_daemon(p: argparse.ArgumentParser, optional: bool = False) -> None:
    """CONFIG, or the NAME of a running daemon (``syncsup status`` lists
    them); ``optional``: without either, the one running daemon."""
    p.add_argument("config", metavar="CONFIG|NAME", nargs="?" if optional else None,
                   help="the config file (TOML), or the name of a running daemon as "
                        "syncsup status lists it" + (" (default: the only one running)"
                                                     if optional else ""))


def _daemon_config(arg: str | None) -> str:
    """The config path for CONFIG|NAME; without one, the only daemon running
    (exit 3 if none runs, 2 if several do: name one)."""
    from syncsup import registry

    if arg is not None:
        return registry.resolve(arg)
    found = registry.running()
    if len(found) == 1:
        return str(found[0].config)
    if not found:
        print(f"syncsup: no daemon is running (none recorded in {registry.registry_dir()})",
              file=sys.stderr)
        raise SystemExit(EX_NOT_RUNNING)
    print(f"syncsup: {len(found)} daemons are running: name one of "
          f"{', '.join(e.name for e in found)}", file=sys.stderr)
    raise SystemExit(2)


def _subparser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
               help: str, description: str, usage: str | None = None) -> argparse.ArgumentParser:
    """A command; its description is kept as written (paragraphs)."""
    return sub.add_parser(name, help=help, description=description, usage=usage,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: commands, options, help texts, exit statuses."""
    parser = argparse.ArgumentParser(prog="syncsup", description=DESCRIPTION, epilog=_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"syncsup {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _subparser(sub, "start", "run the daemon in the foreground", START_DESCRIPTION,
                   usage="%(prog)s CONFIG\n       %(prog)s --source SRC --target DST "
                         "[--target DST ...] [--mode MODE] [--delay SECONDS] [--name NAME] "
                         "[--state-dir DIR]")
    p.add_argument("config", metavar="CONFIG", nargs="?",
                   help="the config file (TOML); not with --source")
    g = p.add_argument_group(
        "without a config file",
        "One mirror from the command line; the other keys take their defaults.")
    g.add_argument("--source", metavar="SRC", help="the tree to watch (sync[0].source)")
    g.add_argument("--target", metavar="DST", action="append",
                   help="a local path or [user@]host:/path; repeat for more targets "
                        "(sync[0].targets)")
    g.add_argument("--mode", choices=adhoc.MODES,
                   help="how targets are reached (sync[0].mode; default rsync)")
    g.add_argument("--delay", metavar="SECONDS", type=float,
                   help="seconds to batch changes; 0 sends at once (sync[0].delay; "
                        "default 1)")
    g.add_argument("--name", metavar="NAME",
                   help="the sync's name and its state directory's (default: adhoc- and a "
                        "hash of the source and targets)")
    g.add_argument("--state-dir", metavar="DIR",
                   help="keep the state, and the written config, in DIR instead "
                        "(settings.state_dir)")
    p.set_defaults(func=cmd_start, validate=functools.partial(_check_start_args, error=p.error))

    p = _subparser(sub, "status", "show what the running daemon is doing", STATUS_DESCRIPTION)
    p.add_argument("--json", action="store_true",
                   help="machine-readable output (described in docs/status.md)")
    p.add_argument("--relays", action="store_true",
                   help="also ask each target with relay = true for the status of the syncsup "
                        "that runs onward from it (over ssh, through syncsup-target)")
    p.add_argument("config", metavar="CONFIG|NAME", nargs="?",
                   help="the config file (TOML), or the name of a running daemon; without "
                        "it, list the daemons running")
    p.set_defaults(func=cmd_status)

    p = _subparser(sub, "stop", "stop the running daemon", STOP_DESCRIPTION)
    _add_daemon(p, optional=True)
    p.set_defaults(func=cmd_stop)

    p = _subparser(sub, "check", "validate the config, sources and targets (changes nothing)",
                   CHECK_DESCRIPTION)
    _add_config(p)
    p.set_defaults(func=cmd_check)

    for name, text, description in (
            ("resync", "compare everything again (with --checksum)", RESYNC_DESCRIPTION),
            ("pause", "stop sending; changes are still recorded", PAUSE_DESCRIPTION),
            ("resume", "send what was recorded while paused", RESUME_DESCRIPTION)):
        p = _subparser(sub, name, text, description)
        p.add_argument("--sync", metavar="SYNC", help="only this sync (its name)")
        p.add_argument("--target", metavar="TARGET",
                       help="only this target (as written in the config)")
        _add_daemon(p)
        p.set_defaults(func=cmd_control)

    p = _subparser(sub, "unit", "print or write the systemd unit for this installation",
                   UNIT_DESCRIPTION)
    p.add_argument("--config", metavar="CONFIG",
                   help="the sandbox drop-in for this config instead (syncsup@NAME)")
    p.add_argument("--output", metavar="DIR",
                   help="write the unit (and the drop-in) into DIR instead of printing")
    p.add_argument("--binary", metavar="PATH",
                   help="the syncsup command ExecStart= runs (default: this one)")
    p.set_defaults(func=cmd_unit)

    p = _subparser(sub, "import-lsyncd", "convert an Lsyncd Lua config to TOML on stdout",
                   IMPORT_DESCRIPTION)
    _add_config(p, "the Lsyncd config (lsyncd.conf.lua)")
    p.set_defaults(func=cmd_import_lsyncd)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    validate = getattr(args, "validate", None)
    if validate is not None:
        validate(args)  # exits 2 with the command's usage, as argparse does
    return int(args.func(args))
