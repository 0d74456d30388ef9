"""rsync command lines (syncer/argv.py) and exit code classes (syncer/exitcodes.py)."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest

from syncsup.config import RsyncOptions, SshOptions, Sync, Target
from syncsup.syncer.argv import SSH_DEFAULTS, rsync_argv, ssh_command
from syncsup.syncer.exitcodes import Outcome, classify

LOCAL = Target(spec="/mnt/mirror/www", path="/mnt/mirror/www")
REMOTE = Target(spec="backup@host1:/srv/www", path="/srv/www", host="host1", user="backup")
REMOTE_NO_USER = Target(spec="host2:/srv/www/", path="/srv/www/", host="host2")
LIST = "/run/syncsup/list-7"


def make_sync(delete: bool | str = True, exclude: tuple[str, ...] = (),
              ssh: SshOptions | None = None, source: str = "/srv/www") -> Sync:
    return Sync(name="www", source=Path(source), targets=(LOCAL, REMOTE), delete=delete,
                exclude=exclude, ssh=ssh or SshOptions())


def ssh_parts(argv: list[str]) -> list[str]:
    i = argv.index("-e")
    return shlex.split(argv[i + 1])


def ssh_opts(parts: list[str]) -> list[str]:
    return [parts[i + 1] for i, p in enumerate(parts) if p == "-o"]


def positionals(argv: list[str]) -> list[str]:
    """Arguments that are not options (and not the value of ``-e``)."""
    out, skip = [], False
    for a in argv[1:]:
        if skip:
            skip = False
            continue
        if a == "-e":
            skip = True
            continue
        if not a.startswith("-"):
            out.append(a)
    return out


# ---------------------------------------------------------------- kinds
@pytest.mark.parametrize("startup", [True, False])
def test_tree_transfer_flags(startup: bool) -> None:
    argv = rsync_argv(make_sync(), LOCAL, "tree", LIST, startup=startup)
    assert argv[0] == "rsync"
    assert "-a" in argv
    assert "-r" in argv
    assert "--delete" in argv
    assert "-d" not in argv
    assert "-I" not in argv


@pytest.mark.parametrize("startup", [True, False])
def test_paths_transfer_flags(startup: bool) -> None:
    argv = rsync_argv(make_sync(), LOCAL, "paths", LIST, startup=startup)
    assert "-a" in argv
    assert "-d" in argv
    assert "-I" in argv
    assert "-r" not in argv
    assert "--delete" not in argv  # only the named entries, never their siblings
    assert "--force" in argv


def test_only_verifying_rescans_compare_checksums() -> None:
    sync = make_sync()
    assert "--checksum" not in rsync_argv(sync, LOCAL, "tree", LIST, startup=True)
    assert "--checksum" not in rsync_argv(sync, LOCAL, "tree", LIST, startup=False)
    assert "--checksum" in rsync_argv(sync, LOCAL, "tree", LIST, startup=False, verify=True)
    # A paths batch already uses -I; never a checksum pass over named entries.
    assert "--checksum" not in rsync_argv(sync, LOCAL, "paths", LIST, startup=False,
                                          verify=True)


@pytest.mark.parametrize("kind", ["tree", "paths"])
def test_file_list_is_nul_separated_from_a_file(kind: str) -> None:
    argv = rsync_argv(make_sync(), LOCAL, kind, LIST, startup=False)
    assert "--from0" in argv
    assert f"--files-from={LIST}" in argv
    assert "--force" in argv
    # The list file is named only through --files-from.
    assert [a for a in argv if LIST in a] == [f"--files-from={LIST}"]


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError):
        rsync_argv(make_sync(), LOCAL, "everything", LIST, startup=False)


@pytest.mark.parametrize(("delete", "startup", "deletes"), [
    (True, True, True),
    (True, False, True),
    (False, True, False),
    (False, False, False),
    ("startup", True, True),
    ("startup", False, False),
    ("running", True, False),
    ("running", False, True),
])
@pytest.mark.parametrize("kind", ["tree", "paths"])
def test_delete_setting(kind: str, delete: bool | str, startup: bool, deletes: bool) -> None:
    argv = rsync_argv(make_sync(delete=delete), LOCAL, kind, LIST, startup=startup)
    assert ("--delete-missing-args" in argv) is deletes
    assert ("--ignore-missing-args" in argv) is not deletes
    assert ("--delete" in argv) is (deletes and kind == "tree")


def test_excludes_are_single_arguments_in_order() -> None:
    pats = ("*.swp", "/cache/", "name with spaces", "-dash")
    argv = rsync_argv(make_sync(exclude=pats), LOCAL, "paths", LIST, startup=False)
    assert [a for a in argv if a.startswith("--exclude")] == [f"--exclude={p}" for p in pats]


def test_no_excludes_no_exclude_flags() -> None:
    argv = rsync_argv(make_sync(), LOCAL, "paths", LIST, startup=False)
    assert not any(a.startswith("--exclude") for a in argv)


# ------------------------------------------------------ source and dest
@pytest.mark.parametrize("source", ["/srv/www", "/srv/www/", "/srv/www//"])
def test_local_source_and_dest(source: str) -> None:
    argv = rsync_argv(make_sync(source=source), LOCAL, "tree", LIST, startup=True)
    assert argv[-2:] == ["/srv/www/", "/mnt/mirror/www/"]
    assert "-e" not in argv


def test_remote_dest() -> None:
    argv = rsync_argv(make_sync(), REMOTE, "paths", LIST, startup=False)
    assert argv[-2:] == ["/srv/www/", "backup@host1:/srv/www/"]
    argv = rsync_argv(make_sync(), REMOTE_NO_USER, "paths", LIST, startup=False)
    assert argv[-1] == "host2:/srv/www/"


@pytest.mark.parametrize("target", [LOCAL, REMOTE])
@pytest.mark.parametrize("kind", ["tree", "paths"])
def test_no_file_name_on_the_command_line(target: Target, kind: str) -> None:
    sync = make_sync(exclude=("*.tmp",), ssh=SshOptions(port=2222))
    argv = rsync_argv(sync, target, kind, LIST, startup=False)
    # Only the source root and the destination are operands; everything else
    # is an option. The names to transfer travel only in the list file.
    assert positionals(argv) == [argv[-2], argv[-1]]
    assert argv[-2] == "/srv/www/"


def test_custom_rsync_binary() -> None:
    sync = dataclasses.replace(make_sync(), rsync=RsyncOptions(binary="/opt/rsync"))
    argv = rsync_argv(sync, LOCAL, "paths", LIST, startup=False)
    assert argv[0] == "/opt/rsync"


# ------------------------------------------------------------------ ssh
def test_remote_gets_ssh_with_port_and_identity() -> None:
    ssh = SshOptions(port=2222, identity_file=Path("/etc/syncsup/id ed25519"))
    argv = rsync_argv(make_sync(ssh=ssh), REMOTE, "tree", LIST, startup=True)
    parts = ssh_parts(argv)
    assert parts[0] == "ssh"
    assert parts[parts.index("-p") + 1] == "2222"
    assert parts[parts.index("-i") + 1] == "/etc/syncsup/id ed25519"
    assert "IdentitiesOnly=yes" in ssh_opts(parts)
    for default in SSH_DEFAULTS:
        assert default in ssh_opts(parts)


def test_ssh_without_port_or_identity() -> None:
    parts = shlex.split(ssh_command(make_sync()))
    assert parts[0] == "ssh"
    assert "-p" not in parts
    assert "-i" not in parts
    assert "BatchMode=yes" in ssh_opts(parts)


def test_ssh_defaults_fail_fast() -> None:
    keys = {d.split("=")[0] for d in SSH_DEFAULTS}
    assert {"BatchMode", "ConnectTimeout", "ServerAliveInterval"} <= keys


def test_user_ssh_options_override_defaults() -> None:
    ssh = SshOptions(options=("BatchMode=no", "connecttimeout=3",
                              "StrictHostKeyChecking=yes"))
    opts = ssh_opts(shlex.split(ssh_command(make_sync(ssh=ssh))))
    assert "BatchMode=yes" not in opts
    assert "ConnectTimeout=10" not in opts
    assert first_value(opts, "BatchMode") == "no"
    assert first_value(opts, "ConnectTimeout") == "3"
    assert "StrictHostKeyChecking=yes" in opts
    # Defaults the user did not touch are kept.
    assert "ServerAliveInterval=15" in opts
    assert "ServerAliveCountMax=3" in opts


def first_value(opts: list[str], key: str) -> str | None:
    """The value ssh uses: for each option, the first one given wins."""
    for o in opts:
        k, _, v = o.replace("=", " ", 1).partition(" ")
        if k.strip().lower() == key.lower():
            return v.strip()
    return None


def test_ssh_command_quotes_every_part() -> None:
    ssh = SshOptions(identity_file=Path("/keys/it's mine"), options=("ProxyCommand=nc %h 22",))
    parts = shlex.split(ssh_command(make_sync(ssh=ssh)))
    assert "/keys/it's mine" in parts
    assert "ProxyCommand=nc %h 22" in ssh_opts(parts)


# ------------------------------------------------------------ exit codes
@pytest.mark.parametrize("rc", [0, 24])
def test_ok_codes(rc: int) -> None:
    assert classify(rc) is Outcome.OK


@pytest.mark.parametrize("rc", [3, 5, 10, 11, 12, 14, 20, 21, 22, 23, 30, 35, 255,
                                -1, -9, -15, 99])
def test_retry_codes(rc: int) -> None:
    assert classify(rc) is Outcome.RETRY


def test_max_delete_halts() -> None:
    assert classify(25) is Outcome.HALT


@pytest.mark.parametrize("rc", [1, 2, 4, 6, 13])
def test_fatal_codes(rc: int) -> None:
    assert classify(rc) is Outcome.FATAL


def test_outcome_words_match_the_done_message() -> None:
    assert {o.value for o in Outcome} == {"ok", "retry", "fatal", "halt"}
