"""Debian 12's own rsync 3.2.7, run from the cached Debian 12 rootfs that
the systemd proof makes (scripts/systemd-proof.sh), with its own libraries:
a real older rsync, as shipped, for tests of what an older rsync does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

BOOKWORM = Path(os.environ.get("SYNCSUP_PROOF_CACHE", "/var/cache/syncsup-proof")) / "bookworm"


def debian12_rsync(workdir: Path) -> str:
    """A wrapper script in ``workdir`` running Debian 12's rsync, or skip."""
    binary = BOOKWORM / "usr/bin/rsync"
    loader = BOOKWORM / "lib64/ld-linux-x86-64.so.2"
    if not binary.exists() or not loader.exists():
        pytest.skip(f"no Debian 12 rootfs at {BOOKWORM} (scripts/systemd-proof.sh makes it)")
    libs = ":".join(str(BOOKWORM / d) for d in ("usr/lib/x86_64-linux-gnu",
                                                 "lib/x86_64-linux-gnu"))
    path = workdir / "rsync-debian12"
    path.write_text(f'#!/bin/sh\nexec {loader} --library-path {libs} {binary} "$@"\n')
    path.chmod(0o755)
    return str(path)
