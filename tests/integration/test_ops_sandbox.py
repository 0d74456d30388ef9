"""The unit's sandbox, applied without systemd: the daemon runs under the
capability bounding set, system call allow-list, address families,
no-new-privileges and memory-deny-write-execute that deploy/syncsup@.service
declares (read from the unit by tests/helpers/sandbox.py, which makes a
refused system call fatal), and still mirrors as root, owners included, to a
local and an ssh target, with metrics served."""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.daemon import sync_entry, syncsup_argv
from tests.helpers.sshd import free_port
from tests.helpers.tree import wait_converged

pytest.importorskip("pyseccomp")
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="mirroring owners needs root"),
]

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "syncsup@.service"
OWNER = (4321, 4322)


def _owners(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_uid, st.st_gid)
    return out


def test_sandboxed_daemon_mirrors_owners_over_ssh_with_metrics(tmp_path, src, dst, sshd,
                                                               settings, daemon_factory):
    if not any(Path(p, "systemd-analyze").exists()
               for p in os.environ.get("PATH", "").split(":")):
        pytest.skip("systemd-analyze is not installed (it expands the system call groups)")
    remote = tmp_path / "remote"
    port = free_port()
    (src / "sub").mkdir()
    for rel in ("a.txt", "sub/b.bin"):
        (src / rel).write_bytes(os.urandom(3000))
    for rel in ("a.txt", "sub/b.bin", "sub"):
        os.chown(src / rel, *OWNER)
    os.chmod(src / "a.txt", 0o600)  # only root's DAC override reads it
    d = daemon_factory([sync_entry(src, [dst, sshd.target(remote)], ssh=sshd.ssh_config())],
                       settings_override={**settings, "metrics": f"127.0.0.1:{port}"},
                       start=False)
    d.start_argv = lambda: [sys.executable, "-m", "tests.helpers.sandbox", str(UNIT), "--",
                            *syncsup_argv("start", d.config)]
    d.start()
    wait_converged(src, [dst, remote], timeout=120, on_timeout=d.describe)
    (src / "sub" / "c.txt").write_bytes(b"live change\n")
    os.chown(src / "sub" / "c.txt", *OWNER)
    (src / "a.txt").unlink()
    wait_converged(src, [dst, remote], timeout=120, on_timeout=d.describe)
    for target in (dst, remote):
        assert _owners(target) == _owners(src), f"owners differ in {target}"

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=15) as resp:
        assert resp.status == 200
        assert "syncsup_target_pending_paths" in resp.read().decode()
    st = d.status()
    restarts = {c["role"]: c["restarts"] for c in d.components(st=st)}
    assert not any(restarts.values()), f"a process died in the sandbox: {restarts}\n" \
                                       f"{d.log_tail()}"
    assert "Bad system call" not in d.log_text() and "SIGSYS" not in d.log_text()
    assert d.stop() == 0
