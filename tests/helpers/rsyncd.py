"""A throw-away rsync daemon (``rsync --daemon``) on 127.0.0.1 for rsync
daemon targets in tests.

One module, ``mirror``, writable, behind ``auth users`` and a secrets file,
served from ``DIR/module`` (and ``readonly``, the same directory, read
only). As root the daemon chroots into the module and keeps owners (``uid =
0``); otherwise ``use chroot = no``, where the daemon rewrites absolute
symlinks. ``munge symlinks = no`` either way: links are stored as sent.
The client's password file is ``password_file``; ``set_password`` changes
the daemon's side (a wrong password, then fixed). ``modules`` adds writable
modules of that name (``DIR/NAME``), ``user`` and ``password`` replace the
login, for configs that name their own (the Lsyncd corpus).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.helpers.sshd import banner_on, free_port

USER = "mirroruser"
PASSWORD = "s3cret-pass"
MODULE = "mirror"


def _port_open(port: int) -> bool:
    return banner_on(port, b"@RSYNCD:", wait=2.0)


class RsyncDaemon:
    """``rsync --daemon --no-detach`` on a free loopback port; ``stop()`` and
    ``start()`` (same port) simulate the daemon going down and coming back."""

    def __init__(self, workdir: Path, modules: tuple[str, ...] = (), user: str = USER,
                 password: str = PASSWORD) -> None:
        self.dir = Path(workdir)
        self.user = user
        self.modules = modules
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.module_path = self.dir / "module"
        self.module_path.mkdir(exist_ok=True)
        self.config = self.dir / "rsyncd.conf"
        self.secrets = self.dir / "rsyncd.secrets"
        self.password_file = self.dir / "password"
        self.log = self.dir / "rsyncd.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        for name in modules:
            (self.dir / name).mkdir(exist_ok=True)
        self.password_file.write_text(password + "\n")
        os.chmod(self.password_file, 0o600)
        self.set_password(password)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, path: str = "", user: str | None = None, module: str = MODULE) -> str:
        """``rsync://user@127.0.0.1:PORT/module[/path]``."""
        tail = f"/{path}" if path else ""
        return f"rsync://{user or self.user}@{self.host}:{self.port}/{module}{tail}"

    def set_password(self, password: str) -> None:
        """The password the daemon expects for its user."""
        self.secrets.write_text(f"{self.user}:{password}\n")
        os.chmod(self.secrets, 0o600)

    def _write_config(self) -> None:
        # As root: chroot into the module and keep owners. Without a chroot
        # the daemon sanitizes paths, which strips the leading '/' of every
        # absolute symlink it receives: an exact mirror needs the chroot.
        root = os.geteuid() == 0
        owner = ["use chroot = yes", "uid = 0", "gid = 0"] if root else ["use chroot = no"]
        self.config.write_text("\n".join([
            f"port = {self.port}",
            "address = 127.0.0.1",
            "munge symlinks = no",
            "numeric ids = yes",
            "max connections = 0",
            f"log file = {self.log}",
            *owner,
            f"[{MODULE}]",
            f"    path = {self.module_path}",
            "    read only = no",
            f"    auth users = {self.user}",
            f"    secrets file = {self.secrets}",
            "    strict modes = yes",
            *(line for name in self.modules for line in (
                f"[{name}]", f"    path = {self.dir / name}", "    read only = no",
                f"    auth users = {self.user}", f"    secrets file = {self.secrets}")),
            "[readonly]",
            f"    path = {self.module_path}",
            "    read only = yes",
            "",
        ]))

    def start(self, timeout: float = 30.0) -> None:
        """Start the daemon (on the same port if it ran before) and wait
        until it greets."""
        if self.running:
            return
        first = not self.port
        for _ in range(5 if first else 1):
            if first:
                self.port = free_port()
            self._write_config()
            self.proc = subprocess.Popen(
                ["rsync", "--daemon", "--no-detach", f"--config={self.config}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=open(self.log, "ab"), start_new_session=True)  # noqa: SIM115
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _port_open(self.port):
                    return
                time.sleep(0.1)
            self._terminate()
        raise RuntimeError(f"rsync --daemon did not come up on port {self.port}:\n"
                           f"{self.log.read_text(errors='replace')[-2000:]}")

    def _terminate(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # the whole group: the listener and its per-connection children
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """Down hard, with its open sessions, as when the host goes away."""
        self._terminate()
        deadline = time.monotonic() + 10
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        self.stop()
