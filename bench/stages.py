#!/usr/bin/env python3
"""Where the milliseconds of one small local change go, stage by stage.

    python3 bench/stages.py              # 50 files
    python3 bench/stages.py --files 20

syncsup (as shipped: the agent) mirrors a source to a local target with
delay 0.  First ``--files`` small files are written one at a time, each
waited for on the target, without tracing: close → arrival as the latency
scenario measures it.  Then ``strace -f -ttt -T -y`` is attached to the
three children (``syncsup.watcher``, ``syncsup.collator``,
``syncsup.syncer``), the same number of files are written, and each file's
path through the daemon is read back from the three traces:

1. **inotify wake**: the file closed (the bench's clock) → the watcher's
   ``read`` of the inotify descriptor returns;
2. **watcher**: → its ZeroMQ I/O thread sends the ``EVENTS`` message;
3. **hop to the collator**: → the collator's I/O thread receives it;
4. **collator**: → the ``BATCH`` leaves for the syncer (the journal upsert,
   written to SQLite's WAL, is the "journal" part of it; the watcher's
   ``ACK`` goes out first);
5. **hop to the syncer**: → the syncer's I/O thread receives the batch;
6. **syncer to visible**: → ``renameat`` puts the file in place (read the
   source through descriptors, write an ``O_TMPFILE``, ``linkat``,
   ``renameat``);
7. **fsync**: the ``fsync`` calls of the commit (the file and its
   directory), which come after the file is visible and before the batch
   is acknowledged;
8. **visible → DONE sent**: the rest of the syncer's work until its answer
   leaves.

strace stops every traced call of the three processes (``--seccomp-bpf``
cannot be used with ``-p``), so traced figures are larger than untraced
ones; the untraced close → arrival is printed beside them.  All clocks are
the machine's wall clock (``time.time()`` and strace's ``-ttt``).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "bench":
    sys.path[0] = str(REPO)
elif str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.context import Ctx, Session  # noqa: E402
from bench.converge import ready  # noqa: E402
from bench.iotrace import STRACE  # noqa: E402
from bench.machine import filesystem  # noqa: E402
from bench.tools import Syncsup  # noqa: E402
from bench.trees import rm_rf  # noqa: E402

ROLES = ("watcher", "collator", "syncer")
TRACE = "trace=read,recvfrom,sendto,pwrite64,linkat,renameat,renameat2,fsync,fdatasync"
_LINE = re.compile(r"^\d+\s+(?P<t>\d+\.\d+) (?P<call>\w+)\((?P<args>.*)\) = (?P<rc>-?\d+)"
                   r"(?:.*<(?P<dur>\d+\.\d+)>)?$")
STAGES = (
    ("inotify wake", "close → watcher's read of inotify returns"),
    ("watcher", "→ EVENTS sent"),
    ("hop to the collator", "→ EVENTS received"),
    ("collator", "→ BATCH sent (journal upsert, ACK, batch)"),
    ("  of which the journal", "EVENTS received → last WAL write"),
    ("hop to the syncer", "→ BATCH received"),
    ("syncer to visible", "→ renameat (read source, O_TMPFILE, linkat, renameat)"),
    ("fsync", "file + directory, after renameat"),
    ("visible → DONE sent", "the rest of the syncer's work"),
    ("close → visible", "the sum of the stages before fsync"),
    ("close → DONE sent", "the change acknowledged"),
)

Call = tuple[float, str, str, float]  # time, name, arguments, duration


def parse(path: Path) -> list[Call]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if m:
            out.append((float(m["t"]), m["call"], m["args"], float(m["dur"] or 0)))
    return out


def first(calls: list[Call], after: float, name: str, needle: str = "") -> Call | None:
    for c in calls:
        if c[0] >= after and c[1] == name and needle in c[2]:
            return c
    return None


def stages(close: float, rel: str, tr: dict[str, list[Call]]) -> dict[str, float] | None:
    """The stages of the file ``rel`` closed at ``close``, in ms (None if a
    step is missing from the traces)."""
    w, c, s = tr["watcher"], tr["collator"], tr["syncer"]
    base = os.path.basename(rel)
    w_read = first(w, close - 0.001, "read", "inotify")
    w_send = w_read and first(w, w_read[0], "sendto", "EVENTS")
    c_recv = w_send and first(c, w_send[0], "recvfrom", "EVENTS")
    c_batch = c_recv and first(c, c_recv[0], "sendto", "BATCH")
    s_recv = c_batch and first(s, c_batch[0], "recvfrom", "BATCH")
    s_link = s_recv and first(s, s_recv[0], "linkat", f'".syncsup.{base}.')
    s_ren = s_link and (first(s, s_link[0], "renameat", f'"{base}"')
                        or first(s, s_link[0], "renameat2", f'"{base}"'))
    s_done = s_ren and first(s, s_ren[0], "sendto", "DONE")
    if not (w_read and w_send and c_recv and c_batch and s_recv and s_ren and s_done):
        return None
    wal = [x[0] for x in c if c_recv[0] <= x[0] <= c_batch[0] and x[1] == "pwrite64"
           and "-wal>" in x[2]]
    fsyncs = sum(x[3] for x in s if s_ren[0] <= x[0] <= s_done[0] and x[1] in
                 ("fsync", "fdatasync"))
    ms = 1000.0
    return {
        "inotify wake": (w_read[0] - close) * ms,
        "watcher": (w_send[0] - w_read[0]) * ms,
        "hop to the collator": (c_recv[0] - w_send[0]) * ms,
        "collator": (c_batch[0] - c_recv[0]) * ms,
        "  of which the journal": ((max(wal) if wal else c_recv[0]) - c_recv[0]) * ms,
        "hop to the syncer": (s_recv[0] - c_batch[0]) * ms,
        "syncer to visible": (s_ren[0] - s_recv[0]) * ms,
        "fsync": fsyncs * ms,
        "visible → DONE sent": (s_done[0] - s_ren[0]) * ms - fsyncs * ms,
        "close → visible": (s_ren[0] - close) * ms,
        "close → DONE sent": (s_done[0] - close) * ms,
    }


def write_and_wait(t: Syncsup, src: Path, dst: Path, rel: str) -> tuple[float, float]:
    """Write ``rel``; (wall time of the close, seconds until it arrived)."""
    data = rel.encode() + b"\n" + os.urandom(40).hex().encode()
    with open(src / rel, "wb") as f:
        f.write(data)
    close, t0 = time.time(), time.perf_counter()
    deadline = t0 + 30
    while True:
        try:
            with open(dst / rel, "rb") as f:
                if f.read() == data:
                    return close, time.perf_counter() - t0
        except FileNotFoundError:
            pass
        if time.perf_counter() > deadline:
            t.check()
            raise RuntimeError(f"{rel} never arrived")
        time.sleep(0.0005)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--dir", type=lambda d: Path(d).resolve(), default=Path("/tmp"),
                    metavar="DIR", help="where the trees go (default /tmp)")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="ssb-stages-", dir=args.dir))
    print(f"trees on {filesystem(base)}", flush=True)
    ctx = Ctx("smoke", base)
    src, dst = base / "src", base / "dst"
    (src / "s").mkdir(parents=True)
    tracers: list[subprocess.Popen[bytes]] = []
    try:
        with Session(ctx, "syncsup", base / "w", src, [dst]) as t:
            assert isinstance(t, Syncsup)
            ready(t, src, [dst], 60)
            t.expect_transport()
            untraced = []
            for i in range(args.files):
                untraced.append(write_and_wait(t, src, dst, f"s/u{i:05d}")[1] * 1000)
                time.sleep(0.05)
            for role in ROLES:
                tracers.append(subprocess.Popen(
                    [STRACE, "-f", "-ttt", "-T", "-y", "-qq", "-e", TRACE, "-e", "signal=none",
                     "-o", str(base / f"{role}.trace"), "-p", str(t.component_pid(role))],
                    stdin=subprocess.DEVNULL))
            time.sleep(1.0)
            closes = []
            for i in range(args.files):
                rel = f"s/f{i:05d}"
                closes.append((write_and_wait(t, src, dst, rel)[0], rel))
                time.sleep(0.1)
            time.sleep(0.3)
            for p in tracers:
                p.send_signal(signal.SIGINT)
                p.wait(30)
            tracers.clear()
        traces = {role: parse(base / f"{role}.trace") for role in ROLES}
        rows = [r for close, rel in closes if (r := stages(close, rel, traces)) is not None]
    finally:
        for p in tracers:
            p.send_signal(signal.SIGINT)
            p.wait(30)
        ctx.close()
        rm_rf(base)
    print(f"{len(rows)} of {args.files} files traced through every stage; ms, median (p90):\n")
    print("| stage | what | median ms | p90 ms |")
    print("|---|---|---:|---:|")
    for name, what in STAGES:
        xs = sorted(r[name] for r in rows)
        if xs:
            p90 = xs[min(len(xs) - 1, int(0.9 * len(xs)))]
            print(f"| {name} | {what} | {statistics.median(xs):.2f} | {p90:.2f} |")
    print(f"| untraced close → arrival | as the latency scenario, {len(untraced)} files | "
          f"{statistics.median(untraced):.2f} | "
          f"{sorted(untraced)[min(len(untraced) - 1, int(0.9 * len(untraced)))]:.2f} |")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
