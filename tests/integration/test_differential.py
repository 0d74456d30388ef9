"""Differential test: the mirror under filter rules against rsync itself.

A seeded churn (tests/helpers/rules_churn.py) creates, rewrites, deletes
and renames files, symlinks and directories into, out of and between names
that the sync's ``exclude``, ``exclude_from`` and ``filter`` rules exclude.
After each round the target must be byte for byte what ``rsync -a
--delete`` with the same rules makes of the source in a fresh directory
(tests/helpers/oracle.py), in every mode that mirrors (``rsync``,
``rsyncssh``, ``direct``), to local targets and over the session's sshd,
through the agent (plain excludes) and through rsync (filter rules).

A few seeds run here; ``bench/differential.py`` runs many more.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.oracle import wait_like_oracle
from tests.helpers.rules_churn import FILTER_RULES, PLAIN_RULES, RulesChurn, RuleSet

from ._modes_helpers import finish, sync_table
from .test_agent import write_target_command

pytestmark = pytest.mark.timeout(300)

# (mode, target, rules, seed): each mode on each kind of target it takes,
# each with both rule sets somewhere.
CASES = [
    ("rsync", "local", FILTER_RULES, 101),
    ("rsync", "ssh", PLAIN_RULES, 102),
    ("rsyncssh", "ssh", PLAIN_RULES, 103),
    ("rsyncssh", "ssh", FILTER_RULES, 104),
    ("direct", "local", PLAIN_RULES, 105),
    ("direct", "local", FILTER_RULES, 106),
]
ROUNDS, OPS = 3, 40


def case_id(case: tuple[str, str, RuleSet, int]) -> str:
    mode, where, rules, seed = case
    return f"{mode}-{where}-{rules.name}-{seed}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_mirror_matches_rsync_under_rules(case, request, tmp_path: Path, src: Path, dst: Path,
                                          daemon_factory):
    mode, where, rules, seed = case
    churn = RulesChurn(src, seed)
    churn.populate()
    extra = rules.config(tmp_path)
    if where == "ssh":
        sshd = request.getfixturevalue("sshd")
        ssh = sshd.ssh_config()
        ssh["target_command"] = str(write_target_command(tmp_path)[0])  # an agent there
        sync = sync_table(src, [sshd.target(dst)], mode=mode, delay=0.2, ssh=ssh, **extra)
    else:
        sync = sync_table(src, [dst], mode=mode, delay=0.2, **extra)
    d = daemon_factory([sync])
    fresh = tmp_path / "oracle"
    args = rules.rsync_args(tmp_path)
    want = wait_like_oracle(src, dst, fresh, args, on_timeout=d.describe)
    assert any(not k.startswith(b".") for k in want), "the oracle mirrors something"
    for rnd in range(ROUNDS):
        churn.run(OPS, max_sleep=0.02)
        wait_like_oracle(src, dst, fresh, args,
                         on_timeout=lambda r=rnd: f"round {r}, seed {seed}\n{d.describe()}")
    finish(d, tmp_path, src)


@pytest.mark.parametrize("mode", ["rsync", "direct"])
def test_a_file_replaced_by_a_directory_the_rules_exclude(mode, tmp_path: Path, src: Path,
                                                          dst: Path, daemon_factory):
    """``cache/`` excludes directories only: a file named ``cache`` is
    mirrored; replaced by a directory ``cache``, the target's file must go,
    as ``rsync -a --delete`` deletes it (the name alone is excluded now, so
    only a rescan of its directory does it). Found by bench/differential.py."""
    (src / "sub").mkdir()
    (src / "sub" / "cache").write_bytes(b"a file named cache")
    (src / "sub" / "keep").write_bytes(b"k")
    d = daemon_factory([sync_table(src, [dst], mode=mode, delay=0.2, exclude=["cache/"])])
    fresh = tmp_path / "oracle"
    args = ["--exclude=cache/"]
    wait_like_oracle(src, dst, fresh, args, on_timeout=d.describe)
    assert (dst / "sub" / "cache").is_file()
    (src / "sub" / "cache").unlink()
    (src / "sub" / "cache").mkdir()
    (src / "sub" / "cache" / "inner").write_bytes(b"excluded")
    wait_like_oracle(src, dst, fresh, args, on_timeout=d.describe)
    d.wait_idle()
    wait_like_oracle(src, dst, fresh, args, on_timeout=d.describe)
    assert not (dst / "sub" / "cache").exists()
    finish(d, tmp_path, src)
