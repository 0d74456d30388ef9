"""The syncer's slots: one per target of every sync, made from the config.

A slot holds what one target's current batch needs between loop turns: the
batch, its plan, the step running, the transfer or the agent channel that
runs it. Its phase (idle, waiting for a transfer, running) is kept apart,
in :class:`~syncsup.syncer.core.Lanes`, where the decisions about it are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from syncsup import config as cfg
from syncsup import proto
from syncsup.filters import RuleList, expand_rule_files
from syncsup.rsync_version import sets_implied_dirs
from syncsup.statedir import StateDir
from syncsup.syncer.agents import Channel, agent_use
from syncsup.syncer.argv import login_of, names_imply_dirs
from syncsup.syncer.core import Key
from syncsup.syncer.deletions import receiver_takes_missing_args
from syncsup.syncer.plan import Plan, Step
from syncsup.syncer.proof_step import ProofStep
from syncsup.syncer.sharedbatch import Use
from syncsup.syncer.steps import Receiver
from syncsup.syncer.transfer import Transfer

__all__ = ["Slot", "make_slots"]

log = logging.getLogger("syncsup.syncer")


@dataclass
class Slot:
    """One target of one sync: its batch, plan and running step (its phase
    is :class:`~.core.Lanes`'s)."""

    sync: cfg.Sync
    index: int
    target: cfg.Target
    control_path: str | None
    batch: proto.Batch | None = None
    plan: Plan | None = None
    step: Step | None = None
    transfer: Transfer | ProofStep | None = None
    use: Use | None = None  # how the transfer runs (plain, or a shared batch)
    sent: int = 0
    channel: Channel | None = None  # the target's agent: for writes, renames or both
    rules: RuleList = field(default_factory=RuleList)
    receiver: Receiver = field(default_factory=Receiver)
    # a remote target's proof failed (no agent there to read ctimes): until
    # then, arrived directories are compared instead of tried at every batch
    unprovable_until: float = 0.0

    @property
    def label(self) -> str:
        return f"target {self.target.spec}"

    @property
    def key(self) -> Key:
        return (self.sync.name, self.index)


def make_slots(conf: cfg.Config, state: StateDir) -> dict[Key, Slot]:
    """A slot for each target of each sync, with its agent channel where
    the target gets one (said once per sync where it does not)."""
    slots: dict[Key, Slot] = {}
    logins: dict[bytes, int] = {}  # each ssh command, numbered as first met
    for raw in conf.syncs:
        sync = expand_rule_files(raw)
        rules = RuleList(sync)
        for i, t in enumerate(sync.targets):
            cp = (state.control_path(logins.setdefault(login_of(sync, t), len(logins)))
                  if t.over_ssh else None)
            slot = slots[(sync.name, i)] = Slot(
                sync, i, t, cp, rules=rules,
                receiver=Receiver(receiver_takes_missing_args(sync, t),
                                  implied_dirs=not sync.runs_commands
                                  and names_imply_dirs(sync.rsync.extra)
                                  and sets_implied_dirs(sync.rsync.binary)))
            use = agent_use(sync, t)
            if use.wanted:
                errfile = open(state.tmp / f"{sync.name}-{i}.agent.err", "w+b")  # noqa: SIM115
                slot.channel = Channel(sync, t, cp, errfile, conf.timings, writes=use.writes)
            if use.why is not None and (i == 0 or t.is_daemon):
                log.info("%s: every change%s goes through rsync (%s)", sync.name,
                         " but renames" if use.renames else "", use.why)
    return slots
