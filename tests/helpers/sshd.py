"""A throw-away OpenSSH server on 127.0.0.1 for ssh targets in tests.

Keys are generated with ssh-keygen in a private directory; clients verify the
host key through a known_hosts file (StrictHostKeyChecking=yes stays on).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.helpers.procs import descendants

SSHD = shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def banner_on(port: int, banner: bytes, wait: float = 1.0) -> bool:
    """A server on 127.0.0.1:``port`` greets with ``banner`` (sshd's
    ``SSH-``, rsync's daemon ``@RSYNCD:``): it is up and it is ours."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.settimeout(wait)
            return s.recv(len(banner) + 8).startswith(banner)
    except OSError:
        return False


def _port_open(port: int) -> bool:
    return banner_on(port, b"SSH-")


class Sshd:
    """sshd -D -e on a free loopback port; ``stop()``/``start()`` simulate a target going down."""

    # Set in every session: SHLVL=1 keeps bash, which runs each session's
    # command, from reading the test host's ~/.bashrc, as bash does for a
    # command over ssh. That file is the machine's, not the target's a test
    # means: on a developer's machine a `pyenv init` there costs 0.08 CPU-s
    # and several processes per session, for every transfer, agent session
    # and proof, and in the benchmark it was paid by every one of Lsyncd's
    # rsyncs over ssh. (A distribution's default ~/.bashrc returns at once
    # for a non-interactive shell.) Empty in a subclass that sets its own.
    session_env: tuple[str, ...] = ("SHLVL=1",)

    # The key exchange offered: OpenSSH 9's default,
    # sntrup761x25519-sha512, costs the client about 60 ms of CPU per
    # connection (the post-quantum key pair it makes), curve25519-sha256
    # about 10 ms. The suite opens some 500 connections a run (the attacks'
    # sessions, masters, Lsyncd's rsyncs; the benchmark more), all
    # to this server: the choice of cipher is ssh's, not syncsup's, and
    # nothing here depends on it.
    kex: str = "curve25519-sha256,curve25519-sha256@libssh.org"

    def __init__(self, workdir: Path) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.host = "127.0.0.1"
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.identity_file = self.dir / "id_ed25519"
        self.authorized_keys = self.dir / "authorized_keys"
        self.known_hosts = self.dir / "known_hosts"
        self.config = self.dir / "sshd_config"
        self.pidfile = self.dir / "sshd.pid"
        self.log = self.dir / "sshd.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._keygen()

    # ------------------------------------------------------------------ setup
    def _keygen(self) -> None:
        for key, comment in (
            (self.host_key, "syncsup-test-host"),
            (self.identity_file, "syncsup-test-client"),
        ):
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)],
                    check=True,
                    stdin=subprocess.DEVNULL,
                )
        shutil.copyfile(f"{self.identity_file}.pub", self.authorized_keys)
        os.chmod(self.authorized_keys, 0o600)

    def _write_config(self) -> None:
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.host}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.pidfile}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "StrictModes no",
                    "UsePAM no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "AllowTcpForwarding no",
                    "X11Forwarding no",
                    "PrintMotd no",
                    "UseDNS no",
                    "MaxStartups 200",
                    "MaxSessions 200",
                    "LoginGraceTime 30",
                    "LogLevel INFO",
                    "Subsystem sftp internal-sftp",
                    f"KexAlgorithms {self.kex}",
                    *([f"SetEnv {' '.join(self.session_env)}"] if self.session_env else []),
                    "",
                ]
            )
        )
        pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {pub[0]} {pub[1]}\n")

    # ------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 30.0) -> None:
        """Start sshd (on the same port if it ran before) and wait until a login works."""
        if self.running:
            return
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        attempts = 5 if not self.port else 1
        last = ""
        for _ in range(attempts):
            if not self.port or attempts > 1:
                self.port = free_port()
            self._write_config()
            test = subprocess.run(
                [SSHD, "-t", "-f", str(self.config)], capture_output=True, text=True
            )
            if test.returncode != 0:
                raise RuntimeError(f"sshd -t rejected the config: {test.stderr}")
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(self.config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if _port_open(self.port) and self.check_login().returncode == 0:
                    return
                time.sleep(0.1)
            last = self.log_tail()
            self._terminate()
            if attempts == 1:
                break
        raise RuntimeError(f"sshd did not come up on port {self.port}:\n{last}")

    def _terminate(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def stop(self, kill_sessions: bool = True) -> None:
        """Stop listening; with ``kill_sessions`` also end open sessions and their commands
        (remote rsync), as when the target host goes down."""
        victims = self.session_pids() if kill_sessions and self.running else []
        self._terminate()
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def session_pids(self) -> list[int]:
        """All descendants of the listening sshd: per-connection sshd and what they run."""
        if self.proc is None:
            return []
        return descendants(self.proc.pid)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        self.stop(kill_sessions=True)

    # ---------------------------------------------------------------- clients
    @property
    def ssh_options(self) -> list[str]:
        return [
            f"UserKnownHostsFile={self.known_hosts}",
            "StrictHostKeyChecking=yes",
            "BatchMode=yes",
        ]

    def ssh_argv(self, *remote: str) -> list[str]:
        argv = ["ssh", "-p", str(self.port), "-i", str(self.identity_file)]
        for o in self.ssh_options:
            argv += ["-o", o]
        argv += ["-o", "ConnectTimeout=5", f"{self.user}@{self.host}", *remote]
        return argv

    def check_login(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.ssh_argv("true"),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=20,
        )

    def target(self, path: os.PathLike | str) -> str:
        """rsync-style remote target for a local path (the sshd runs on this machine)."""
        return f"{self.user}@{self.host}:{os.fspath(path)}"

    def ssh_config(self) -> dict:
        """The ``[sync.ssh]`` table for a syncsup config."""
        return {
            "port": self.port,
            "identity_file": str(self.identity_file),
            "options": list(self.ssh_options),
        }

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
