"""A change of the source root's own attributes (its mode, its owner)
reaches the target's root: through a local agent, a remote agent whose
session is open, and rsync alone. The agent has no operation for a root's
mode or owner; it hands the root back to rsync's times step, which sends
it whole. (The tree comparisons elsewhere leave the root out.)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.helpers.daemon import sync_entry

from ._modes_helpers import wait_until
from .test_agent import converge, finish, transports, write_target_command

pytestmark = pytest.mark.timeout(300)


def attrs(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@pytest.mark.parametrize("way", ["local-agent", "ssh-agent", "local-rsync"])
def test_a_change_of_the_roots_mode_and_owner_reaches_the_target(
        way, request, tmp_path: Path, src: Path, dst: Path, daemon_factory) -> None:
    (src / "f").write_bytes(b"f")
    extra: dict = {}
    spec = str(dst)
    if way == "ssh-agent":
        sshd = request.getfixturevalue("sshd")
        spec = sshd.target(dst)
        extra["ssh"] = {**sshd.ssh_config(),
                        "target_command": str(write_target_command(tmp_path)[0])}
    sync = sync_entry(src, [spec], delay=0.2, **extra)
    if way == "local-rsync":
        sync["agent_max_size"] = 0  # rsync does all
    d = daemon_factory([sync])
    converge(d, src, dst)
    d.wait_idle()
    (src / "g").write_bytes(b"g")  # a change through the agent first: its session is open
    converge(d, src, dst)
    d.wait_idle()
    if way != "local-rsync":
        assert transports(d) == {spec: "agent"}, d.describe()

    for mode in (0o750, 0o705):
        os.chmod(src, mode)
        if os.getuid() == 0:
            os.chown(src, 65534, 65534 if mode == 0o750 else 0)
        wait_until(lambda: attrs(dst) == attrs(src), "the root's mode and owner", timeout=60,
                   context=lambda: f"{attrs(src)} {attrs(dst)}\n" + d.describe())
    os.chmod(src, 0o755)
    os.chown(src, os.getuid(), os.getgid())
    wait_until(lambda: attrs(dst) == attrs(src), "the root's mode and owner", timeout=60,
               context=lambda: f"{attrs(src)} {attrs(dst)}\n" + d.describe())
    finish(d, tmp_path, src, dst)
