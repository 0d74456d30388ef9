"""Everything that acts on a target: the ``syncsup-target`` command (the
forced command of a confined key), the agent it serves, and the applier
that changes a target tree only through directory file descriptors (used
in-process by the syncer for local targets).

Kept free of the daemon's imports (no ZeroMQ): a target host needs only
msgpack and rsync.
"""

from syncsup.target._agent import Ids, handle
from syncsup.target._apply import Applier, ApplyError, Protection, split_path
from syncsup.target._protocol import (
    MAX_FRAME,
    VERSION,
    FrameError,
    decode_body,
    encode_frame,
    read_frame,
)
from syncsup.target._schema import MAX_PATH, MAX_STATS

# What the syncer uses: the applier (local targets), the agent's request
# handler (run in-process for a local target) and the agent's framing.
__all__ = ["MAX_FRAME", "MAX_PATH", "MAX_STATS", "VERSION", "Applier", "ApplyError",
           "FrameError", "Ids", "Protection", "decode_body", "encode_frame", "handle", "main",
           "read_frame", "split_path"]


def main(argv: list[str] | None = None) -> int:
    """The ``syncsup-target`` command (imported only when it runs: the
    syncer uses the applier above and needs none of it)."""
    from syncsup.target._command import main as command

    return command(argv)

