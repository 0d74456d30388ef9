"""Message types. One small frozen class per message; the docstring says what
each field means and who sends it to whom. The fields' annotations are the
wire schema (see ``_typed``): a peer that sends the wrong type for a field
gets its message dropped, not a crash deep in a handler.

There is one watcher, one collator and one syncer for all syncs, so every
message about a sync names it (``sync``) and every message about a target
names it by its index in that sync's ``targets`` (``target``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from syncsup.seen import Seen
from syncsup.status import Status, StatusPart

__all__ = [
    "Ack",
    "Batch",
    "Changes",
    "Command",
    "Control",
    "ControlReply",
    "Done",
    "Events",
    "Heartbeat",
    "Message",
    "Outcome",
    "Ready",
    "StatusAnswer",
    "StatusQuery",
    "StatusReply",
    "StatusRequest",
    "Stop",
]


class Outcome(StrEnum):
    """What a transfer means for the journal: ``ok`` forgets what it
    covered; ``retry`` keeps it and backs off; ``fatal`` keeps it and retries
    only every few minutes; ``halt`` keeps it until an operator's resync or
    resume (each retry would repeat the harm, e.g. max_delete)."""

    OK = "ok"
    RETRY = "retry"
    FATAL = "fatal"
    HALT = "halt"


class Command(StrEnum):
    """Operator commands: ``resync`` compares everything again
    (``--checksum``), ``pause`` keeps recording changes but sends nothing,
    ``resume`` undoes a pause (and a halt)."""

    RESYNC = "resync"
    PAUSE = "pause"
    RESUME = "resume"


@dataclass
class Changes:
    """What may differ between a source and a target: the dirty set, the
    one shape changes have from the watcher through the journal to a
    transfer or a command-mode action.

    ``paths`` are synced one by one (a directory without its contents); the
    filesystem read at transfer time decides (present: sent, absent:
    deleted). ``trees`` are subtrees to rescan whole, with deletes (``b""``
    is the root); ``verify`` subtrees to rescan comparing content
    (``--checksum``) because events were lost there; ``prove`` subtrees to
    rescan comparing the content of the files whose target copy the kernel's
    ctimes cannot prove current (a start with no earlier state: see
    :mod:`syncsup.syncer.prove`). ``moves`` are renames
    inside the tree in the order they happened, for the modes that replay
    them on the target; both ends are in ``paths`` or ``trees`` too, so a
    rename that cannot be replayed is repaired by the transfer. ``created``
    (command mode) are the paths among ``paths`` that appeared, so that an
    action can tell ``on_create`` from ``on_modify``.
    """

    paths: set[bytes] = field(default_factory=set)
    trees: set[bytes] = field(default_factory=set)
    verify: set[bytes] = field(default_factory=set)
    prove: set[bytes] = field(default_factory=set)
    created: set[bytes] = field(default_factory=set)
    moves: list[tuple[bytes, bytes]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.paths or self.trees or self.verify or self.prove or self.moves)

    def size(self) -> int:
        """Entries in all, for batching limits."""
        return (len(self.paths) + len(self.trees) + len(self.verify) + len(self.prove)
                + len(self.created)
                + 2 * len(self.moves))

    def update(self, other: Changes) -> None:
        """Add ``other``'s entries (its moves after ours)."""
        self.paths |= other.paths
        self.trees |= other.trees
        self.verify |= other.verify
        self.prove |= other.prove
        self.created |= other.created
        self.moves += other.moves


@dataclass(frozen=True)
class Message:
    """Base class. ``TYPE`` is the second frame on the wire.

    ``MAX_BODY`` (bytes), ``MAX_OBJECTS`` (msgpack objects in all) and
    ``MAX_DEPTH`` (nested containers) bound what decoding one body may cost;
    small control messages get small budgets so that nothing a peer sends can
    make a receiver allocate much more than the bytes it was sent."""

    TYPE: ClassVar[bytes] = b""
    MAX_BODY: ClassVar[int] = 64 * 1024
    MAX_OBJECTS: ClassVar[int] = 1024
    MAX_DEPTH: ClassVar[int] = 3


_BIG = 12 * 1024 * 1024  # Events and Batch: up to ~8 MiB of path bytes


@dataclass(frozen=True)
class Heartbeat(Message):
    """child -> supervisor (control socket), every few seconds and at once
    after start (the first one of an incarnation is its hello). ``role`` is
    ``watcher``, ``collator`` or ``syncer``; ``incarnation`` a random token
    new at each start."""

    TYPE: ClassVar[bytes] = b"HEARTBEAT"
    role: str
    pid: int
    incarnation: str


@dataclass(frozen=True)
class StatusQuery(Message):
    """supervisor -> child: answer with a StatusAnswer carrying ``query``."""

    TYPE: ClassVar[bytes] = b"STATUS_QUERY"
    query: int


@dataclass(frozen=True)
class StatusAnswer(Message):
    """child -> supervisor: the child's part of the status, for ``query``."""

    TYPE: ClassVar[bytes] = b"STATUS_ANSWER"
    MAX_BODY: ClassVar[int] = 8 * 1024 * 1024
    MAX_OBJECTS: ClassVar[int] = 400_000
    MAX_DEPTH: ClassVar[int] = 8
    query: int
    part: StatusPart


