"""The ``syncsup`` command line.

Commands and their exit codes:

* ``start CONFIG``: run in the foreground until SIGTERM/SIGINT; 0 after a
  clean stop, 78 for a bad config, 1 if it cannot start (already running,
  unusable state_dir, rsync missing).
* ``status [--json] CONFIG``: ask the running daemon; 0 if it answered,
  3 if it is not running (the LSB convention), 1 if it did not answer.
* ``check CONFIG``: validate the config, sources, rsync and every target
  (ssh, remote rsync, writable); 0, 1 if a problem was found, 78.
* ``stop CONFIG``: ask the running daemon to stop, as SIGTERM would.
* ``resync [--sync S] [--target T] CONFIG``: compare everything again, with
  ``--checksum`` (also SIGUSR1).
* ``pause`` / ``resume [--sync S] [--target T] CONFIG``: stop and restart
  sending; changes keep being recorded while paused.

Signals to ``syncsup start``: TERM/INT stop, HUP reloads the config
(restarting the children; pending work stays in the journal), USR1 resyncs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from syncsup import __version__, proto
from syncsup import config as cfg
from syncsup.client import NotRunning, request
from syncsup.logs import setup_logging
from syncsup.statedir import is_running
from syncsup.status import format_status, to_json

__all__ = ["main"]

EX_NOT_RUNNING = 3


def _load(path: str, sources: bool = False) -> cfg.Config:
    """The config, or exit 78 with one line; ``sources``: they must exist
    (start; ``check`` lists a missing source among its problems, and status
    or stop must work while a source is away)."""
    try:
        conf = cfg.load(path)
        if sources:
            cfg.check_sources(conf)
        return conf
    except cfg.ConfigError as exc:
        print(f"syncsup: config error: {exc}", file=sys.stderr)
        raise SystemExit(cfg.EX_CONFIG) from None


def cmd_start(args: argparse.Namespace) -> int:
    from syncsup.supervisor import StartError, Supervisor

    conf = _load(args.config, sources=True)
    setup_logging(conf.settings, "supervisor")
    try:
        sup = Supervisor(conf)
    except (StartError, OSError) as exc:
        print(f"syncsup: cannot start: {exc}", file=sys.stderr)
        return 1
    return sup.run()


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


def cmd_status(args: argparse.Namespace) -> int:
    reply = _ask(_load(args.config), proto.StatusRequest())
    if isinstance(reply, int):
        return reply
    if not isinstance(reply, proto.StatusReply):
        print(f"syncsup: unexpected answer {type(reply).__name__}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(to_json(reply.status), indent=2))
    else:
        print(format_status(reply.status))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    conf = _load(args.config)
    try:
        request(conf, proto.Stop(reason="syncsup stop"))
    except NotRunning as exc:
        print(exc, file=sys.stderr)
        return EX_NOT_RUNNING
    deadline = time.monotonic() + 15
    while is_running(conf.settings.state_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    return 1 if is_running(conf.settings.state_dir) else 0


def cmd_check(args: argparse.Namespace) -> int:
    from syncsup.check import run_checks

    conf = _load(args.config, sources=False)
    lines: list[str] = []
    problems = run_checks(conf, lines)
    print("\n".join(lines))
    if problems:
        print(f"{problems} problem(s)", file=sys.stderr)
    return 1 if problems else 0


def cmd_control(args: argparse.Namespace) -> int:
    msg = proto.Control(command=proto.Command(args.command),
                        sync=getattr(args, "sync", None) or "",
                        target_spec=getattr(args, "target", None) or "")
    reply = _ask(_load(args.config), msg)
    if isinstance(reply, int):
        return reply
    if not isinstance(reply, proto.ControlReply):
        print(f"syncsup: unexpected answer {type(reply).__name__}", file=sys.stderr)
        return 1
    print(reply.message, file=sys.stdout if reply.ok else sys.stderr)
    return 0 if reply.ok else 1


# import-lsyncd is imported lazily: the daemon never loads the importer or lupa
def cmd_import_lsyncd(args: argparse.Namespace) -> int:
    from syncsup.lsyncd import import_lsyncd

    return import_lsyncd(args.config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="syncsup", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"syncsup {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="run the daemon in the foreground")
    p.add_argument("config")
    p.set_defaults(func=cmd_start)
    p = sub.add_parser("status", help="show what the running daemon is doing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("config")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("stop", help="stop the running daemon")
    p.add_argument("config")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("check", help="validate the config, sources and targets (changes nothing)")
    p.add_argument("config")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("resync", help="compare everything again (with --checksum)")
    p.add_argument("--sync", help="only this sync")
    p.add_argument("--target", help="only this target (as written in the config)")
    p.add_argument("config")
    p.set_defaults(func=cmd_control)
    for name, text in (("pause", "stop sending; changes are still recorded"),
                       ("resume", "send what was recorded while paused")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--sync", help="only this sync")
        p.add_argument("--target", help="only this target")
        p.add_argument("config")
        p.set_defaults(func=cmd_control)
    p = sub.add_parser("import-lsyncd", help="convert an Lsyncd Lua config to TOML on stdout")
    p.add_argument("config", help="the Lsyncd config (lsyncd.conf.lua)")
    p.set_defaults(func=cmd_import_lsyncd)
    args = parser.parse_args(argv)
    return int(args.func(args))
