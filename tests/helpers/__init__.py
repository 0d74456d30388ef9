"""Shared helpers for syncsup integration tests.

- :mod:`tests.helpers.tree`   byte-exact tree snapshots, diffs, convergence polling
- :mod:`tests.helpers.churn`  seeded random operations on a live tree (hostile names included)
- :mod:`tests.helpers.sshd`   a throw-away sshd on 127.0.0.1 for ssh targets
- :mod:`tests.helpers.procs`  leftover-process checks
- :mod:`tests.helpers.toml`   minimal TOML rendering for test configs
- :mod:`tests.helpers.daemon` run ``python -m syncsup`` (start/stop/status/kill components)
"""