@dataclass(frozen=True)
class StatusRequest(Message):
    """CLI -> supervisor: ask for the status document. No fields."""

    TYPE: ClassVar[bytes] = b"STATUS"


@dataclass(frozen=True)
class StatusReply(Message):
    """supervisor -> CLI: the document ``syncsup status --json`` prints."""

    TYPE: ClassVar[bytes] = b"STATUS_REPLY"
    MAX_BODY: ClassVar[int] = 8 * 1024 * 1024
    MAX_OBJECTS: ClassVar[int] = 400_000
    MAX_DEPTH: ClassVar[int] = 8
    status: Status


@dataclass(frozen=True)
class Stop(Message):
    """CLI -> supervisor: stop the daemon as SIGTERM would. ``reason`` is logged."""

    TYPE: ClassVar[bytes] = b"STOP"
    reason: str = ""


@dataclass(frozen=True)
class Control(Message):
    """CLI -> supervisor -> collator: an operator command. ``sync`` and
    ``target_spec`` (the target as written in the config) narrow it; ""
    means all."""

    TYPE: ClassVar[bytes] = b"CONTROL"
    command: Command
    sync: str = ""
    target_spec: str = ""


@dataclass(frozen=True)
class ControlReply(Message):
    """supervisor -> CLI: whether a Control was accepted, and what it did."""

    TYPE: ClassVar[bytes] = b"CONTROL_REPLY"
    ok: bool
    message: str = ""


@dataclass(frozen=True)
class Events(Message):
    """watcher -> collator (ingest socket): ``changes`` in sync ``sync``.

    ``seq`` identifies the message for its ACK; the watcher resends anything
    unacked, and the collator's journal upserts make a resend harmless.
    ``seen``, when set, says that every change before that moment is in
    this message or an earlier one; the collator commits it with the
    changes, and a recovery trusts the quick check for files older than it.
    ``first``, when set, is when the oldest change in it was read (wall
    clock): the watcher may hold changes for a short window to send them
    together, and the collator counts a batch's ``delay`` from then.
    """

    TYPE: ClassVar[bytes] = b"EVENTS"
    MAX_BODY: ClassVar[int] = _BIG
    MAX_OBJECTS: ClassVar[int] = 250_000
    MAX_DEPTH: ClassVar[int] = 4
    seq: int
    sync: str
    changes: Changes = field(default_factory=Changes)
    seen: Seen | None = None
    first: float | None = None


@dataclass(frozen=True)
class Ack(Message):
    """collator -> watcher: the EVENTS message ``seq`` is committed to the journal."""

    TYPE: ClassVar[bytes] = b"ACK"
    seq: int


@dataclass(frozen=True)
class Ready(Message):
    """syncer -> collator (dispatch socket): one credit for a target.

    ``incarnation`` lets the collator tell a restarted syncer from a
    repeated credit: a new incarnation releases every lease the old one
    held, so work handed to a syncer that died goes back to pending. The
    syncer sends one per idle target at start and whenever its connection
    to the collator is made again (a restarted collator); after a batch,
    the DONE carries the credit itself.
    """

    TYPE: ClassVar[bytes] = b"READY"
    sync: str
    target: int
    incarnation: str


@dataclass(frozen=True)
class Batch(Message):
    """collator -> syncer: transfer ``changes`` to a target.

    ``batch_id`` names the lease. ``startup`` is true until the initial full
    sync of this run succeeded. ``generation`` is the journal's generation
    of the newest change it carries (0: unknown): a change recorded later
    has a higher one. ``journal`` names the journal those generations come
    from, for this run of the collator (0: unknown); generations of two
    journals are never compared. The syncer replays an rsync batch
    recorded for another target only for a batch of the same journal no
    newer than the recording's own (``syncsup.syncer.sharedbatch``).
    """

    TYPE: ClassVar[bytes] = b"BATCH"
    MAX_BODY: ClassVar[int] = _BIG
    MAX_OBJECTS: ClassVar[int] = 250_000
    MAX_DEPTH: ClassVar[int] = 4
    batch_id: int
    sync: str
    target: int
    startup: bool = False
    changes: Changes = field(default_factory=Changes)
    generation: int = 0
    journal: int = 0


@dataclass(frozen=True)
class Done(Message):
    """syncer -> collator: the outcome of batch ``batch_id``.

    ``rc`` is the exit code of the step that decided (negative for a
    signal), ``error`` a one-line reason, ``seconds`` the wall time.
    ``moves_done`` says how many of the batch's renames were attempted:
    those are never replayed, whatever the outcome (the transfer repairs a
    failed one, a replay could undo a later one). ``bytes`` is what was
    sent (rsync's ``--stats``).

    A DONE with an ``incarnation`` is also the target's next credit, as a
    READY from that incarnation would be: one message per batch fewer on
    the path of every change.
    """

    TYPE: ClassVar[bytes] = b"DONE"
    batch_id: int
    sync: str
    target: int
    outcome: Outcome
    rc: int = 0
    error: str = ""
    seconds: float = 0.0
    moves_done: int = 0
    bytes: int = 0
    incarnation: str = ""
