"""Replaying renames on a target (modes ``direct`` and ``rsyncssh``).

A replayed rename is an optimisation, never the source of truth: both ends
of every rename are also dirty paths, so whatever a rename gets wrong (the
source was not on the target yet, the destination is a non-empty directory)
the transfer that follows repairs. Hence failures here are logged at debug
level and never fail a batch; only "could not reach the target at all" does.

Only a rename that rsync would make itself is replayed (:func:`replayable`):
both names sent by the sync's rules. A rename into an excluded name is,
for rsync, a delete of the old name (the new one is never sent, so it
would stay on the target for good if renamed there); a rename out of an
excluded name is a create of the new one (the target has nothing under the
old name, or something of its own that rsync leaves alone). Both ends are
dirty paths anyway, so leaving a rename out is always exact.

One way, whatever the target: the target's agent channel
(:class:`~syncsup.syncer.agents.Channel`), in-process through directory
descriptors for a local target (no symlink ever followed), the long-lived
``syncsup-target ROOT agent`` session over ssh for a remote one, confined or
not. A target without an agent (an rsync daemon, or a host where
``syncsup-target`` cannot be started) gets no replay: its renames travel
as a delete of the old name and a create of the new one, by the transfers.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from syncsup.filters import RuleList

__all__ = ["replayable", "retyped_parents"]


def replayable(moves: Iterable[tuple[bytes, bytes]], rules: RuleList,
               source: bytes) -> list[tuple[bytes, bytes]]:
    """The renames of ``moves`` that may be replayed on the target: both
    names certainly sent by ``rules`` (whatever the entry's type). A
    directory's rename (or one whose entry is gone from ``source`` by now,
    which may have been one) also needs rules that decide by names alone:
    a rule on a path, like ``sub/*.tmp``, can exclude below the new name
    what it did not below the old one, and rsync leaves an excluded entry
    on the target. Protect and risk rules change what rsync deletes on the
    target, so with them nothing is replayed."""
    if rules.receiver_rules:
        return []
    out = []
    for src, dst in moves:
        if rules.sent(src) is not True or rules.sent(dst) is not True:
            continue
        if not rules.name_only() and _maybe_dir(source, dst):
            continue
        out.append((src, dst))
    return out


def retyped_parents(paths: Iterable[bytes], rules: RuleList, source: bytes) -> set[bytes]:
    """The directories holding a path that a rule excludes only as its
    present type: a file replaced by a directory ``cache`` under ``cache/``
    leaves the target's file, which neither the agent nor rsync touches
    when the name is sent alone (excluded now), but which ``rsync -a
    --delete`` deletes. A rescan of the directory does it; such swaps are
    rare, so the cost is too."""
    out: set[bytes] = set()
    if not rules.by_type:
        return out  # every answer is the same for both types: nothing to look up
    for rel in paths:
        try:
            is_dir = stat.S_ISDIR(os.lstat(os.path.join(source, rel)).st_mode)
        except OSError:
            continue  # gone: deleted by name like any other path
        if rel and rules.retyped(rel, is_dir):
            out.add(rel.rpartition(b"/")[0])
    return out


def _maybe_dir(source: bytes, rel: bytes) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(os.path.join(source, rel)).st_mode)
    except OSError:
        return True  # gone meanwhile: it may have been a directory
