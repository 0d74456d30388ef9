"""Message types. One small frozen class per message; the docstring says what
each field means and who sends it to whom.

Bodies are validated field by field on decode (see ``_codec``): a peer that
sends the wrong type for a field gets its message dropped, not a crash deep in
a handler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "Ack",
    "Batch",
    "Control",
    "Done",
    "Events",
    "Heartbeat",
    "Message",
    "Ready",
    "StatusReply",
    "StatusRequest",
    "Stop",
]


@dataclass(frozen=True)
class Message:
    """Base class. ``TYPE`` is the second frame on the wire; ``FIELDS`` maps
    each field to its wire kind (``int``, ``float``, ``str``, ``bytes``,
    ``bool``, ``bytes_list``, ``map``, ``opt_str``, ``opt_float``).

    ``MAX_BODY`` (bytes), ``MAX_OBJECTS`` (msgpack objects in all) and
    ``MAX_DEPTH`` (nested containers) bound what decoding one body may cost;
    small control messages get small budgets so that nothing a peer sends can
    make a receiver allocate much more than the bytes it was sent."""

    TYPE: ClassVar[bytes] = b""
    FIELDS: ClassVar[dict[str, str]] = {}
    MAX_BODY: ClassVar[int] = 64 * 1024
    MAX_OBJECTS: ClassVar[int] = 1024
    MAX_DEPTH: ClassVar[int] = 2


@dataclass(frozen=True)
class Heartbeat(Message):
    """child -> supervisor (control socket), about once a second.

    The first heartbeat of an incarnation doubles as its hello. ``role`` is
    ``watcher``/``collator``/``syncer``; ``name`` the component name the
    supervisor gave it on its command line; ``incarnation`` a random token
    new at each start; ``info`` a role-specific status map (the collator puts
    its per-target queue state there) that ``syncsup status`` shows.
    """

    TYPE: ClassVar[bytes] = b"HEARTBEAT"
    FIELDS: ClassVar[dict[str, str]] = {
        "role": "str", "name": "str", "pid": "int", "incarnation": "str", "info": "map",
    }
    MAX_BODY: ClassVar[int] = 4 * 1024 * 1024
    MAX_OBJECTS: ClassVar[int] = 200_000
    MAX_DEPTH: ClassVar[int] = 8
    role: str
    name: str
    pid: int
    incarnation: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StatusRequest(Message):
    """CLI -> supervisor: ask for the status document. No fields."""

    TYPE: ClassVar[bytes] = b"STATUS"


@dataclass(frozen=True)
class StatusReply(Message):
    """supervisor -> CLI: ``status`` is the document ``syncsup status --json``
    prints (``components`` and ``syncs``)."""

    TYPE: ClassVar[bytes] = b"STATUS_REPLY"
    FIELDS: ClassVar[dict[str, str]] = {"status": "map"}
    MAX_BODY: ClassVar[int] = 8 * 1024 * 1024
    MAX_OBJECTS: ClassVar[int] = 400_000
    MAX_DEPTH: ClassVar[int] = 8
    status: dict[str, Any]


@dataclass(frozen=True)
class Stop(Message):
    """CLI -> supervisor: stop the daemon as SIGTERM would. ``reason`` is logged."""

    TYPE: ClassVar[bytes] = b"STOP"
    FIELDS: ClassVar[dict[str, str]] = {"reason": "str"}
    reason: str = ""


@dataclass(frozen=True)
class Control(Message):
    """CLI -> supervisor -> collator(s): an operator command.

    ``command`` is ``resync`` (compare everything again, with --checksum),
    ``pause`` (keep recording changes, send nothing) or ``resume``.
    ``sync`` and ``target`` narrow it ("" means all). The supervisor answers
    the CLI with a StatusReply whose ``status`` has ``ok`` and ``message``.
    """

    TYPE: ClassVar[bytes] = b"CONTROL"
    FIELDS: ClassVar[dict[str, str]] = {"command": "str", "sync": "str", "target": "str"}
    command: str
    sync: str = ""
    target: str = ""


@dataclass(frozen=True)
class Events(Message):
    """watcher -> collator (ingest socket): paths that may have changed.

    ``seq`` identifies the message for its ACK; the watcher resends anything
    unacked, and the collator's journal upserts make a resend harmless.
    ``paths`` are relative to the source root and are synced one by one (a
    directory without its contents). ``trees`` are subtrees to rescan whole,
    with deletes (``b""`` is the root): this is the RESCAN of the design, sent
    at watcher start, after a queue overflow and for new directories.
    ``moves`` are ``[from, to]`` renames inside the tree, in the order they
    happened, for the modes that replay renames on the target; both ends are
    in ``paths`` or ``trees`` too, so a rename that cannot be replayed is
    repaired by the transfer. ``verify`` are subtrees to rescan like
    ``trees`` but comparing content (``--checksum``): events were lost there
    (queue overflow, a blind subtree, an unclean restart), and a lost
    same-size rewrite that kept its mtime would fool rsync's quick check.
    ``created`` (command mode only) are the paths
    among ``paths`` that appeared (created or moved in), so that an action can
    tell ``on_create`` from ``on_modify``.
    """

    TYPE: ClassVar[bytes] = b"EVENTS"
    FIELDS: ClassVar[dict[str, str]] = {
        "seq": "int", "paths": "bytes_list", "trees": "bytes_list", "moves": "pair_list",
        "created": "bytes_list", "verify": "bytes_list",
    }
    MAX_BODY: ClassVar[int] = 12 * 1024 * 1024
    MAX_OBJECTS: ClassVar[int] = 200_000
    MAX_DEPTH: ClassVar[int] = 3
    seq: int
    paths: list[bytes] = field(default_factory=list)
    trees: list[bytes] = field(default_factory=list)
    moves: list[list[bytes]] = field(default_factory=list)
    created: list[bytes] = field(default_factory=list)
    verify: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Ack(Message):
    """collator -> watcher: the EVENTS message ``seq`` is committed to the journal."""

    TYPE: ClassVar[bytes] = b"ACK"
    FIELDS: ClassVar[dict[str, str]] = {"seq": "int"}
    seq: int


@dataclass(frozen=True)
class Ready(Message):
    """syncer -> collator (dispatch socket): one credit for ``target``.

    ``target`` is the index of the target in its sync. ``incarnation`` lets
    the collator tell a restarted syncer from a repeated credit: a new
    incarnation releases every lease the old one held, so work handed to a
    syncer that died goes back to pending. Idle syncers repeat READY every
    few seconds, so a restarted collator learns about them.
    """

    TYPE: ClassVar[bytes] = b"READY"
    FIELDS: ClassVar[dict[str, str]] = {"target": "int", "incarnation": "str"}
    target: int
    incarnation: str


@dataclass(frozen=True)
class Batch(Message):
    """collator -> syncer: transfer these for ``target``.

    ``batch_id`` names the lease. ``trees`` are synced recursively with
    deletes (``b""`` is the root); ``paths`` one by one, the filesystem read
    at transfer time decides (present: sent, absent: deleted on the target).
    ``startup`` is true until the initial full sync of this run succeeded.
    ``moves`` are renames to replay on the target first (rsyncssh, direct)
    or to report to ``on_move`` (command). ``created`` (command mode) marks
    paths that appeared since the last batch. ``verify`` are subtrees to
    compare with ``--checksum`` (see Events).
    """

    TYPE: ClassVar[bytes] = b"BATCH"
    FIELDS: ClassVar[dict[str, str]] = {
        "batch_id": "int", "target": "int", "paths": "bytes_list", "trees": "bytes_list",
        "startup": "bool", "moves": "pair_list", "created": "bytes_list",
        "verify": "bytes_list",
    }
    MAX_BODY: ClassVar[int] = 12 * 1024 * 1024
    MAX_OBJECTS: ClassVar[int] = 200_000
    MAX_DEPTH: ClassVar[int] = 3
    batch_id: int
    target: int
    paths: list[bytes] = field(default_factory=list)
    trees: list[bytes] = field(default_factory=list)
    startup: bool = False
    moves: list[list[bytes]] = field(default_factory=list)
    created: list[bytes] = field(default_factory=list)
    verify: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Done(Message):
    """syncer -> collator: the outcome of batch ``batch_id`` on ``target``.

    ``outcome`` is ``ok`` (the journal may forget what the lease covered),
    ``retry`` (keep it, back off, try again) or ``fatal`` (keep it, stop the
    target until resync or restart). ``rc`` is rsync's exit code (negative for
    a signal), ``error`` a one-line reason, ``seconds`` the wall time.
    ``moves_done`` says how many of the batch's renames were attempted: those
    are never replayed, whatever the outcome (the transfer repairs a failed
    one, a replay could undo a later one). ``bytes`` is what rsync reported
    sending (its ``--stats``).
    """

    TYPE: ClassVar[bytes] = b"DONE"
    FIELDS: ClassVar[dict[str, str]] = {
        "batch_id": "int", "target": "int", "outcome": "str", "rc": "int", "error": "str",
        "seconds": "float", "moves_done": "int", "bytes": "int",
    }
    batch_id: int
    target: int
    outcome: str
    rc: int = 0
    error: str = ""
    seconds: float = 0.0
    moves_done: int = 0
    bytes: int = 0
