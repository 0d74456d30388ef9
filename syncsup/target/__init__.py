"""Everything that acts on a target: the ``syncsup-target`` command (the
forced command of a confined key), the agent it serves, and the applier
that changes a target tree only through directory file descriptors (used
in-process by the syncer for local targets).

Kept free of the daemon's imports (no ZeroMQ): a target host needs only
msgpack and rsync.
"""

from syncsup.target._apply import Applier, ApplyError, Protection, split_path

__all__ = ["Applier", "ApplyError", "Protection", "main", "split_path"]


def main(argv: list[str] | None = None) -> int:
    """The ``syncsup-target`` command (imported only when it runs: the
    syncer uses the applier above and needs none of it)."""
    from syncsup.target._command import main as command

    return command(argv)
