"""rsync transfers to a confined target: rsync's own daemon mode over the
ssh channel, with a module configuration generated here.

Why daemon mode: a plain ``rsync --server`` takes its options and its
destination from a command line the client writes, and with protect-args
(``-s``) from the data stream, where no forced command can see them. In
daemon mode the client only names a module; rsync itself then applies the
module's rules to the arguments it actually receives:

* ``path`` is ROOT and ``use chroot = yes``: the receiver runs inside a
  chroot of ROOT, so no destination, ``--temp-dir``, ``..`` or symlink can
  reach outside it (the kernel resolves every path);
* ``write only``: the key can never read a file back (no ``--sender``);
* ``refuse options`` is an allow-list of what syncsup sends; everything
  else, ``--temp-dir`` and device files included, ends the transfer. Not
  ``--files-from``/``--from0``: given with a remote name they make the
  receiving daemon open a file inside ROOT and send its lines back in
  error messages (syncsup's own push reads its list locally and never
  sends them);
* the account's own start-up files, when its home is inside ROOT, are
  daemon-excluded, and so is everything below a dot-directory there
  (``.ssh/id_ed25519``): rsync neither writes, deletes nor opens them;
* a module ``timeout`` ends a connection that stalls, at most
  :data:`MAX_CONNECTIONS` run at once (rsync's own ``max connections``,
  counted in a lock file in a private directory), and when the client goes
  away (the ssh channel closes) rsync's whole process group is ended: no
  rsync is left behind waiting for anything;
* as root, rsync starts with only the capabilities it needs (chroot, set
  its ids, keep owners and modes) and ``no_new_privs``;
* no file arrives set-user-ID or set-group-ID (``incoming chmod``), and a
  root account accepts no extended attributes (as root, ``-X`` would store
  ``security.capability``): like a device node, either would turn "can
  write inside ROOT" into root on the host for every local user who can
  reach the file.

The configuration goes to rsync in a file in a private temporary directory
(0700), removed when rsync ends: rsync (since 3.5.0) opens its ``--config``
through a symlink-refusing walk, so a ``/proc/self/fd`` memory file cannot
be used.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from types import FrameType

from syncsup.target import _syslog
from syncsup.target._confine import limit_daemon_capabilities, private_dir

__all__ = ["ALLOWED_OPTIONS", "MODULE", "daemon_config", "exclude_rules", "run_daemon"]

MODULE = "syncsup"

# What syncsup's client may send (rsync's long names, or one-letter ones).
# -a is accepted without -D (devices): a device node written by root inside
# ROOT would open the host's disks to every local user. The client sends
# --no-devices to confined targets; special files (fifos, sockets) are fine.
ALLOWED_OPTIONS = (
    "a", "r", "d", "l", "p", "t", "g", "o", "specials", "relative", "no-implied-dirs",
    "delete", "delete-during", "delete-missing-args", "ignore-missing-args", "force",
    "ignore-times", "checksum", "modify-window", "timeout", "max-delete",
    "compress", "compress-level", "compress-choice", "bwlimit", "chown", "chmod", "usermap",
    "groupmap", "numeric-ids", "stats", "quiet", "verbose",
    "hard-links", "acls", "xattrs", "sparse", "executability", "omit-dir-times",
    "omit-link-times", "whole-file", "inplace", "partial", "checksum-choice", "protect-args",
)


def _quote(value: str) -> str:
    """A literal value for rsyncd.conf: ``%`` is its variable syntax."""
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError("a newline or NUL in a path cannot be configured")
    return value.replace("%", "%%")


def exclude_rules(home_rel: str | None) -> str:
    """Daemon exclude rules (one per line) protecting the account's start-up
    files when its home directory is ROOT or below it: every name starting
    with ``.`` directly in the home (``.ssh/authorized_keys``, ``.profile``,
    ``.bashrc``, ``.config``...). A mirror may then not write or delete them,
    and the home itself cannot be removed while they are in it."""
    if home_rel is None:
        return ""
    escaped = "".join("\\" + c if c in "*?[\\" else c for c in home_rel.strip("/"))
    prefix = f"/{escaped}" if escaped else ""
    # ".*" matches the entry itself (a file or a directory), ".*/***" a
    # dot-directory's whole contents: a rule on the entry alone does not
    # keep a request that names a path below it from reaching it.
    return f"{prefix}/.*\n{prefix}/.*/***\n"


# Applied by the daemon after every other permission rule: files never keep
# set-user-ID or set-group-ID bits (directories may keep setgid, which only
# passes on a group).
INCOMING_CHMOD = "Fug-s"
# With the account's home inside ROOT, the mirror also sets the home's own
# mode (and its ancestors'): no directory may then become writable by group
# or others, or another local user could replace the home's start-up files
# (which the exclude rules keep from the mirror) and run code as the account.
INCOMING_CHMOD_HOME = "Fug-s,Dgo-w"

# Options a root account must refuse on top of the allow-list: as root,
# rsync -X stores every extended attribute namespace but system.*, so
# security.capability (file capabilities) and trusted.* too.
ROOT_REFUSED = ("xattrs",)


MAX_CONNECTIONS = 16  # rsync transfers at once to one target account
TIMEOUT = 600         # seconds without I/O before rsync ends a connection
GRACE = 5.0           # seconds rsync has to exit after SIGTERM


def daemon_config(root: str, uid: int, gid: int, exclude_file: str | None,
                  lock_file: str | None = None) -> str:
    """rsyncd.conf text for a module ``syncsup`` serving ``root``; with a
    ``lock_file``, at most :data:`MAX_CONNECTIONS` at once."""
    allowed = [o for o in ALLOWED_OPTIONS if uid != 0 or o not in ROOT_REFUSED]
    refuse = "* " + " ".join(f"!{o}" for o in allowed) + " D devices"
    lines = [
        "# generated by syncsup-target for one connection",
        "use chroot = yes",
        "reverse lookup = no",
        "forward lookup = no",
        f"[{MODULE}]",
        f"    path = {_quote(root)}",
        "    read only = no",
        "    write only = yes",
        "    list = no",
        "    numeric ids = yes",
        "    munge symlinks = no",
        f"    max connections = {MAX_CONNECTIONS if lock_file else 0}",
        f"    timeout = {TIMEOUT}",
        f"    refuse options = {refuse}",
        f"    incoming chmod = {INCOMING_CHMOD if exclude_file is None else INCOMING_CHMOD_HOME}",
    ]
    if uid == 0:
        # As root, the daemon would otherwise switch to "nobody" and could
        # not keep owners; the chroot still confines it.
        lines += [f"    uid = {uid}", f"    gid = {gid}"]
    if lock_file is not None:
        lines.append(f"    lock file = {_quote(lock_file)}")
    if exclude_file is not None:
        lines.append(f"    exclude from = {_quote(exclude_file)}")
    return "\n".join(lines) + "\n"


def lock_dir() -> str | None:
    """A directory only this account can write, for rsync's connection lock
    file: ``/run/syncsup-target`` for root; for another account
    ``$XDG_RUNTIME_DIR/syncsup-target`` when the login set one, else
    ``/tmp/syncsup-target-UID`` (never the home: it may be inside ROOT). A
    directory that is not ours alone (a symlink, another owner, writable by
    others) is not used: None, and the limit is off rather than the mirror."""
    uid = os.geteuid()
    if uid == 0:
        path = "/run/syncsup-target"
    else:
        runtime = os.environ.get("XDG_RUNTIME_DIR", "")
        path = (os.path.join(runtime, "syncsup-target") if runtime.startswith("/")
                else f"/tmp/syncsup-target-{uid}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        return None
    return path


def _client_gone(fd: int) -> bool:
    """Has the client's end of our stdout (the ssh channel) closed?"""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _fd, ev in poller.poll(0))


