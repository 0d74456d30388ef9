"""Fixtures for syncsup integration tests: a real daemon, a real sshd, real rsync.

Every test gets its own tmp_path; whatever the daemon starts carries a path
under it in its command line (config path, target path), which is how
:func:`tests.helpers.procs.assert_no_leftovers` finds processes left behind.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.helpers.attack import AttackSshd, public_dir, remove_public  # noqa: E402
from tests.helpers.daemon import LOG_LEVEL, TEST_TIMINGS, Daemon, sync_entry  # noqa: E402
from tests.helpers.procs import assert_no_leftovers, kill_leftovers  # noqa: E402
from tests.helpers.sshd import Sshd  # noqa: E402


# ----------------------------------------------------------------- fixtures
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for d in getattr(item, "_syncsup_daemons", []):
            rep.sections.append((f"syncsup log ({d.config.name})", d.log_tail(120)))


FAULT_SUITES = {"test_faults", "test_recovery", "test_chaos", "test_many_syncs", "test_agent"}


@pytest.fixture(autouse=True)
def no_traceback_in_faults(request):
    """The fault suites: a fault the design expects (a killed or stopped
    component, an overflow, a damaged journal, a full disk, an unreachable
    target...) is handled and logged in words, never with a traceback."""
    yield
    if request.module.__name__.rsplit(".", 1)[-1] not in FAULT_SUITES:
        return
    for d in getattr(request.node, "_syncsup_daemons", []):
        assert "Traceback" not in d.log_text(), (
            f"a traceback in the log of {request.node.name}:\n{d.log_tail(80)}")


@pytest.fixture
def settings(tmp_path: Path) -> dict[str, Any]:
    return {"state_dir": str(tmp_path / "state"), "log_level": LOG_LEVEL}


@pytest.fixture
def src(tmp_path: Path) -> Path:
    p = tmp_path / "src"
    p.mkdir()
    return p


@pytest.fixture
def dst(tmp_path: Path) -> Path:
    p = tmp_path / "dst"
    p.mkdir()
    return p


@pytest.fixture
def daemon_factory(tmp_path: Path, request, settings):
    """``make(syncs, settings=None, start=True, wait=True, config=None,
    timings=None) -> Daemon``; ``timings``: values that replace the tests'
    own (``TEST_TIMINGS``) for this daemon.

    Teardown always stops what is still running (SIGTERM, then SIGKILL of the
    group), and checks that no process mentioning tmp_path is left.
    """
    made: list[Daemon] = []
    request.node._syncsup_daemons = made

    def make(
        syncs: list[dict[str, Any]],
        settings_override: dict[str, Any] | None = None,
        start: bool = True,
        wait: bool = True,
        config: Path | None = None,
        timings: dict[str, float] | None = None,
    ) -> Daemon:
        doc = {"settings": settings_override or settings, "sync": syncs,
               "timings": {**TEST_TIMINGS, **(timings or {})}}
        d = Daemon(tmp_path, doc, config)
        made.append(d)
        if start:
            d.start(wait=wait)
        return d

    yield make

    errors: list[str] = []
    for d in made:
        if d.running:
            try:
                d.stop()
            except AssertionError as e:
                errors.append(str(e))
            finally:
                if d.running:
                    d._kill_hard()
    try:
        assert_no_leftovers(tmp_path)
    except AssertionError as e:
        errors.append(str(e))
        kill_leftovers(tmp_path)
    if errors:
        pytest.fail("daemon teardown:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
def daemon(daemon_factory, src, dst):
    """A running daemon mirroring ``src`` to ``dst`` (local target, delay 0, delete on)."""
    return daemon_factory([sync_entry(src, [dst])])


@pytest.fixture(scope="session")
def _sshd_session(tmp_path_factory):
    if not os.path.exists("/usr/sbin/sshd"):
        pytest.fail("openssh-server (/usr/sbin/sshd) is required for ssh target tests")
    s = Sshd(tmp_path_factory.mktemp("sshd"))
    s.start()
    yield s
    s.close()


@pytest.fixture
def sshd(_sshd_session) -> Sshd:
    """The session's sshd, (re)started if an earlier test stopped it."""
    if not _sshd_session.running:
        _sshd_session.start()
    return _sshd_session


@pytest.fixture(scope="module")
def asshd(tmp_path_factory):
    """A private sshd for the confined key (see AttackSshd): the attack
    tests and the agent tests point its key at ``syncsup-target ROOT``."""
    if not os.path.exists("/usr/sbin/sshd"):
        pytest.fail("openssh-server (/usr/sbin/sshd) is required for the confined-key tests")
    pub = public_dir("syncsup-sshd-")
    s = AttackSshd(tmp_path_factory.mktemp("attack") / "sshd", pub)
    # a plain key line for sshd's start-up login check; each test confines it
    s.authorized_keys.write_text(Path(f"{s.identity_file}.pub").read_text())
    s.start()
    yield s
    s.close()
    remove_public(pub)
