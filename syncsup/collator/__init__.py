"""The collator: one process, owner of every sync's journal.

It binds the ``ingest`` socket (watcher EVENTS -> ACK after commit) and the
``dispatch`` socket (syncer READY -> BATCH -> DONE). Its core (``core``)
decides what to record and what to hand out, with per-target queues
(``queue``, pure) over one SQLite journal per sync (``journal``).
"""

__all__: list[str] = []
