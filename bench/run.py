#!/usr/bin/env python3
"""syncsup against Lsyncd, side by side, on identical workloads.

    python3 bench/run.py                 # full run, 3 runs per scenario (syncs: 1)
    python3 bench/run.py --smoke         # small sizes, 1 run, a few minutes (CI)
    python3 bench/run.py --runs 1 --only latency burst
    python3 bench/stages.py              # where one change's milliseconds go (strace)

Each scenario runs syncsup (``python3 -m syncsup start CONFIG``) and Lsyncd
(``lsyncd -nodaemon CONFIG``) back to back on the same workload, with the same
settings (delay 0, rsync archive mode, same sources and targets), checks that
every target is identical to its source (``rsync -n --checksum --delete``
itemizing nothing: type, mode, owner, content, symlink targets), and prints
the median of every figure for each tool, the ratio syncsup / Lsyncd and
the goal with PASS/MISS.  syncsup runs as shipped (small changes through
its agent); the latency, burst, churn and fan-out scenarios also run it
with ``agent_max_size = 0`` (rsync for everything), in a column and a ratio
of its own.

Results:

* a full run (no ``--smoke``) writes ``bench/results/latest.json`` and
  ``latest.md``, and also ``full.*`` when every scenario ran (a partial run
  with ``--only`` does not replace the last complete table);
* a smoke run writes ``smoke.json`` and ``smoke.md`` under
  ``$TMPDIR/syncsup-bench/`` (``/tmp`` by default) and prints the path: CI
  runs it after the tests, and it must not leave the git tree dirty.

The exit status is non-zero only when a tool crashed, did not converge or
left a process behind; speed never fails the run.

Lsyncd is installed with apt-get when it is missing.  The ssh scenarios use
a throw-away sshd on 127.0.0.1 (``tests/helpers/sshd.py``).  The modules:

* :mod:`bench.scenarios` one module per scenario (what runs, what its
  figures are called, their goals);
* :mod:`bench.tools` the two daemons, their configs, start and stop;
* :mod:`bench.procs` CPU and memory of a process tree from ``/proc``;
* :mod:`bench.trees` / :mod:`bench.converge` workload files and waiting
  until targets are identical;
* :mod:`bench.report` medians, goals and tables; :mod:`bench.machine` the
  machine's description;
* :mod:`bench.iotrace` bytes read from the trees, counted with strace
  (the recovery scenario); ``bench/stages.py`` a separate command timing
  each stage of one change.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parents[1]
# ``python3 bench/run.py`` puts bench/ itself first on sys.path, which would make
# its modules importable under a second, top-level name: use the repository
# root instead, so that ``bench`` and ``tests.helpers`` import as packages.
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "bench":
    sys.path[0] = str(REPO)
elif str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import scenarios  # noqa: E402
from bench.context import Ctx  # noqa: E402
from bench.machine import check_prerequisites, machine  # noqa: E402
from bench.report import Raw, summarize, table_md, table_text, write_results  # noqa: E402
from bench.tools import LIVE, BenchFailure, Syncsup  # noqa: E402
from bench.trees import rm_rf  # noqa: E402
from tests.helpers.procs import kill_leftovers  # noqa: E402

RESULTS = REPO / "bench" / "results"


def smoke_results_dir() -> Path:
    """Where a smoke run's results go: outside the work tree."""
    return Path(tempfile.gettempdir()) / "syncsup-bench"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="small sizes, 1 run (CI)")
    ap.add_argument(
        "--runs", type=int, default=None, help="runs per scenario (default 3, syncs 1; smoke 1)"
    )
    ap.add_argument(
        "--only",
        nargs="+",
        choices=scenarios.NAMES,
        metavar="SCENARIO",
        help=f"run only these: {' '.join(scenarios.NAMES)}",
    )
    ap.add_argument("--fanout", type=int, nargs="+", metavar="K",
                    help="fan-out: numbers of local targets (default 8 32; smoke 8; 0: none)")
    ap.add_argument("--fanout-ssh", type=int, nargs="+", default=[], metavar="K",
                    help="fan-out: numbers of ssh targets (default none)")
    ap.add_argument("--fanout-files", type=int, help="fan-out: files in the burst")
    ap.add_argument("--fanout-kb", type=int, help="fan-out: KiB per file (default ~100 bytes)")
    ap.add_argument("--fanout-rest", type=int, metavar="S",
                    help="fan-out over ssh: also the PSS per target S seconds after convergence "
                         "(past [sync.ssh] master_idle, 300 s: the masters closed)")
    ap.add_argument("--fanout-delay", type=float, metavar="S",
                    help="every sync's delay in the fan-out scenario (default 0, as the others)")
    ap.add_argument("--max-processes", type=int, metavar="N",
                    help="syncsup's [settings] max_processes (default: its own)")
    ap.add_argument("--tools", nargs="+", metavar="TOOL",
                    help="run only these tools: syncsup syncsup-rsync lsyncd")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for inspection")
    ap.add_argument("--dir", type=lambda d: Path(d).resolve(), default=Path("/tmp"), metavar="DIR",
                    help="where the run's trees and tool state go (default /tmp): the "
                         "filesystem weighs on every figure and is recorded")
    return ap.parse_args(argv)


