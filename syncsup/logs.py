"""Logging for every process: one line per record, prefixed with the role,
so that the interleaved output of all processes stays readable; journald
priorities when systemd reads stderr; JSON lines for log shippers; an
optional ``log_file`` that is never opened through a symlink."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from syncsup.config import Settings
from syncsup.text import escaped

__all__ = ["setup_logging"]

_JOURNAL_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class _LineFormatter(logging.Formatter):
    """One record, one line: control characters in the message (a file
    name's newline, a remote's escape sequences) are written as escapes,
    so nothing a source writer or a target names can forge a line of the
    log or drive the terminal that shows it. (A traceback, ours, keeps its
    lines.)"""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escaped(record.message)
        return super().formatMessage(record)


class _JournalFormatter(_LineFormatter):
    """Under systemd: ``<N>`` priority prefixes that journald understands,
    no timestamp (journald adds its own)."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _JOURNAL_PRIORITY.get(record.levelname, 6)
        return f"<{prio}>{super().format(record)}"


class _JsonFormatter(logging.Formatter):
    """One JSON object per line (``json.dumps`` escapes every control and
    non-ASCII character)."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": record.created, "level": record.levelname.lower(), "role": self.role,
               "component": self.role, "pid": record.process, "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class _NoFollowFileHandler(logging.FileHandler):
    """Appends to ``log_file`` but never through a symlink at its name: a
    daemon running as root must not let someone who can write to the log's
    directory redirect its appends to another file."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o640)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def setup_logging(settings: Settings | None, role: str) -> None:
    """Log to stderr and, if configured, to ``log_file`` too."""
    level = settings.log_level if settings else "info"
    text = f"%(levelname)-7s {role} %(process)d: %(message)s"
    stamped = f"%(asctime)s {text}"
    json_format = settings is not None and settings.log_format == "json"
    err = logging.StreamHandler(sys.stderr)
    if json_format:
        err.setFormatter(_JsonFormatter(role))
    elif os.environ.get("JOURNAL_STREAM"):
        err.setFormatter(_JournalFormatter(text))
    else:
        err.setFormatter(_LineFormatter(stamped))
    handlers: list[logging.Handler] = [err]
    if settings is not None and settings.log_file is not None:
        try:
            fh = _NoFollowFileHandler(settings.log_file)
            fh.setFormatter(_JsonFormatter(role) if json_format else _LineFormatter(stamped))
            handlers.append(fh)
        except OSError as exc:
            print(f"syncsup: cannot open log_file {settings.log_file}: {exc}", file=sys.stderr)
    logging.basicConfig(level=level.upper(), handlers=handlers, force=True)
