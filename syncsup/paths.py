"""Comparing path strings, once: is this path the other one or below it.

Only for checks on configuration (overlapping targets, a home inside ROOT);
nothing is ever opened by a path checked here (see :mod:`syncsup.dirfd`).
Both paths must already be absolute and normalized (``realpath`` or
``normpath``): ``/a/b`` is within ``/a``, ``/ab`` is not.
"""

from __future__ import annotations

__all__ = ["is_within", "relative_to"]


def is_within(path: str, root: str) -> bool:
    """Is ``path`` equal to ``root`` or below it?"""
    return path == root or path.startswith(root.rstrip("/") + "/")


def relative_to(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` ("" for ``root`` itself), or None if it
    is not within it."""
    if path == root:
        return ""
    if not is_within(path, root):
        return None
    return path[len(root.rstrip("/")) + 1:]
