"""What ``syncsup status`` shows, as typed records: the one schema that the
CLI, the Prometheus metrics, the status file and systemd's STATUS= line all
read (docs/status.md describes the JSON).

Each child answers a status query with its own part (:class:`StatusPart`:
the watcher its watches, the collator its queues, the syncer its running
transfers); the supervisor merges the parts with what it knows of its
children into one :class:`Status` (:func:`assemble`, pure). Nothing here
does I/O, and building a status never changes any state.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from syncsup.text import printable

__all__ = [
    "BLIND_REASONS",
    "ERROR",
    "MOUNT",
    "TOO_LONG",
    "UNREADABLE",
    "WATCH_LIMIT",
    "BlindStatus",
    "ComponentStatus",
    "QueueStatus",
    "Status",
    "StatusPart",
    "SyncStatus",
    "TargetStatus",
    "TransferStatus",
    "TransportStatus",
    "WatchStatus",
    "assemble",
    "format_status",
    "shorten",
    "summary",
    "to_json",
]


@dataclass(frozen=True)
class ComponentStatus:
    """One process under the supervisor (or the supervisor itself)."""

    name: str
    role: str
    pid: int | None
    state: str
    restarts: int = 0
    uptime: float | None = None
    last_exit: int | None = None


@dataclass(frozen=True)
class TransferStatus:
    """A transfer running now (from the syncer)."""

    sync: str
    target: str
    phase: str
    seconds: float
    io_bytes: int = 0


@dataclass(frozen=True)
class TransportStatus:
    """How a target's small changes travel (from the syncer): ``agent`` (a
    long-lived channel) or ``rsync`` (a process per batch)."""

    sync: str
    target: str
    transport: str


MAX_BLIND_LISTED = 100  # blind subtrees listed per sync (all are counted)

# The ways a subtree can be out of sight to the watcher: the keys of
# ``blind_counts`` and the ``reason`` of a BlindStatus (metrics list them all).
WATCH_LIMIT = "watch_limit"  # fs.inotify.max_user_watches reached (ENOSPC)
TOO_LONG = "too_long"        # its path is longer than the kernel takes (ENAMETOOLONG)
UNREADABLE = "unreadable"    # permission denied (EACCES, EPERM)
MOUNT = "mount"              # another filesystem is mounted there (watched, and rescanned)
ERROR = "error"              # any other error of the kernel on that directory (EIO, ELOOP...)
BLIND_REASONS = (WATCH_LIMIT, TOO_LONG, UNREADABLE, MOUNT, ERROR)


@dataclass(frozen=True)
class BlindStatus:
    """A subtree the watcher cannot see (see docs/status.md for the
    reasons): its path relative to the source (bytes that are not UTF-8
    shown as ``\\xNN``), why, and the kernel's error."""

    path: str
    reason: str
    error: str = ""


@dataclass(frozen=True)
class WatchStatus:
    """One sync's inotify state (from the watcher)."""

    sync: str
    watches: int = 0
    unwatched: int = 0
    watch_limit_needed: int | None = None
    overflows: int = 0
    seen: float | None = None
    root: str = "ok"
    blind_counts: dict[str, int] = field(default_factory=dict)
    blind: list[BlindStatus] = field(default_factory=list)


@dataclass(frozen=True)
class TargetStatus:
    """One target's queue (from the collator)."""

    target: str
    state: str = "startup"
    pending: int = 0
    lag: float | None = None
    last_sync: float | None = None
    last_error: str | None = None
    transfers: dict[str, int] = field(default_factory=dict)
    bytes_sent: int = 0
    transport: str = "rsync"
    transfer: TransferStatus | None = None


@dataclass(frozen=True)
class QueueStatus:
    """One sync's queues (from the collator)."""

    sync: str
    rescans: int = 0
    journal: str = "ok"
    targets: list[TargetStatus] = field(default_factory=list)


@dataclass(frozen=True)
class StatusPart:
    """A child's answer to a status query: the part its role knows."""

    role: str
    watches: list[WatchStatus] = field(default_factory=list)
    queues: list[QueueStatus] = field(default_factory=list)
    transfers: list[TransferStatus] = field(default_factory=list)
    transports: list[TransportStatus] = field(default_factory=list)


@dataclass(frozen=True)
class SyncStatus:
    name: str
    source: str
    mode: str
    rescans: int = 0
    journal: str = "ok"
    watches: int | None = None
    unwatched: int | None = None
    watch_limit_needed: int | None = None
    overflows: int | None = None
    seen: float | None = None
    root: str | None = None
    blind_counts: dict[str, int] = field(default_factory=dict)
    blind: list[BlindStatus] = field(default_factory=list)
    targets: list[TargetStatus] = field(default_factory=list)


@dataclass(frozen=True)
class Status:
    """The document ``syncsup status --json`` prints."""

    config: str
    started: float
    components: list[ComponentStatus]
    syncs: list[SyncStatus]
    version: int = 1


