"""The syncer: runs rsync for the targets of one sync.

One process serves every target of its sync (memory grows with transfers in
flight, not with targets); each target still has its own lease, its own
rsync process group and its own backoff, so a hung transfer blocks only its
own target.
"""

__all__: list[str] = []
