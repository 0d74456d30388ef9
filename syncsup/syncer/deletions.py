"""Deletions for a receiver that rejects ``--delete-missing-args``.

A paths step names each changed entry and lets ``--delete-missing-args``
delete those gone from the source. The sender lists a missing name as an
entry of mode 0, which receivers before rsync 3.4.4 may reject (Debian 12's
3.2.7 does): "invalid file mode 00 ... protocol
incompatibility", exit 2, for every batch holding a deletion. Retrying
cannot help, and the target's version cannot be fixed from here.

So for such a receiver deletions go another way, one every rsync takes: the
paths step ignores missing names (``--ignore-missing-args``), and the times
step that follows it lists each directory that lost an entry with a
trailing slash, so rsync sends that directory's entries (one level, the
quick check) and ``--delete`` removes what the source no longer has there.
The receiver's rsync is not asked for its version: a local target's is the
local binary, which is tried once (``rsync_version.takes_missing_args``:
a transfer between two temporary trees); a remote target's is
learned from its answer: the first step that asked for
``--delete-missing-args`` and ended with rsync's 2 switches that target to
the other way, and the batch is retried. The other way is not the default
because a directory listed with its entries also loses what the target
holds there and the source never had (the root is always listed so), where
``--delete-missing-args`` deletes only the names the batch named. Not in
a batch planned for an agent, which makes deletions itself and whose
plan has no times step (a confined target's ``syncsup-target`` also
refuses the ``--no-r`` that rsync sends for ``--delete`` with ``-d``):
what an agent leaves to rsync still uses ``--delete-missing-args``.
"""

from __future__ import annotations

import os
import stat

from syncsup.config import Sync, Target
from syncsup.rsync_version import takes_missing_args

__all__ = ["receiver_takes_missing_args", "with_contents"]


def receiver_takes_missing_args(sync: Sync, target: Target) -> bool:
    """Whether ``--delete-missing-args`` can be used towards ``target``."""
    if target.is_remote:
        return True  # until its answer says otherwise (rsync's 2: see the syncer)
    return takes_missing_args(sync.rsync.binary)


def _real_directory(root: bytes, rel: bytes) -> bool:
    """``rel`` is a directory under ``root`` reached through directories
    only: no component is a symlink. With a trailing slash, an rsync older
    than 3.4.4 would send what a symlink there points to (another user's
    symlink, planted by a writer of the source, to a directory only the
    daemon may read)."""
    path = root
    for part in rel.split(b"/"):
        path = os.path.join(path, part)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return False
        except OSError:
            return False
    return True


def with_contents(root: bytes, changed: set[bytes], names: list[bytes]) -> list[bytes]:
    """``names`` (a times step's directories) with ``/`` added to each that
    held an entry of ``changed`` now missing from the source under ``root``
    and is still a real directory there: rsync then sends its entries, and
    ``--delete`` the ones gone. The root is always sent with its entries
    (listed as ``.``): the caller checks, right before the step, that the
    source root is not empty (an unmounted disk must never empty the mirror)."""
    lost: set[bytes] = set()
    for rel in changed:
        if rel and not os.path.lexists(os.path.join(root, rel)):
            # the first missing ancestor is what the paths step named
            parent = rel.rpartition(b"/")[0]
            while parent and not os.path.lexists(os.path.join(root, parent)):
                rel, parent = parent, parent.rpartition(b"/")[0]
            lost.add(parent)
    return [n + b"/" if n and n in lost and _real_directory(root, n) else n for n in names]
