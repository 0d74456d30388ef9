#!/usr/bin/env python3
"""The differential test's long run: many seeds, every mode, both rule sets.

    python3 bench/differential.py                       # 20 seeds x 8 cases
    python3 bench/differential.py --seeds 5 --rounds 3  # shorter
    python3 bench/differential.py --first 500 --only direct-local-plain

Each case is the same as in tests/integration/test_differential.py: a
seeded churn (tests/helpers/rules_churn.py) makes files, symlinks and
directories and renames them into, out of and between names excluded by the
sync's ``exclude``, ``exclude_from`` and ``filter`` rules, in rounds; after
each round the target must become byte for byte what ``rsync -a --delete``
with the same rules makes of the source in a fresh directory. Cases:
``rsync``, ``rsyncssh`` and ``direct`` modes, local targets and targets over
a private sshd on loopback (with an agent there), plain excludes (the agent
takes small changes) and filter rules (rsync does all).

A seed that does not converge is printed with the differences and the
daemon's last log lines, and its directory is kept; the exit status is the
number of failed runs (0: all exact). Nothing here is timed: a run only
has to converge within ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# ``python3 bench/differential.py`` puts bench/ first on sys.path: use the
# repository root instead, so that ``tests.helpers`` imports as a package.
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "bench":
    sys.path[0] = str(REPO)
elif str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.helpers.daemon import Daemon  # noqa: E402
from tests.helpers.oracle import wait_like_oracle  # noqa: E402
from tests.helpers.procs import assert_no_leftovers  # noqa: E402
from tests.helpers.rules_churn import FILTER_RULES, PLAIN_RULES, RulesChurn, RuleSet  # noqa: E402
from tests.helpers.sshd import Sshd  # noqa: E402

CASES: list[tuple[str, str, RuleSet]] = [
    (mode, where, rules) for mode, where in (("rsync", "local"), ("rsync", "ssh"),
                                             ("rsyncssh", "ssh"), ("direct", "local"))
    for rules in (PLAIN_RULES, FILTER_RULES)]


def case_name(mode: str, where: str, rules: RuleSet) -> str:
    return f"{mode}-{where}-{rules.name}"


def target_command(tmp: Path) -> Path:
    """This checkout's ``syncsup-target``, whatever the remote PATH holds."""
    wrapper = tmp / "syncsup-target-wrapper"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH='{REPO}'; export PYTHONPATH\n"
                       f"exec '{sys.executable}' -P -m syncsup.target \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def run_one(base: Path, sshd: Sshd | None, mode: str, where: str, rules: RuleSet, seed: int,
            rounds: int, ops: int, timeout: float) -> str | None:
    """One seed of one case; None if exact after every round, else why not."""
    tmp = base / f"{case_name(mode, where, rules)}-{seed}"
    tmp.mkdir()
    src, dst = tmp / "src", tmp / "dst"
    src.mkdir()
    dst.mkdir()
    churn = RulesChurn(src, seed)
    churn.populate()
    sync: dict[str, object] = {"name": "www", "source": str(src), "mode": mode, "delay": 0.2,
                               **rules.config(tmp)}
    if where == "ssh":
        assert sshd is not None
        sync["targets"] = [sshd.target(dst)]
        sync["ssh"] = {**sshd.ssh_config(), "target_command": str(target_command(tmp))}
    else:
        sync["targets"] = [str(dst)]
    d = Daemon(tmp, {"settings": {"state_dir": str(tmp / "state")}, "sync": [sync]})
    args = rules.rsync_args(tmp)
    try:
        d.start()
        for rnd in range(rounds + 1):
            if rnd:
                churn.run(ops, max_sleep=0.02)
            wait_like_oracle(src, dst, tmp / "oracle", args, timeout=timeout,
                             on_timeout=lambda r=rnd: f"round {r}\n{d.log_tail(30)}")
        d.stop()
        assert_no_leftovers(tmp)
    except AssertionError as exc:
        return str(exc)
    finally:
        if d.running:
            d._kill_hard()
    shutil.rmtree(tmp)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="seeds per case (default 20)")
    ap.add_argument("--first", type=int, default=1000, help="first seed (default 1000)")
    ap.add_argument("--rounds", type=int, default=5, help="churn rounds per seed (default 5)")
    ap.add_argument("--ops", type=int, default=60, help="operations per round (default 60)")
    ap.add_argument("--timeout", type=float, default=150.0,
                    help="seconds a round may take to converge (default 150)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="cases to run, e.g. direct-local-plain rsyncssh-ssh-filter")
    opts = ap.parse_args(argv)
    cases = [c for c in CASES if opts.only is None or case_name(*c) in opts.only]
    if not cases:
        ap.error(f"no such case; cases: {' '.join(case_name(*c) for c in CASES)}")
    base = Path(tempfile.mkdtemp(prefix="syncsup-differential-"))
    sshd = None
    if any(where == "ssh" for _m, where, _r in cases):
        sshd = Sshd(base / "sshd")
        sshd.start()
    failed = 0
    started = time.monotonic()
    try:
        for seed in range(opts.first, opts.first + opts.seeds):
            for mode, where, rules in cases:
                why = run_one(base, sshd, mode, where, rules, seed, opts.rounds, opts.ops,
                              opts.timeout)
                name = f"{case_name(mode, where, rules)} seed {seed}"
                if why is None:
                    print(f"ok    {name}", flush=True)
                else:
                    failed += 1
                    print(f"FAIL  {name}\n{why}\n", flush=True)
    finally:
        if sshd is not None:
            sshd.close()
    print(f"{failed} failed of {opts.seeds * len(cases)} runs in "
          f"{time.monotonic() - started:.0f}s; kept under {base}" if failed else
          f"all {opts.seeds * len(cases)} runs exact in {time.monotonic() - started:.0f}s")
    if not failed:
        shutil.rmtree(base, ignore_errors=True)
    return min(failed, 100)


if __name__ == "__main__":
    sys.exit(main())