def assemble(config: str, started: float, components: list[ComponentStatus],
             syncs: list[tuple[str, str, str, list[str]]], parts: list[StatusPart]) -> Status:
    """Merge the children's parts. ``syncs`` lists (name, source, mode,
    target specs) from the config, so that a sync or target a child has not
    reported yet still shows, in state ``startup``."""
    watches = {w.sync: w for p in parts for w in p.watches}
    queues = {q.sync: q for p in parts for q in p.queues}
    running = {(t.sync, t.target): t for p in parts for t in p.transfers}
    transport = {(t.sync, t.target): t.transport for p in parts for t in p.transports}
    out = []
    for name, source, mode, specs in syncs:
        w, q = watches.get(name), queues.get(name)
        known = {t.target: t for t in (q.targets if q else [])}
        targets = [dataclasses.replace(known.get(spec) or TargetStatus(target=spec),
                                       transfer=running.get((name, spec)),
                                       transport=transport.get((name, spec), "rsync"))
                   for spec in specs]
        out.append(SyncStatus(
            name=name, source=source, mode=mode, rescans=q.rescans if q else 0,
            journal=q.journal if q else "ok",
            watches=w.watches if w else None, unwatched=w.unwatched if w else None,
            watch_limit_needed=(w.watch_limit_needed or None) if w else None,
            overflows=w.overflows if w else None, seen=w.seen if w else None,
            root=w.root if w else None, blind_counts=dict(w.blind_counts) if w else {},
            blind=list(w.blind) if w else [], targets=targets))
    return Status(config=config, started=started, components=components, syncs=out)


def to_json(status: Status) -> dict[str, Any]:
    return dataclasses.asdict(status)


def summary(status: Status) -> tuple[bool, str]:
    """(initial sync done everywhere, one line) for systemd's STATUS=."""
    targets = [t for s in status.syncs for t in s.targets]
    starting = sum(t.state == "startup" for t in targets)
    failing = sum(t.state in ("retrying", "failed") for t in targets)
    pending = sum(t.pending for t in targets)
    down = [c.name for c in status.components if c.state != "running"]
    parts = [f"{len(targets)} target(s)"]
    if starting:
        parts.append(f"{starting} in initial sync")
    parts.append(f"{pending} pending")
    if failing:
        parts.append(f"{failing} failing")
    if down:
        parts.append(f"not running: {', '.join(down)}")
    return starting == 0, ", ".join(parts)


def shorten(text: str, limit: int = 160) -> str:
    """``text`` in at most ``limit`` characters, cut in the middle: a path
    of 4 KB keeps its start (which sync, which tree) and its end (which
    file, which error)."""
    if len(text) <= limit:
        return text
    keep = limit - 3
    return text[:keep - keep // 2] + "..." + text[len(text) - keep // 2:]


def _age(ts: float | None) -> str:
    if ts is None:
        return "never"
    secs = max(0.0, time.time() - ts)
    return f"{secs:.0f}s ago" if secs < 120 else f"{secs / 60:.0f}m ago"


def format_status(status: Status) -> str:
    """The human table of ``syncsup status``."""
    lines = [f"{'COMPONENT':<24} {'ROLE':<10} {'PID':>7} {'STATE':<9} {'RESTARTS':>8} UPTIME"]
    for c in status.components:
        up = "-" if c.uptime is None else f"{c.uptime:.0f}s"
        lines.append(f"{c.name:<24} {c.role:<10} {c.pid or '-'!s:>7} "
                     f"{c.state:<9} {c.restarts:>8} {up}")
    for s in status.syncs:
        lines.append("")
        journal = "" if s.journal == "ok" else f", journal: {s.journal}"
        lines.append(f"sync {s.name}: {s.source} (mode {s.mode}, "
                     f"{s.watches or 0} directories watched{journal})")
        lines.extend(_blind_lines(s))
        lines.append(f"  {'TARGET':<40} {'STATE':<9} {'PENDING':>7} {'LAG':>6} "
                     f"{'LAST SYNC':<10} LAST ERROR")
        for t in s.targets:
            lag = "-" if t.lag is None else f"{t.lag:.0f}s"
            lines.append(f"  {t.target:<40} {t.state:<9} {t.pending:>7} {lag:>6} "
                         f"{_age(t.last_sync):<10} {_one_line(t.last_error)}")
            x = t.transfer
            if x is not None and x.seconds >= 5:
                lines.append(f"    running: {x.phase} transfer for {x.seconds:.0f}s, "
                             f"{x.io_bytes / 1e6:.1f} MB read+written")
    # Every field can hold text from outside (a source's name, a target's
    # or its agent's error): no control character reaches the terminal.
    return "\n".join(printable(line, 1 << 16) for line in lines)


def _one_line(error: str | None, limit: int = 160) -> str:
    """LAST ERROR in the table: one bounded line (``--json`` has it all)."""
    if not error:
        return "-"
    return shorten(" | ".join(error.splitlines()), limit)


BLIND_SHOWN = 5  # blind subtrees named in the table per sync


def _blind_lines(s: SyncStatus) -> list[str]:
    """The source root's trouble and the blind subtrees, under the sync's
    header line: what the mirror does not follow now."""
    out = []
    if s.root not in (None, "ok"):
        out.append(f"  SOURCE ROOT {s.root}: nothing is watched or sent until a directory is "
                   "there again")
    counts = ", ".join(f"{n} {reason}" for reason, n in sorted(s.blind_counts.items()) if n)
    if counts:
        out.append(f"  BLIND: {counts} (not watched; see docs/status.md)")
        for b in s.blind[:BLIND_SHOWN]:
            err = f" ({b.error})" if b.error else ""
            out.append(f"    {b.reason:<12} {shorten(b.path or '.', 100)}{err}")
        more = sum(s.blind_counts.values()) - min(len(s.blind), BLIND_SHOWN)
        if more > 0:
            out.append(f"    ... and {more} more (syncsup status --json lists up to "
                       f"{MAX_BLIND_LISTED})")
    return out
