"""``syncsup status --relays``: the status of the syncsup daemons that run
onward from this daemon's relay targets (cascades).

A relay is a target host that runs its own syncsup with the received tree
as its source. Its lag to its own targets adds to ours to it, so the
source's operator wants both in one place. The relay's status is read
through the same ssh key and the same program that serves the mirror
(``syncsup-target ROOT status``): nothing new listens on the relay, and
behind a confined key the file served is the one the forced command names
(``--relay-status=FILE``), never one the request chooses. The answer is
bounded and must be one JSON object; it is shown, never acted on. A relay
may be hostile (its host is not ours): what it says is read up to
``MAX_ANSWER`` bytes (ssh is killed past it), parsed without NaN or
Infinity, checked field by field, and every string it supplies is shown
with its control characters replaced, so it cannot crash the command, fill
the memory or write to the operator's terminal.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from syncsup import config as cfg
from syncsup.text import printable

__all__ = ["MAX_ANSWER", "Relay", "ask_relays", "format_relays"]

MAX_ANSWER = 1024 * 1024
MAX_ERROR = 64 * 1024  # bytes of ssh's stderr read (its last line is shown)
TIMEOUT = 20.0  # seconds for one relay's answer (ssh's ConnectTimeout is 10)


def _bounded(argv: list[str], timeout: float) -> tuple[int | None, bytes, bytes]:
    """Run ``argv``; its return code (None: killed at ``timeout`` or past
    ``MAX_ANSWER``), at most ``MAX_ANSWER + 1`` bytes of its output and
    ``MAX_ERROR`` of its errors. A relay that streams without end is cut."""
    import selectors

    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map() and len(out) <= MAX_ANSWER:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(left):
                chunk = key.fileobj.read1(65536)  # type: ignore[union-attr]
                if not chunk:
                    sel.unregister(key.fileobj)
                elif key.data is out or len(err) < MAX_ERROR:
                    key.data.extend(chunk)
        unfinished = bool(sel.get_map())
    if unfinished or len(out) > MAX_ANSWER:
        proc.kill()
        proc.wait()
        return None, bytes(out[:MAX_ANSWER + 1]), bytes(err[:MAX_ERROR])
    try:
        rc = proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None, bytes(out), bytes(err[:MAX_ERROR])
    return rc, bytes(out), bytes(err[:MAX_ERROR])


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _number(value: object) -> float | None:
    """A finite number (never a boolean), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


@dataclass
class Relay:
    """One relay target and what it answered: ``status`` (the relay
    daemon's ``syncsup status --json``) or ``error``."""

    sync: str
    target: str
    status: dict[str, Any] | None = None
    age: float | None = None  # seconds since the relay wrote ``status``
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"sync": self.sync, "target": self.target, "status": self.status,
                "age": self.age, "error": self.error}


def status_argv(sync: cfg.Sync, target: cfg.Target) -> list[str]:
    """ssh and the request that asks ``target``'s syncsup-target for the
    relay's status (the path and program quoted for the remote shell)."""
    from syncsup.syncer.argv import ssh_argv

    program = "syncsup-target" if target.confined else sync.ssh.target_command
    command = f"{shlex.quote(program)} {shlex.quote(target.path)} status"
    return [*ssh_argv(sync), "--", target.login, command]


def ask(sync: cfg.Sync, target: cfg.Target, timeout: float = TIMEOUT) -> Relay:
    out = Relay(sync.name, target.spec)
    try:
        rc, stdout, stderr = _bounded(status_argv(sync, target), timeout)
    except OSError as exc:
        out.error = f"cannot run ssh: {printable(exc.strerror or exc)}"
        return out
    if rc is None:
        out.error = (f"an answer of more than {MAX_ANSWER} bytes" if len(stdout) > MAX_ANSWER
                     else f"no answer within {timeout:.0f}s")
        return out
    if rc != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        out.error = f"exit {rc}" + (f": {printable(lines[-1], 300)}" if lines else "")
        return out
    try:
        doc = json.loads(stdout, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        doc = None
    status = doc.get("status") if isinstance(doc, dict) else None
    age = _number(doc.get("age")) if isinstance(doc, dict) else None
    if not isinstance(status, dict) or not isinstance(status.get("syncs"), list) or (
            age is None):
        out.error = "the answer is not a syncsup status"
        return out
    out.status, out.age = status, age
    return out


def ask_relays(conf: cfg.Config) -> list[Relay]:
    """Every relay target of ``conf``, asked in turn."""
    return [ask(sync, t) for sync in conf.syncs for t in sync.targets
            if t.relay and t.is_remote]


def _rows(status: dict[str, Any]) -> list[tuple[str, str, int, float | None]]:
    rows = []
    for s in status.get("syncs", []):
        for t in s.get("targets", []) if isinstance(s, dict) else []:
            if not isinstance(t, dict):
                continue
            pending = _number(t.get("pending"))
            rows.append((printable(t.get("target", "?")), printable(t.get("state", "?"), 20),
                         int(pending) if pending is not None and pending >= 0 else 0,
                         _number(t.get("lag"))))
    return rows


def format_relays(relays: list[Relay]) -> str:
    """The relays' section of ``syncsup status --relays``: for each relay
    its own targets, their state, pending paths and lag behind the relay."""
    if not relays:
        return "relays: none (no target has relay = true)"
    lines = ["relays:"]
    for r in relays:
        head = f"  {printable(r.sync)} -> {printable(r.target)}"
        if r.status is None:
            lines.append(f"{head}: unavailable ({r.error})")
            continue
        rows = _rows(r.status)
        worst = max((lag for *_, lag in rows if lag is not None), default=None)
        lines.append(f"{head}: {len(rows)} target(s), lag "
                     + ("-" if worst is None else f"{worst:.0f}s")
                     + f" (as written by the relay {r.age or 0:.0f}s ago)")
        for target, state, pending, lag in rows:
            shown = "-" if lag is None else f"{lag:.0f}s"
            lines.append(f"    {target:<40} {state:<9} {pending:>7} {shown:>6}")
    return "\n".join(lines)
