"""The supervisor: the ``syncsup start`` process.

It owns the lock on ``state_dir``, binds the control socket, spawns one
collator, one syncer and one watcher per sync as fresh interpreters in their
own process groups, restarts them by :mod:`~syncsup.supervisor.policy`, kills
the silent ones, answers ``syncsup status``, and on SIGTERM stops everything
in reverse order and exits 0.
"""

from syncsup.supervisor._supervisor import StartError, Supervisor

__all__ = ["StartError", "Supervisor"]
