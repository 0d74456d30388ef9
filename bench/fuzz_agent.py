#!/usr/bin/env python3
"""Long runs of the agent fuzzer (tests/helpers/agent_fuzz.py):

    python3 bench/fuzz_agent.py --requests 100000

Generated sessions against the real ``syncsup-target ROOT`` (as root, in
its forced-command form) in throw-away ROOTs under $TMPDIR, until at least
``--requests`` requests were sent. Prints the requests, sessions (agent
processes), worlds' steps by kind, and every escape; exits 1 on an escape.
The normal suite runs a short version (tests/integration/test_agent_fuzz.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# ``python3 bench/fuzz_agent.py`` puts bench/ first on sys.path: the
# repository root instead, so that ``tests.helpers`` imports as a package.
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "bench":
    sys.path[0] = str(REPO)
elif str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.helpers import agent_fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000,
                        help="stop once this many requests were sent (default 100000)")
    parser.add_argument("--steps", type=int, default=100, help="steps per world")
    parser.add_argument("--examples", type=int, default=10, help="worlds per Hypothesis run")
    args = parser.parse_args()
    start = time.monotonic()
    stats = agent_fuzz.STATS
    failed = False
    try:
        for stats in agent_fuzz.iter_runs(args.requests, args.steps, args.examples):
            print(f"{time.monotonic() - start:7.0f} s: {stats.requests} requests, "
                  f"{stats.sessions} sessions", flush=True)
    except AssertionError as exc:
        failed = True
        print(f"ESCAPE: {exc}", file=sys.stderr)
    print(f"requests: {stats.requests}\nsessions: {stats.sessions}\n"
          f"sessions ended by a fatal answer to garbage: {stats.fatal}\n"
          f"sessions ended by the agent's fixed line: {stats.fixed_exits}\n"
          f"answers ok:false: {stats.refused}\n"
          f"steps: {dict(sorted(stats.steps.items()))}\n"
          f"escapes: {len(stats.escapes)}\n"
          f"seconds: {time.monotonic() - start:.0f}")
    for text in stats.escapes:
        print(f"  {text[:2000]}")
    return 1 if failed or stats.escapes else 0


if __name__ == "__main__":
    sys.exit(main())
