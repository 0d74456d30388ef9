"""What every test shares: an optional report of each test's cost.

With ``SYNCSUP_TEST_COST=DIR`` set, each pytest worker appends one line per
test to ``DIR/cost-WORKER.tsv``: the test's id, the CPU seconds of the test
process itself, the CPU seconds of the processes it reaped (daemons, rsync,
sshd: a process is counted when its parent waits for it, so a module's
shared fixture lands on the test that ends it), and the wall seconds.

Why it exists: the suite's time on a two-core machine is bound by CPU as
much as by waiting, and a test's wall time alone hides what it costs the
tests running beside it. ``sort -t$'\\t' -k3 -gr DIR/cost-*.tsv`` lists the
tests whose processes cost the most; docs/testing.md says how the suite stays fast.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPORT = os.environ.get("SYNCSUP_TEST_COST")


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, reaped.ru_utime + reaped.ru_stime


if _REPORT:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
        own0, reaped0 = _cpu()
        t0 = time.monotonic()
        yield
        own1, reaped1 = _cpu()
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        out = Path(_REPORT) / f"cost-{worker}.tsv"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as fh:
            fh.write(f"{item.nodeid}\t{own1 - own0:.2f}\t{reaped1 - reaped0:.2f}\t"
                     f"{time.monotonic() - t0:.2f}\n")
