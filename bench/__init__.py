"""The syncsup-against-Lsyncd benchmark; ``python3 bench/run.py --help``.

Layout (each module's docstring says why it is the way it is):

- ``run.py``        the command line: runs the scenarios, prints the table, writes results
- ``scenarios/``    one module per scenario: what it does, its figures and their goals
- ``tools.py``      syncsup (agent, and rsync only) and Lsyncd: configs, start, crash check, stop
- ``context.py``    sizes of the smoke and full modes, the shared context, sessions
- ``converge.py``   waiting until targets are identical to their sources
- ``trees.py``      workload files and the exact (rsync) comparison
- ``procs.py``      CPU (ticks and schedstat) and memory (RSS, PSS) of a process tree
- ``iotrace.py``    bytes a process tree reads from given trees (strace), for recovery
- ``stages.py``     a command of its own: each stage of one local change, timed with strace
- ``differential.py`` a command of its own: the mirror under filter rules against rsync, many seeds
- ``report.py``     medians, goals, the terminal and Markdown tables, result files
- ``machine.py``    the machine a run happened on; Lsyncd installed when missing

Shared with the integration tests (imported from ``tests/helpers``): the
throw-away sshd, syncsup's config tables and environment, and the
leftover-process checks.
"""
