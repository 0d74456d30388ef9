"""The watcher: one process, one inotify instance per sync.

It turns kernel events into dirty paths and subtrees (``tree``, pure apart
from the kernel calls it is given) and sends them to the collator, keeping
every message until it is acknowledged (``outbox``, pure). Whatever it
cannot see (its own start, a queue overflow, a new directory) becomes a
rescan of the affected subtree, sent only after the watches are in place.

Where things are: ``core`` decides (when to read and send, seen-points,
the root, blind subtrees), ``sync`` is one sync's watch around it, ``_main``
the loop that serves them all and talks to the collator.
"""

__all__: list[str] = []
