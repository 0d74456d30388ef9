"""Command mode: user actions per change, run in a child process per batch.

Two layers, as Lsyncd has shell and Lua:

* **argv templates** in the config (``on_create``, ``on_modify``,
  ``on_delete``, ``on_move``, ``on_startup``): lists of strings, run
  directly with ``execve`` — never through a shell — after replacing these
  placeholders inside each element:

  ==============  ======================================================
  ``{path}``      absolute path of the changed entry in the source
  ``{name}``      the same path relative to the source root
  ``{source}``    the source root
  ``{target}``    the target as written in the config ("" if none)
  ``{from}``      ``on_move``: absolute old path
  ``{to}``        ``on_move``: absolute new path
  ``{kind}``      ``create``, ``modify``, ``delete``, ``move`` or ``startup``
  ``{sync}``      the sync's name
  ==============  ======================================================

  A file name is always one argv element, whatever bytes it holds: a name
  like ``$(touch pwned)`` is passed as those characters and runs nothing.

* **a Python class** (``action = "package.module:Class"``), importable by
  the daemon's interpreter: see :class:`Action` for the API.

Semantics: each batch runs in a fresh child process (so a crashing action
cannot take the syncer down, and a hung one is killed with its group).
Moves are reported first, in order, then new subtrees, then paths: an entry
that exists is ``create`` if it appeared since the last batch, else
``modify``; one that is gone is ``delete`` (unless it appeared and vanished
within the batch, which reports nothing). With ``on_move`` configured the
two ends of a reported rename do not also fire create/delete. A startup or
after lost events, ``on_startup`` runs once (with ``{path}`` = the source).
The first failing action (non-zero exit or an exception) fails the batch,
which is retried with backoff: **actions must be idempotent**, since a
retried batch runs its earlier actions again.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys

import msgpack

from syncsup import config as cfg
from syncsup.dirfd import lstat_below, walk_below
from syncsup.proto import Changes, from_wire

__all__ = ["Action", "ActionError", "TemplateAction", "load_action", "run_batch"]


class ActionError(RuntimeError):
    """An action failed; the message says which and why."""


class Action:
    """Base class of Python actions. Subclass it and override what you need.

    The constructor gets the :class:`syncsup.config.Sync` and the
    :class:`syncsup.config.Target`. Paths are ``bytes``, relative to the
    source root (``b""`` is the root). Raise any exception to fail the batch.
    """

    def __init__(self, sync: cfg.Sync, target: cfg.Target) -> None:
        self.sync = sync
        self.target = target

    def on_startup(self) -> None:
        """The whole tree may have changed (startup, lost events)."""

    def on_create(self, path: bytes) -> None:
        """``path`` appeared (created or moved in from outside)."""

    def on_modify(self, path: bytes) -> None:
        """``path`` changed (content or attributes)."""

    def on_delete(self, path: bytes) -> None:
        """``path`` is gone."""

    def on_move(self, src: bytes, dst: bytes) -> None:
        """``src`` was renamed to ``dst`` inside the tree."""

    def handles_moves(self) -> bool:
        """Whether on_move is meaningful (else a move is delete + create)."""
        return type(self).on_move is not Action.on_move


class TemplateAction(Action):
    """Runs the argv templates of the config."""

    def _run(self, kind: str, template: tuple[str, ...], **values: bytes) -> None:
        if not template:
            return
        fields: dict[str, bytes] = {
            "source": os.fsencode(self.sync.source), "target": os.fsencode(self.target.path),
            "sync": self.sync.name.encode(), "kind": kind.encode(), **values,
        }
        argv = [_fill(arg, fields) for arg in template]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False)
        except OSError as exc:
            raise ActionError(f"on_{kind}: cannot run {template[0]!r}: {exc.strerror}") from None
        if proc.returncode != 0:
            raise ActionError(f"on_{kind} exited with {proc.returncode} "
                              f"for {values.get('name', b'')!r}")

    def _abs(self, rel: bytes) -> bytes:
        root = os.fsencode(self.sync.source)
        return os.path.join(root, rel) if rel else root

    def on_startup(self) -> None:
        self._run("startup", self.sync.commands.on_startup, path=self._abs(b""), name=b"")

    def on_create(self, path: bytes) -> None:
        self._run("create", self.sync.commands.on_create, path=self._abs(path), name=path)

    def on_modify(self, path: bytes) -> None:
        self._run("modify", self.sync.commands.on_modify, path=self._abs(path), name=path)

    def on_delete(self, path: bytes) -> None:
        self._run("delete", self.sync.commands.on_delete, path=self._abs(path), name=path)

    def on_move(self, src: bytes, dst: bytes) -> None:
        self._run("move", self.sync.commands.on_move, path=self._abs(dst), name=dst,
                  **{"from": self._abs(src), "to": self._abs(dst)})

    def handles_moves(self) -> bool:
        return bool(self.sync.commands.on_move)


_PLACEHOLDER = re.compile(rb"\{([a-z]+)\}")


def _fill(arg: str, fields: dict[str, bytes]) -> bytes:
    """Replace ``{placeholder}`` in one argv element, in a single pass over
    the template: a substituted value is never scanned again, so a file named
    ``{path}{name}`` stays that name. Bytes in, bytes out."""
    return _PLACEHOLDER.sub(lambda m: fields.get(m.group(1).decode(), m.group(0)),
                            os.fsencode(arg))


def load_action(sync: cfg.Sync, target: cfg.Target) -> Action:
    if sync.commands.action is None:
        return TemplateAction(sync, target)
    module_name, _, class_name = sync.commands.action.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Action)):
        raise ActionError(f"{sync.commands.action} is not a subclass of syncsup Action")
    return cls(sync, target)


def run_batch(action: Action, changes: Changes) -> None:
    """Report one batch to ``action`` in the documented order.

    The source is read through descriptors (:mod:`syncsup.dirfd`): a
    directory swapped for a symlink is an entry of its own, never a way out
    of the source, so no hook ever runs for a file outside it."""
    root_fd = os.open(action.sync.source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _report(action, changes, root_fd)
    finally:
        os.close(root_fd)


def _report(action: Action, changes: Changes, root_fd: int) -> None:
    skip: set[bytes] = set()
    if action.handles_moves():
        for src, dst in changes.moves:
            action.on_move(src, dst)
            skip.update((src, dst))
    for tree in sorted(changes.trees | changes.verify | changes.prove):
        if tree == b"":
            action.on_startup()
            continue
        for rel in walk_below(root_fd, tree):
            action.on_create(rel)
            skip.add(rel)
        skip.add(tree)
    for path in sorted(changes.paths):
        if path in skip:
            continue
        if lstat_below(root_fd, path) is not None:
            (action.on_create if path in changes.created else action.on_modify)(path)
        elif path not in changes.created:
            action.on_delete(path)


def main(argv: list[str]) -> int:
    config_path, sync_name, target_index, batch_file = argv
    conf = cfg.load_for_child(config_path)
    try:
        sync = conf.sync(sync_name)
    except KeyError:
        print(f"syncsup: sync {sync_name!r} is no longer in {config_path}", file=sys.stderr)
        return cfg.EX_CONFIG
    with open(batch_file, "rb") as fh:
        doc = msgpack.unpackb(fh.read(), raw=False)
    changes = from_wire(Changes, doc["changes"])
    try:
        run_batch(load_action(sync, sync.targets[int(target_index)]), changes)
    except Exception as exc:
        print(f"action failed: {exc}", file=sys.stderr)
        return 1
    return 0
