"""The journal: which paths are dirty for which target, in SQLite.

This is the only durable state of a sync. It is level-triggered: a row says
"this path (or this whole subtree) may differ on this target", never what
happened to it; the syncer reads the truth from the filesystem when it
transfers. That makes every write an idempotent upsert, so a watcher may
resend a message it is unsure about, and the table is bounded by the number
of distinct paths, not by the number of events.

Each upsert stamps the row with a new generation number. A transfer leases
rows with the generation it saw; on success only rows whose generation did
not move are deleted, so a change that lands while rsync runs is never lost.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from syncsup.proto import Changes
from syncsup.seen import Seen

__all__ = [
    "CREATED", "PATH", "PROVE", "TREE", "VERIFY", "Journal", "Kind", "Row", "is_damage",
    "move_aside", "to_changes",
]


# rows under a renamed directory copied to its new name; past it, one
# verifying rescan of the new name (the copies must not reach MAX_PENDING)
FOLLOW_MAX = 10_000


class Kind(IntEnum):
    """How a journal row stores one field of :class:`~syncsup.proto.Changes`."""

    PATH = 0     # changes.paths: this entry alone (a directory without its contents)
    TREE = 1     # changes.trees: this subtree, recursively, deleting extras
    CREATED = 2  # changes.created: command mode, this path appeared
    VERIFY = 3   # changes.verify: like TREE, comparing content: events were lost there
    PROVE = 4    # changes.prove: like VERIFY, for the files the target's ctimes cannot vouch for


PATH, TREE, CREATED, VERIFY, PROVE = (Kind.PATH, Kind.TREE, Kind.CREATED, Kind.VERIFY,
                                      Kind.PROVE)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dirty (
    target     TEXT    NOT NULL,
    kind       INTEGER NOT NULL,
    path       BLOB    NOT NULL,
    gen        INTEGER NOT NULL,
    first_seen REAL    NOT NULL,
    PRIMARY KEY (target, kind, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dirty_age ON dirty (target, first_seen);
CREATE TABLE IF NOT EXISTS moves (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    src    BLOB    NOT NULL,
    dst    BLOB    NOT NULL,
    UNIQUE (target, seq, idx)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Row:
    """One leased journal row: ``gen`` is the generation seen at lease time."""

    kind: Kind
    path: bytes
    gen: int


class Journal:
    """A thin, typed layer over one SQLite file (WAL mode).

    The connection is opened on first use and can be released
    (:meth:`release`) while the journal is empty: one collator holds the
    journals of every sync, and an open SQLite connection costs about
    0.2 MB, so a hundred idle syncs would otherwise cost 20 MB for nothing.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._db: sqlite3.Connection | None = None
        self._gen = 0
        # Names this journal's generations for this process: a rebuilt
        # journal, or one reopened by a restarted collator, gets another, so
        # the generations of two are never compared (a rebuilt one counts
        # again from 1). Never 0 (BATCH's "unknown").
        self.epoch = int.from_bytes(os.urandom(8), "big") >> 2 | 1

    @property
    def gen(self) -> int:
        """The newest generation stamped on a row (opens the journal)."""
        self.db  # noqa: B018 - opening reads the stored generation
        return self._gen

    @property
    def db(self) -> sqlite3.Connection:
        return self._db if self._db is not None else self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             cached_statements=16)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against a crash of any process (the WAL is
        # written before commit returns); only power loss may drop the last
        # transactions, and a restart rescans anyway.
        db.execute("PRAGMA synchronous=NORMAL")
        # One collator holds every sync's journal: keep each page cache
        # small (the default is 2 MiB per connection).
        db.execute("PRAGMA cache_size=-256")
        db.executescript(_SCHEMA)
        self._db = db
        row = db.execute("SELECT MAX(gen) FROM dirty").fetchone()
        meta = self.get_meta("gen")
        self._gen = max(self._gen, int(row[0] or 0), int(meta or 0))
        return db

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def release(self) -> None:
        """Close the connection until the next use."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def close(self) -> None:
        self.release()

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def mark(self, targets: Iterable[str], changes: Changes, now: float, seq: int = 0,
             seen: Seen | None = None, follow_moves: bool = False) -> int:
        """Mark ``changes`` dirty for every target in one transaction;
        returns the new generation. ``seen`` (the watcher's seen-point) is
        committed in the same transaction.

        ``changes.moves`` (renames to replay, in order) are the one part that
        is a log rather than a set; ``seq`` (the sender's message number)
        makes their insert idempotent, so a resent message adds nothing.

        ``follow_moves``: what is dirty under a renamed directory is dirty
        under its new name too (see :meth:`_follow`).
        """
        db = self.db  # opened first: it knows the last generation
        self._gen += 1
        gen = self._gen
        targets = list(targets)
        moves = changes.moves
        items = ([(PATH, p) for p in changes.paths] + [(TREE, t) for t in changes.trees]
                 + [(CREATED, c) for c in changes.created]
                 + [(VERIFY, v) for v in changes.verify] + [(PROVE, v) for v in changes.prove])
        rows = [(t, kind, p, gen, now) for t in targets for kind, p in items]
        with self._tx():
            db.executemany(
                "INSERT INTO dirty (target, kind, path, gen, first_seen) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (target, kind, path) DO UPDATE SET gen = excluded.gen", rows)
            if moves:
                self.db.executemany(
                    "INSERT OR IGNORE INTO moves (target, seq, idx, src, dst) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(t, seq, i, m[0], m[1]) for t in targets for i, m in enumerate(moves)])
                if follow_moves:
                    self._follow(targets, changes, gen, now)
            self.set_meta("gen", str(gen))
            if seen is not None:
                self.set_meta("seen", seen.to_json())
        return gen

    def _follow(self, targets: list[str], changes: Changes, gen: int, now: float) -> None:
        """Copy the rows under each renamed directory to its new name, in
        the order of the renames.

        Why: a file changed, still dirty (its target slow or down, or its
        transfer under way), and then its directory renamed. The target
        renames its older copy along (replayed renames), or an enclosing
        transfer copies it meanwhile, and the new name's tree is compared
        by rsync's quick check, which a rewrite that kept the size and put
        the mtime back passes; its walk lists by ctime only what changed
        just before the rename. The row under the new name sends the file
        by content. One indexed range query per rename and target (a
        file's finds its own row at most); past :data:`FOLLOW_MAX` rows,
        the new name gets one verifying rescan instead (the copies must
        not push the target past the collator's bound on pending rows)."""
        db = self.db
        for t in targets:
            for src, dst in changes.moves:
                if src == dst or not src:
                    continue
                found = db.execute(
                    "SELECT kind, path FROM dirty WHERE target = ? AND kind IN (?, ?, ?, ?) AND "
                    "(path = ? OR (path >= ? AND path < ?)) LIMIT ?",
                    (t, int(PATH), int(TREE), int(VERIFY), int(PROVE), src, src + b"/",
                     src + b"0", FOLLOW_MAX + 1)).fetchall()
                rows = ([(int(VERIFY), dst)] if len(found) > FOLLOW_MAX
                        else [(k, dst + bytes(p)[len(src):]) for k, p in found])
                db.executemany(
                    "INSERT INTO dirty (target, kind, path, gen, first_seen) "
                    "VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (target, kind, path) DO UPDATE SET gen = excluded.gen",
                    [(t, k, p, gen, now) for k, p in rows])

    def take_moves(self, target: str, limit: int, max_bytes: int = 1 << 62
                   ) -> list[tuple[int, bytes, bytes]]:
        """The oldest renames pending for ``target``, in order: at most
        ``limit``, stopping near ``max_bytes`` of names (a batch must stay
        within what the syncer accepts)."""
        out: list[tuple[int, bytes, bytes]] = []
        size = 0
        cur = self.db.execute(
            "SELECT id, src, dst FROM moves WHERE target = ? ORDER BY id LIMIT ?", (target, limit))
        for i, a, b in cur:
            out.append((int(i), bytes(a), bytes(b)))
            size += len(a) + len(b) + 2
            if size >= max_bytes:
                break
        cur.close()
        return out

    def drop_moves(self, target: str, upto: int) -> None:
        """Forget renames up to id ``upto`` (they were attempted)."""
        with self._tx():
            self.db.execute("DELETE FROM moves WHERE target = ? AND id <= ?", (target, upto))

    def take(self, target: str, limit: int, max_bytes: int) -> list[Row]:
        """Up to ``limit`` dirty rows of ``target``, trees first (they are the
        expensive, covering ones), stopping near ``max_bytes`` of path data."""
        out: list[Row] = []
        size = 0
        # Rescans first (they cover the most), then paths. A CREATED row
        # (command mode) only qualifies a PATH row: it goes with its path,
        # outside the limits, never alone.
        cur = self.db.execute(
            "SELECT d.kind, d.path, d.gen, c.gen FROM dirty d LEFT JOIN dirty c "
            "ON c.target = d.target AND c.kind = ? AND c.path = d.path AND d.kind = ? "
            "WHERE d.target = ? AND d.kind != ? "
            "ORDER BY d.kind = ?, d.kind DESC, d.path",
            (CREATED, PATH, target, CREATED, PATH))
        for kind, path, gen, created_gen in cur:
            out.append(Row(Kind(kind), bytes(path), int(gen)))
            if created_gen is not None:
                out.append(Row(CREATED, bytes(path), int(created_gen)))
            size += len(path) + 1
            if len(out) >= limit or size >= max_bytes:
                break
        cur.close()
        return out

    def complete(self, target: str, rows: Iterable[Row]) -> None:
        """Forget rows a successful transfer covered, unless they changed since."""
        with self._tx():
            self.db.executemany(
                "DELETE FROM dirty WHERE target = ? AND kind = ? AND path = ? AND gen <= ?",
                [(target, r.kind, r.path, r.gen) for r in rows])

    def pending(self, target: str) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM dirty WHERE target = ?", (target,)).fetchone()
        return int(row[0])

    def oldest(self, target: str) -> float | None:
        """When the oldest pending change of ``target`` was first recorded."""
        row = self.db.execute(
            "SELECT MIN(first_seen) FROM dirty WHERE target = ?", (target,)).fetchone()
        return None if row[0] is None else float(row[0])

    def has_tree(self, target: str, path: bytes = b"") -> bool:
        """Is a rescan (plain or verifying) of ``path`` pending?"""
        row = self.db.execute(
            "SELECT 1 FROM dirty WHERE target = ? AND kind IN (?, ?, ?) AND path = ?",
            (target, TREE, VERIFY, PROVE, path)).fetchone()
        return row is not None

    def collapse(self, target: str, now: float) -> None:
        """Replace everything pending for ``target`` by one rescan of the root:
        the bound that keeps a target down for a week from growing the file.
        A verifying one: the collapsed rows may have been same-size rewrites."""
        first = self.oldest(target) or now  # opens the journal: it knows the generation
        self._gen += 1
        with self._tx():
            self.db.execute("DELETE FROM dirty WHERE target = ?", (target,))
            self.db.execute("DELETE FROM moves WHERE target = ?", (target,))
            self.db.execute(
                "INSERT INTO dirty (target, kind, path, gen, first_seen) VALUES (?, ?, ?, ?, ?)",
                (target, VERIFY, b"", self.gen, first))
            self.set_meta("gen", str(self.gen))

    def forget_targets(self, keep: Iterable[str]) -> None:
        """Drop rows of targets no longer in the config."""
        keep = list(keep)
        marks = ",".join("?" * len(keep))
        with self._tx():
            self.db.execute(f"DELETE FROM dirty WHERE target NOT IN ({marks})", keep)
            self.db.execute(f"DELETE FROM moves WHERE target NOT IN ({marks})", keep)

    def _tx(self) -> _Tx:
        return _Tx(self.db)


_DAMAGE = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


def is_damage(exc: sqlite3.Error) -> bool:
    """Is ``exc`` a sign of a damaged file (as opposed to a full disk, a
    permission problem or an I/O error, which may pass)?"""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.split("_")[:2] == ["SQLITE", "CORRUPT"] or name in _DAMAGE or (
        "malformed" in str(exc) or "not a database" in str(exc))


def move_aside(path: Path | str, stamp: str) -> Path:
    """Rename a damaged journal (and its WAL and shared-memory files) out of
    the way; returns the new name of the main file."""
    base = Path(path)
    aside = base.with_name(f"{base.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        try:
            Path(f"{base}{suffix}").rename(f"{aside}{suffix}")
        except FileNotFoundError:
            pass
    return aside


def to_changes(rows: Iterable[Row], moves: Iterable[tuple[int, bytes, bytes]] = ()
               ) -> Changes:
    """The Changes that leased ``rows`` and ``moves`` stand for."""
    out = Changes(moves=[(a, b) for _id, a, b in moves])
    fields = {PATH: out.paths, TREE: out.trees, CREATED: out.created, VERIFY: out.verify,
              PROVE: out.prove}
    for r in rows:
        fields[r.kind].add(r.path)
    return out


class _Tx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