def runs_for(scn: str, args: argparse.Namespace) -> int:
    """``--runs`` if given; else 1 in smoke mode; else 3, or the scenario's cap."""
    if args.runs:
        return int(args.runs)
    if args.smoke:
        return 1
    cap = scenarios.REGISTRY[scn].default_runs
    return min(3, cap) if cap else 3


def describe_runs(runs: dict[str, int]) -> str:
    """"3 runs", or "3 runs (syncs: 1)" when some scenario runs a different number."""
    counts = sorted(set(runs.values()), key=list(runs.values()).count, reverse=True)
    main = counts[0] if counts else 0
    text = f"{main} run" + ("" if main == 1 else "s")
    odd = [f"{scn}: {n}" for scn, n in runs.items() if n != main]
    return text + (f" ({', '.join(odd)})" if odd else "")


def run_all(ctx: Ctx, selected: list[str], args: argparse.Namespace,
            raw: Raw, failures: list[str]) -> None:
    """Every selected scenario, every run, each of its tools (who goes first
    rotates from run to run)."""
    for scn in selected:
        runs = runs_for(scn, args)
        tools = tuple(t for t in scenarios.REGISTRY[scn].tools
                      if not args.tools or t in args.tools)
        for run in range(runs if tools else 0):
            first = run % len(tools)
            for tool in tools[first:] + tools[:first]:
                t0 = time.monotonic()
                try:
                    res = scenarios.REGISTRY[scn].run(ctx, tool, run)
                except BenchFailure as e:
                    msg = f"{scn} run {run + 1} {tool}: {e}"
                    failures.append(msg)
                    print(f"  FAIL {msg}", flush=True)
                    continue
                except Exception:
                    msg = f"{scn} run {run + 1} {tool}: error\n{traceback.format_exc()}"
                    failures.append(msg)
                    print(f"  FAIL {msg}", flush=True)
                    continue
                for k, v in res.items():
                    raw.setdefault((scn, k), {}).setdefault(tool, []).append(v)
                shown = ", ".join(f"{k}={v:.3g}" for k, v in res.items())
                print(
                    f"  {scn:8s} run {run + 1}/{runs} {tool:13s} "
                    f"{time.monotonic() - t0:5.1f}s  {shown}",
                    flush=True,
                )


