"""Text from outside (file names, a remote's messages, an rsync daemon's
MOTD or ``@ERROR``, a relay's answer) made safe to show: one line that
cannot drive a terminal or forge another log line.

C0 and C1 control characters are what a terminal obeys (ESC and CSI start
escape sequences that can rewrite the screen or a window title) and what
splits a log: a newline in a file name would otherwise start a line that
looks like the daemon's own.
"""

from __future__ import annotations

import re

__all__ = ["escaped", "printable"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: object, limit: int = 200) -> str:
    """``text`` as one line of at most ``limit`` characters, each control
    character replaced by ``?``: for short messages shown to a user."""
    return _CONTROL.sub("?", str(text))[:limit]


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}")


def escaped(text: str) -> str:
    """``text`` with each control character written as its escape (``\\n``,
    ``\\x1b``): for logs, where the exact name still matters."""
    return _CONTROL.sub(_escape, text)
