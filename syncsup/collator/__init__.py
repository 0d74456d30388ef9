"""The collator: one per sync, owner of the journal.

It binds the ``ingest`` socket (watcher EVENTS -> ACK after commit) and the
``dispatch`` socket (syncer READY -> BATCH -> DONE), and turns dirty paths
into batches per target after the configured ``delay``.
"""

__all__: list[str] = []
