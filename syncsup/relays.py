"""``syncsup status --relays``: the status of the syncsup daemons that run
onward from this daemon's relay targets (cascades).

A relay is a target host that runs its own syncsup with the received tree
as its source. Its lag to its own targets adds to ours to it, so the
source's operator wants both in one place. The relay's status is read
through the same ssh key and the same program that serves the mirror
(``syncsup-target ROOT status``): nothing new listens on the relay, and
behind a confined key the file served is the one the forced command names
(``--relay-status=FILE``), never one the request chooses. The answer is
bounded and must be one JSON object; it is shown, never acted on.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass
from typing import Any

from syncsup import config as cfg

__all__ = ["MAX_ANSWER", "Relay", "ask_relays", "format_relays"]

MAX_ANSWER = 1024 * 1024
TIMEOUT = 20.0  # seconds for one relay's answer (ssh's ConnectTimeout is 10)


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


def ask(sync: cfg.Sync, target: cfg.Target) -> Relay:
    out = Relay(sync.name, target.spec)
    try:
        done = subprocess.run(status_argv(sync, target), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        out.error = f"no answer within {TIMEOUT:.0f}s"
        return out
    except OSError as exc:
        out.error = f"cannot run ssh: {exc.strerror or exc}"
        return out
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        out.error = f"exit {done.returncode}" + (f": {lines[-1][:300]}" if lines else "")
        return out
    try:
        doc = json.loads(done.stdout[:MAX_ANSWER + 1]) if len(done.stdout) <= MAX_ANSWER \
            else None
    except ValueError:
        doc = None
    status = doc.get("status") if isinstance(doc, dict) else None
    age = doc.get("age") if isinstance(doc, dict) else None
    if not isinstance(status, dict) or not isinstance(status.get("syncs"), list) or (
            not isinstance(age, (int, float))):
        out.error = "the answer is not a syncsup status"
        return out
    out.status, out.age = status, float(age)
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
            lag = t.get("lag")
            rows.append((str(t.get("target", "?")), str(t.get("state", "?")),
                         int(t.get("pending") or 0),
                         float(lag) if isinstance(lag, (int, float)) else None))
    return rows


def format_relays(relays: list[Relay]) -> str:
    """The relays' section of ``syncsup status --relays``: for each relay
    its own targets, their state, pending paths and lag behind the relay."""
    if not relays:
        return "relays: none (no target has relay = true)"
    lines = ["relays:"]
    for r in relays:
        head = f"  {r.sync} -> {r.target}"
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