def _end(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM to rsync's process group (the receiver and its generator),
    SIGKILL after a grace period; reaped."""
    for sig, wait in ((signal.SIGTERM, GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def run_daemon(root: str, home_rel: str | None, rsync: str = "rsync",
               poll_interval: float = 1.0) -> int:
    """Run ``rsync --server --daemon`` serving ROOT on our stdin and stdout
    and return its exit code. The caller has made chroot possible (see
    ``_confine``). SIGTERM, SIGINT and SIGHUP are passed on to rsync; if the
    client goes away first, rsync is ended."""
    locks = lock_dir()
    program = shutil.which(rsync)
    private = private_dir([root, *(p for p in (locks, program) if p)])
    if private is None:
        _syslog.warn(f"syncsup-target: the rsync module for {root} is in a temporary "
                     "directory: no private mount could be had here (see the security "
                     "guide: one confined ROOT per account, holding neither /tmp nor $TMPDIR)")
    tmp = private if private is not None else tempfile.mkdtemp(prefix="syncsup-target-")
    try:
        exclude_file = None
        rules = exclude_rules(home_rel)
        if rules:
            exclude_file = os.path.join(tmp, "exclude")
            with open(exclude_file, "w", encoding="utf-8", errors="surrogateescape") as fh:
                fh.write(rules)
        conf = os.path.join(tmp, "rsyncd.conf")
        with open(conf, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(daemon_config(root, os.geteuid(), os.getegid(), exclude_file,
                                   os.path.join(locks, "rsyncd.lock") if locks else None))
        proc = subprocess.Popen([rsync, "--server", "--daemon", f"--config={conf}", "."],
                                process_group=0, preexec_fn=limit_daemon_capabilities)

        def forward(signum: int, _frame: FrameType | None) -> None:
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, forward)
        out = sys.stdout.fileno()
        while True:
            try:
                return proc.wait(poll_interval)
            except subprocess.TimeoutExpired:
                if _client_gone(out):
                    return _end(proc)
    finally:
        if private is None:
            shutil.rmtree(tmp, ignore_errors=True)
