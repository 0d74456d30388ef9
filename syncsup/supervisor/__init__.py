"""The supervisor: the ``syncsup start`` process.

It owns the lock on ``state_dir``, binds the control socket, has the
template (``template``) fork one collator, one syncer and one watcher for
all syncs, restarts them by :mod:`~syncsup.supervisor.policy`, kills the
silent ones, answers ``syncsup status`` from the children's parts, and on
SIGTERM stops everything in reverse order and exits 0.
"""

from syncsup.supervisor._supervisor import StartError, StartRefused, Supervisor

__all__ = ["StartError", "StartRefused", "Supervisor"]
