"""rsync exit codes, classified: what a transfer's outcome means for the journal.

=====  =======================================  ========
code   rsync's meaning                           class
=====  =======================================  ========
0      success                                   ok
24     some files vanished before transfer      ok (normal in a live tree: the
                                                 vanished path was, or will be,
                                                 reported as deleted)
1      syntax or usage error                     fatal
2      protocol incompatibility                  fatal
3      errors selecting input/output files      retry
4      requested action not supported           fatal
5      error starting client-server protocol    retry (an rsync daemon refused:
                                                 wrong password, unknown module;
                                                 reported, never done)
6      daemon unable to append to log file      fatal
10     error in socket I/O                       retry
11     error in file I/O (e.g. disk full)        retry
12     error in rsync protocol data stream      retry
13     errors with program diagnostics          fatal
14     error in IPC code                         retry
20     received SIGUSR1 or SIGINT                retry
21     some error returned by waitpid()         retry
22     error allocating core memory buffers     retry
23     partial transfer due to error            retry (and reported: files the
                                                 target refused are not done)
25     --max-delete limit stopped deletions     halt (no automatic retry: each
                                                 retry would delete max_delete
                                                 more; resync or resume after
                                                 looking)
30     timeout in data send/receive              retry
35     timeout waiting for daemon connection    retry
255    ssh failed (unreachable, auth refused)   retry
<0     killed by a signal                        retry
other  unknown                                   retry
=====  =======================================  ========

"fatal" stops only that target (it is retried every 5 minutes, and shown as
failed); "halt" stops it until ``syncsup resync`` or ``resume``; "retry"
backs off exponentially. Nothing but "ok" lets the journal forget.
"""

from __future__ import annotations

from syncsup.proto import Outcome

__all__ = ["Outcome", "classify"]


_OK = frozenset({0, 24})
_FATAL = frozenset({1, 2, 4, 6, 13})
_HALT = frozenset({25})


def classify(rc: int) -> Outcome:
    """The class of rsync exit code ``rc`` (negative: killed by signal -rc)."""
    if rc in _OK:
        return Outcome.OK
    if rc in _FATAL:
        return Outcome.FATAL
    if rc in _HALT:
        return Outcome.HALT
    return Outcome.RETRY
