"""The target's word to the host's administrator: a warning in syslog.

The forced command's refusals and the daemon's fallback to a temporary
directory are said here, beside stderr (which reaches the source, not the
target's administrator). A module of its own, standard library only, so
that the refusal path imports nothing of the daemon. The confined agent
keeps its own call: it imports nothing once it is restricted.
"""

from __future__ import annotations

import syslog

__all__ = ["warn"]


def warn(msg: str) -> None:
    """``msg`` to syslog at warning priority, if there is a syslog."""
    try:
        syslog.syslog(syslog.LOG_WARNING, msg)
    except OSError:
        pass  # no syslog here