def cleanup(ctx: Ctx, base: Path, keep: bool, failures: list[str]) -> None:
    """Stop whatever still runs; any process still naming the temp dir is a failure."""
    for t in list(LIVE):
        t.stop()
    ctx.close()
    left = kill_leftovers(base)
    for pid, cmd in left:
        print(f"  ! leftover pid {pid}: {cmd[:200]!r}: SIGKILL")
    if left:
        failures.append(f"processes left behind: {[p for p, _ in left]}")
    if keep:
        print(f"  kept {base}")
    else:
        rm_rf(base)


def _interrupt(*_: Any) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    selected = args.only or list(scenarios.DEFAULT)
    check_prerequisites()

    if not args.dir.is_dir():
        sys.exit(f"bench: --dir {args.dir}: not a directory")
    if os.statvfs(args.dir).f_flag & os.ST_NOEXEC:
        # the ssh scenarios run a script from the tool's work directory
        sys.exit(f"bench: --dir {args.dir}: mounted noexec; choose another filesystem")
    base = Path(tempfile.mkdtemp(prefix="ssb-", dir=args.dir))
    ctx = Ctx(mode, base)
    overrides = {"fanout": args.fanout, "fanout_ssh": args.fanout_ssh,
                 "fanout_files": args.fanout_files, "fanout_kb": args.fanout_kb,
                 "fanout_rest": args.fanout_rest, "fanout_delay": args.fanout_delay}
    Syncsup.max_processes = args.max_processes
    ctx.size = {**ctx.size, **{k: v for k, v in overrides.items() if v}}
    mach = machine(base)
    started = _dt.datetime.now(_dt.UTC)
    runs = {scn: runs_for(scn, args) for scn in selected}
    runs_txt = describe_runs(runs)
    print(f"syncsup vs Lsyncd — {mode} run, {runs_txt} per scenario, in {base}")
    print(
        f"  {mach['cores']} cores, {mach['memory_gb']} GB, kernel {mach['kernel']}, "
        f"{mach['rsync']}, {mach['lsyncd']}, load {' '.join(mach['loadavg_at_start'])}"
    )
    print(f"  trees on {mach['filesystem']}")

    raw: Raw = {}
    failures: list[str] = []
    prev_handler = signal.signal(signal.SIGTERM, _interrupt)
    t_all = time.monotonic()
    try:
        for scn in selected:
            prepare = scenarios.REGISTRY[scn].prepare
            if prepare is not None:
                prepare(ctx, runs[scn])
        run_all(ctx, selected, args, raw, failures)
    except KeyboardInterrupt:
        failures.append("interrupted")
        print("  interrupted", flush=True)
    finally:
        signal.signal(signal.SIGTERM, prev_handler)
        cleanup(ctx, base, args.keep, failures)

    elapsed = time.monotonic() - t_all
    rows = summarize(raw, scenarios.describe, scenarios.sort_key)
    print()
    print(table_text(rows))
    print(f"\n{mode} run: medians of {runs_txt}; {elapsed:.0f}s in all")
    if failures:
        print(f"\n{len(failures)} failure(s):")
        for f in failures:
            print("  - " + f.splitlines()[0])

    doc = {
        "mode": mode,
        "runs": runs,
        "scenarios": selected,
        "date": started.isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "machine": mach,
        "sizes": ctx.size,
        "rows": rows,
        "failures": failures,
    }
    md = (
        f"{mode} run of {_dt.date.today().isoformat()}, {runs_txt} per scenario (medians), "
        f"{mach['cores']} cores, {mach['memory_gb']} GB, kernel {mach['kernel']}, "
        f"{mach['rsync']}, {mach['lsyncd']}, syncsup {mach['syncsup_commit']}, "
        f"trees on {mach['filesystem']}\n\n"
        + table_md(rows)
        + "\n"
    )
    if args.smoke:
        paths = write_results(smoke_results_dir(), ["smoke"], doc, md)
    else:
        complete = set(scenarios.DEFAULT) <= set(selected)
        paths = write_results(RESULTS, ["latest", "full"] if complete else ["latest"], doc, md)
    print("results: " + ", ".join(str(p) for p in paths))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
