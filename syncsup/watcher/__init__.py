"""The watcher: one per sync, inotify on one source tree.

It turns kernel events into dirty paths and subtrees and sends them to the
collator, keeping every message until it is acknowledged. Whatever it cannot
see (its own start, a queue overflow, a new directory) becomes a rescan of
the affected subtree, sent only after the watches are in place.
"""

__all__: list[str] = []
