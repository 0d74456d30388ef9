"""The syncer: one process running the transfers of every target of every
sync.

Each target has a slot: its own lease, its own plan (``plan``, pure), its own
process group per step and its own ssh master, so a hung transfer blocks
only its own target; ``max_processes`` caps the transfers running at once.
Local targets get renames (and small changes) applied in-process through
directory descriptors; everything else goes through rsync.
"""

__all__: list[str] = []
