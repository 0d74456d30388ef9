"""``syncsup-target ROOT``: the forced command for syncsup's key on a target.

Put it in the target's ``authorized_keys`` (see docs/security.md)::

    command="/usr/local/bin/syncsup-target /srv/www",restrict ssh-ed25519 AAAA... syncsup@src

sshd then runs it instead of whatever the client asked for, with the request
in ``$SSH_ORIGINAL_COMMAND``. It allows exactly what syncsup needs, and only
inside ROOT:

* ``rsync --server ... . DEST``: rsync as a *receiver* (never ``--sender``:
  the key cannot read the target back), with the options syncsup uses, and
  DEST inside ROOT after resolving symlinks;
* the rename replay of ``mode = "rsyncssh"`` (``cd -- DIR && xargs -0 -r -n 2
  mv -f -T --``), done here in Python: every name is relative, has no
  ``..``, and each directory on the way is opened with ``O_NOFOLLOW``, so a
  symlink on the target cannot lead a rename outside ROOT;
* ``rsync --version`` and ``true`` (for ``syncsup check``).

Anything else — a shell, another command, a path outside ROOT, an option not
on the list — is refused with a message on stderr and in syslog, exit 1.
Nothing is ever run through a shell.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import syslog

__all__ = ["Refused", "main", "parse_request"]

_FLAG_CLUSTER = re.compile(r"^-[A-Za-z.]+$")
_VALUE_OPTIONS = re.compile(
    r"^--(timeout|max-delete|modify-window|bwlimit|chown|chmod|usermap|groupmap)=[^\0]*$")
_PLAIN_OPTIONS = frozenset({
    "--server", "--force", "--stats", "--delete", "--delete-missing-args",
    "--ignore-missing-args", "-@-1", "--numeric-ids", "--acls", "--xattrs", "--hard-links",
})
_RENAME = ["xargs", "-0", "-r", "-n", "2", "mv", "-f", "-T", "--"]


class Refused(Exception):
    """The request is not one syncsup-target allows."""


def _inside(root: str, path: str) -> str:
    """``path`` resolved (symlinks too) if it is ROOT or below, else Refused.
    A path that does not exist yet is judged by its nearest existing parent."""
    real_root = os.path.realpath(root)
    probe = os.path.normpath(path)
    tail: list[str] = []
    while not os.path.lexists(probe) and probe not in ("/", ""):
        probe, name = os.path.split(probe)
        tail.append(name)
    real = os.path.join(os.path.realpath(probe), *reversed(tail))
    if ".." in tail or not (real == real_root or real.startswith(real_root.rstrip("/") + "/")):
        raise Refused(f"{path!r} is outside {root}")
    return real


def parse_request(root: str, command: str) -> tuple[str, list[str]]:
    """Classify ``$SSH_ORIGINAL_COMMAND``: (``rsync`` | ``rename`` | ``info``,
    argv or [directory]). Raises Refused."""
    try:
        words = shlex.split(command)
    except ValueError:
        raise Refused("unparsable command") from None
    if words in (["rsync", "--version"], ["true"]):
        return "info", words
    if len(words) >= 5 and words[:2] == ["rsync", "--server"]:
        *opts, dot, dest = words[2:]
        if dot != ".":
            raise Refused("rsync: expected '. DEST' at the end")
        for opt in opts:
            if opt == "--sender" or not (opt in _PLAIN_OPTIONS or _FLAG_CLUSTER.match(opt)
                                         or _VALUE_OPTIONS.match(opt)):
                raise Refused(f"rsync option {opt!r} is not allowed")
        _inside(root, dest)
        return "rsync", ["rsync", "--server", *opts, ".", dest]
    if len(words) == 4 + len(_RENAME) and words[:2] == ["cd", "--"] and words[3] == "&&" \
            and words[4:] == _RENAME:
        return "rename", [_inside(root, words[2])]
    raise Refused("only rsync (receiving) and syncsup's renames are allowed")


def _open_dir(base: int, parts: list[str]) -> int:
    """Open the directory ``parts`` below fd ``base`` without following any
    symlink on the way."""
    fd = os.dup(base)
    try:
        for part in parts:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError:
        os.close(fd)
        raise
    return fd


def _split(rel: bytes) -> tuple[list[str], str]:
    parts = os.fsdecode(rel).split("/")
    if rel.startswith(b"/") or not rel or any(p in ("", ".", "..") for p in parts):
        raise Refused(f"rename path {rel!r} is not a plain relative path")
    return parts[:-1], parts[-1]


def rename_pairs(directory: str, data: bytes) -> int:
    """Apply NUL-separated ``from\\0to\\0`` renames below ``directory``;
    returns how many failed (like xargs, failures do not stop the rest)."""
    names = data.split(b"\0")
    if names and names[-1] == b"":
        names.pop()
    if len(names) % 2:
        raise Refused("odd number of rename paths")
    failed = 0
    root = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for src, dst in zip(names[::2], names[1::2], strict=True):
            (sdirs, sname), (ddirs, dname) = _split(src), _split(dst)
            try:
                sfd = _open_dir(root, sdirs)
                try:
                    dfd = _open_dir(root, ddirs)
                    try:
                        os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
                    finally:
                        os.close(dfd)
                finally:
                    os.close(sfd)
            except OSError:
                failed += 1
    finally:
        os.close(root)
    return failed


def _refuse(reason: str, command: str) -> int:
    msg = f"syncsup-target: refused: {reason} (command: {command[:200]!r})"
    print(msg, file=sys.stderr)
    syslog.syslog(syslog.LOG_WARNING, msg)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: syncsup-target ROOT   (as a forced command in authorized_keys)",
              file=sys.stderr)
        return 2
    root = args[0]
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    try:
        kind, words = parse_request(root, command)
        if kind == "rename":
            return 123 if rename_pairs(words[0], sys.stdin.buffer.read()) else 0
    except Refused as exc:
        return _refuse(str(exc), command)
    os.execvp(words[0], words)  # rsync, or an info command; never a shell


if __name__ == "__main__":
    sys.exit(main())
