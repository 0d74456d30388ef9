"""rsync command lines (syncer/argv.py) and exit code classes (syncer/exitcodes.py)."""

from __future__ import annotations

import dataclasses
import os
import shlex
from pathlib import Path

import pytest

from syncsup.config import RsyncOptions, SshOptions, Sync, Target
from syncsup.syncer.argv import SSH_DEFAULTS, login_of, names_imply_dirs, rsync_argv, ssh_command
from syncsup.syncer.exitcodes import Outcome, classify
from syncsup.syncer.plan import Step, StepKind

LOCAL = Target(spec="/mnt/mirror/www", path="/mnt/mirror/www")
REMOTE = Target(spec="backup@host1:/srv/www", path="/srv/www", host="host1", user="backup")
REMOTE_NO_USER = Target(spec="host2:/srv/www/", path="/srv/www/", host="host2")
LIST = "/run/syncsup/list-7"
TREE = Step(StepKind.TREE, (b"",))
PATHS = Step(StepKind.PATHS, (b"a",))
VERIFY = Step(StepKind.TREE, (b"",), checksum=True)
STEPS = {"tree": TREE, "paths": PATHS}


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
    argv = rsync_argv(make_sync(), LOCAL, TREE, LIST, startup=startup)
    assert argv[0] == "rsync"
    assert "-a" in argv
    assert "-r" in argv
    assert "--delete" in argv
    assert "-d" not in argv
    assert "-I" not in argv


@pytest.mark.parametrize("startup", [True, False])
def test_paths_transfer_flags(startup: bool) -> None:
    argv = rsync_argv(make_sync(), LOCAL, PATHS, LIST, startup=startup)
    assert "-a" in argv
    assert "-d" in argv
    assert "-I" in argv
    assert "-r" not in argv
    assert "--delete" not in argv  # only the named entries, never their siblings
    assert "--force" in argv


@pytest.mark.parametrize("extra", [("--backup",), ("--backup-dir=/srv/old", "-b"),
                                   ("-vb",)])
def test_paths_compare_checksums_instead_of_rewriting_when_rsync_keeps_backups(
        extra: tuple[str, ...]) -> None:
    """-I rewrites an unchanged file, and with --backup each rewrite leaves a
    backup copy of identical content."""
    sync = dataclasses.replace(make_sync(), rsync=RsyncOptions(extra=extra))
    argv = rsync_argv(sync, LOCAL, PATHS, LIST, startup=False)
    assert "--checksum" in argv and "-I" not in argv
    plain = dataclasses.replace(make_sync(), rsync=RsyncOptions(extra=("--bwlimit=5",)))
    assert "-I" in rsync_argv(plain, LOCAL, PATHS, LIST, startup=False)


@pytest.mark.parametrize(("extra", "implies"), [
    ((), True),
    (("--bwlimit=5", "-v", "--append", "--max-size=1M", "-z"), True),
    (("--exclude=*.o",), False),
    (("--exclude", "*.o"), False),
    (("--filter=- core",), False),
    (("--include-from=/etc/keep",), False),
    (("-F",), False),
    (("-vC",), False),
    (("--cvs-exclude",), False),
    (("--no-implied-dirs",), False),
    (("--no-i-d",), False),
    (("--no-R",), False),
    (("-f", "- *.tmp"), False),
    (("-f- *.tmp",), False),
    (("-vf",), False),
    (("-m",), False),  # prune-empty-dirs
    (("--some-future-option",), False),
    (("--no-perms", "--bwlimit", "5", "-T/tmp/x"), False),  # T: a value follows
    (("--no-perms", "--bwlimit", "5", "-avz", "--info=progress2"), True),
])
def test_extra_options_that_drop_names_or_implied_dirs_keep_the_times_step(
        extra: tuple[str, ...], implies: bool) -> None:
    assert names_imply_dirs(extra) is implies


@pytest.mark.parametrize("flag", ["--append", "--append-verify"])
def test_paths_use_the_quick_check_when_rsync_appends(flag: str) -> None:
    """rsync's ``-I --append`` skips a file whose size did not change, its
    new mode or owner too; the quick check sets them."""
    sync = dataclasses.replace(make_sync(), rsync=RsyncOptions(extra=("-v", flag)))
    argv = rsync_argv(sync, LOCAL, PATHS, LIST, startup=False)
    assert "-d" in argv and "-I" not in argv and "--checksum" not in argv
    unproven = rsync_argv(sync, LOCAL, Step(StepKind.PATHS, (b"a",), checksum=True), LIST,
                          startup=True)
    assert "--checksum" in unproven


def test_only_verifying_rescans_compare_checksums() -> None:
    sync = make_sync()
    assert "--checksum" not in rsync_argv(sync, LOCAL, TREE, LIST, startup=True)
    assert "--checksum" not in rsync_argv(sync, LOCAL, TREE, LIST, startup=False)
    assert "--checksum" in rsync_argv(sync, LOCAL, VERIFY, LIST, startup=False)
    # A paths batch sends each entry (-I); one of the files a first start's
    # proof left unproven compares their content instead, sending only those
    # that differ.
    paths = rsync_argv(sync, LOCAL, Step(StepKind.PATHS, (b"a",)), LIST, startup=False)
    assert "-I" in paths and "--checksum" not in paths
    unproven = rsync_argv(sync, LOCAL, Step(StepKind.PATHS, (b"a",), checksum=True), LIST,
                          startup=True)
    assert "--checksum" in unproven and "-I" not in unproven and "-r" not in unproven


@pytest.mark.parametrize("kind", ["tree", "paths"])
def test_file_list_is_nul_separated_from_a_file(kind: str) -> None:
    argv = rsync_argv(make_sync(), LOCAL, STEPS[kind], LIST, startup=False)
    assert "--from0" in argv
    assert f"--files-from={LIST}" in argv
    assert "--force" in argv
    # The list file is named only through --files-from.
    assert [a for a in argv if LIST in a] == [f"--files-from={LIST}"]


@pytest.mark.parametrize("kind", [StepKind.MOVES, StepKind.COMMAND])
def test_steps_that_are_not_rsync_are_rejected(kind: StepKind) -> None:
    with pytest.raises(ValueError, match="not an rsync step"):
        rsync_argv(make_sync(), LOCAL, Step(kind), LIST, startup=False)


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
    argv = rsync_argv(make_sync(delete=delete), LOCAL, STEPS[kind], LIST, startup=startup)
    assert ("--delete-missing-args" in argv) is deletes
    assert ("--ignore-missing-args" in argv) is not deletes
    assert ("--delete" in argv) is (deletes and kind == "tree")


def test_excludes_are_single_arguments_in_order() -> None:
    pats = ("*.swp", "/cache/", "name with spaces", "-dash")
    argv = rsync_argv(make_sync(exclude=pats), LOCAL, PATHS, LIST, startup=False)
    assert [a for a in argv if a.startswith("--exclude")] == [f"--exclude={p}" for p in pats]


def test_no_excludes_no_exclude_flags() -> None:
    argv = rsync_argv(make_sync(), LOCAL, PATHS, LIST, startup=False)
    assert not any(a.startswith("--exclude") for a in argv)


# ------------------------------------------------------ source and dest
@pytest.mark.parametrize("source", ["/srv/www", "/srv/www/", "/srv/www//"])
def test_local_source_and_dest(source: str) -> None:
    argv = rsync_argv(make_sync(source=source), LOCAL, TREE, LIST, startup=True)
    assert argv[-2:] == ["/srv/www/", "/mnt/mirror/www/"]
    assert "-e" not in argv


def test_remote_dest() -> None:
    argv = rsync_argv(make_sync(), REMOTE, PATHS, LIST, startup=False)
    assert argv[-2:] == ["/srv/www/", "backup@host1:/srv/www/"]
    argv = rsync_argv(make_sync(), REMOTE_NO_USER, PATHS, LIST, startup=False)
    assert argv[-1] == "host2:/srv/www/"


@pytest.mark.parametrize("target", [LOCAL, REMOTE])
@pytest.mark.parametrize("kind", ["tree", "paths"])
def test_no_file_name_on_the_command_line(target: Target, kind: str) -> None:
    sync = make_sync(exclude=("*.tmp",), ssh=SshOptions(port=2222))
    argv = rsync_argv(sync, target, STEPS[kind], LIST, startup=False)
    # Only the source root and the destination are operands; everything else
    # is an option. The names to transfer travel only in the list file.
    assert positionals(argv) == [argv[-2], argv[-1]]
    assert argv[-2] == "/srv/www/"


def test_custom_rsync_binary() -> None:
    sync = dataclasses.replace(make_sync(), rsync=RsyncOptions(binary="/opt/rsync"))
    argv = rsync_argv(sync, LOCAL, PATHS, LIST, startup=False)
    assert argv[0] == "/opt/rsync"


# --------------------------------------------------- step flags and limits
@pytest.mark.parametrize("kind", ["tree", "paths"])
def test_the_names_of_a_step_never_reach_the_command_line(kind: str) -> None:
    hostile = Step(StepKind(kind), (b"--delete", b"-e sh", b"$(id)", b"a\nb"))
    sync = make_sync()
    assert rsync_argv(sync, REMOTE, hostile, LIST, startup=False) == rsync_argv(
        sync, REMOTE, Step(StepKind(kind)), LIST, startup=False)


@pytest.mark.parametrize("delete", [True, False, "startup", "running"])
@pytest.mark.parametrize("max_delete", [0, 50])
def test_empty_guard_deletes_nothing_whatever_the_settings(delete: bool | str,
                                                           max_delete: int) -> None:
    sync = dataclasses.replace(make_sync(delete=delete), max_delete=max_delete)
    guard = Step(StepKind.TREE, (b"",), empty_guard=True)
    for startup in (True, False):
        argv = rsync_argv(sync, LOCAL, guard, LIST, startup=startup)
        assert [a for a in argv if a.startswith("--max-delete")] == ["--max-delete=0"]


@pytest.mark.parametrize(("delete", "startup", "limited"), [
    (True, False, True), (False, False, False), ("startup", True, True),
    ("startup", False, False), ("running", False, True)])
@pytest.mark.parametrize("kind", ["tree", "paths"])
def test_max_delete_applies_only_when_deleting(kind: str, delete: bool | str, startup: bool,
                                               limited: bool) -> None:
    sync = dataclasses.replace(make_sync(delete=delete), max_delete=7)
    argv = rsync_argv(sync, LOCAL, STEPS[kind], LIST, startup=startup)
    assert [a for a in argv if a.startswith("--max-delete")] == (
        ["--max-delete=7"] if limited else [])
    assert "--max-delete=7" not in rsync_argv(make_sync(delete=delete), LOCAL, STEPS[kind],
                                              LIST, startup=startup)


def test_checksum_setting_applies_to_every_tree_step() -> None:
    sync = dataclasses.replace(make_sync(), rsync=RsyncOptions(checksum=True))
    assert "--checksum" in rsync_argv(sync, LOCAL, TREE, LIST, startup=True)
    assert "--checksum" not in rsync_argv(sync, LOCAL, PATHS, LIST, startup=True)
    assert rsync_argv(sync, LOCAL, VERIFY, LIST, startup=False).count("--checksum") == 1


def test_confined_target_goes_to_the_daemon_module_without_devices() -> None:
    confined = dataclasses.replace(REMOTE, confined=True)
    argv = rsync_argv(make_sync(), confined, TREE, LIST, startup=False)
    assert argv[-1] == "backup@host1::syncsup/"
    assert "--no-devices" in argv
    assert "--no-devices" not in rsync_argv(make_sync(), REMOTE, TREE, LIST, startup=False)
    # Without -a no devices are sent anyway.
    plain = dataclasses.replace(make_sync(), rsync=RsyncOptions(archive=False))
    argv = rsync_argv(plain, confined, TREE, LIST, startup=False)
    assert "--no-devices" not in argv and "-lt" in argv


def test_control_path_reuses_the_master_connection() -> None:
    argv = rsync_argv(make_sync(), REMOTE, PATHS, LIST, startup=False,
                      control_path="/state/cm-www-1")
    opts = ssh_opts(ssh_parts(argv))
    assert opts[-2:] == ["ControlMaster=no", "ControlPath=/state/cm-www-1"]
    assert "ControlPath" not in " ".join(
        rsync_argv(make_sync(), REMOTE, PATHS, LIST, startup=False))
    # A local target has no ssh at all.
    assert "-e" not in rsync_argv(make_sync(), LOCAL, PATHS, LIST, startup=False,
                                  control_path="/state/cm-www-0")


def test_one_login_is_the_whole_ssh_command_and_the_host() -> None:
    """Targets share an ssh master only when everything that makes the
    connection is the same: another path on the same host shares; another
    user, port, key or option does not."""
    here = login_of(make_sync(), REMOTE)
    other_path = dataclasses.replace(REMOTE, spec="backup@host1:/srv/other", path="/srv/other")
    assert login_of(make_sync(exclude=("*.tmp",)), other_path) == here
    assert login_of(make_sync(), dataclasses.replace(REMOTE, user="root")) != here
    for ssh in (SshOptions(port=2222), SshOptions(identity_file=Path("/etc/syncsup/other")),
                SshOptions(options=("Compression=yes",))):
        assert login_of(make_sync(ssh=ssh), REMOTE) != here, ssh
    assert here.split(b"\0")[-2:] == [b"--", REMOTE.login.encode()]


# ------------------------------------------------------------------ ssh
def test_remote_gets_ssh_with_port_and_identity() -> None:
    ssh = SshOptions(port=2222, identity_file=Path("/etc/syncsup/id ed25519"))
    argv = rsync_argv(make_sync(ssh=ssh), REMOTE, TREE, LIST, startup=True)
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


def test_times_transfer_flags() -> None:
    """The directories' times after a batch: entries of a listed directory by
    the quick check (no -I: a listed root must not resend its files), and
    nothing deleted (a missing directory is its own event's business)."""
    argv = rsync_argv(make_sync(exclude=("*.tmp",)), LOCAL, Step(StepKind.TIMES, (b"",)), LIST,
                      False)
    assert "-d" in argv and "-I" not in argv and "-r" not in argv
    assert "--ignore-missing-args" in argv and "--delete-missing-args" not in argv
    assert not any(a.startswith("--delete") for a in argv)
    assert "--exclude=*.tmp" in argv


@pytest.mark.parametrize(("delete", "startup", "deletes"), [
    (True, False, True), (False, False, False), ("startup", False, False),
    ("running", False, True)])
@pytest.mark.parametrize("kind", ["tree", "paths", "times"])
def test_a_receiver_without_delete_missing_args(kind: str, delete: bool | str, startup: bool,
                                               deletes: bool) -> None:
    """Towards a receiver that rejects --delete-missing-args (exit 2 on any
    batch with a deletion) it is never sent; the times step deletes instead,
    in the directories it lists, as far as the delete setting allows."""
    step = Step(StepKind(kind), (b"",))
    argv = rsync_argv(make_sync(delete=delete), REMOTE, step, LIST, startup=startup,
                      missing_args=False)
    assert "--delete-missing-args" not in argv
    assert "--ignore-missing-args" in argv
    assert ("--delete" in argv) is (deletes and kind in ("tree", "times"))
    normal = rsync_argv(make_sync(delete=delete), REMOTE, step, LIST, startup=startup)
    assert ("--delete" in normal) is (deletes and kind == "tree")


def test_times_step_lists_the_directories_that_lost_entries(tmp_path: Path) -> None:
    from syncsup.syncer.deletions import with_contents

    root = tmp_path / "src"
    (root / "a" / "b").mkdir(parents=True)
    (root / "kept").write_bytes(b"x")
    (root / "a" / "b" / "new").write_bytes(b"y")
    changed = {b"kept", b"a/gone", b"a/b/new", b"x/y/z", b"a/b"}
    names = [b"", b"a", b"a/b", b"x/y"]
    # "a" lost "gone"; "x" is gone whole: its parent, the root, lost it (the
    # root is always listed with its entries); "a/b" only gained one
    assert with_contents(os.fsencode(root), changed, names) == [b"", b"a/", b"a/b", b"x/y"]


def test_a_directory_swapped_for_a_symlink_is_never_listed_with_its_entries(
        tmp_path: Path) -> None:
    """``dir/`` where ``dir`` is now a symlink: an rsync older than 3.4.4
    would send what it points to (a directory only the daemon may read).
    Listed without the slash, rsync sends the symlink itself."""
    from syncsup.syncer.deletions import with_contents

    root, private = tmp_path / "src", tmp_path / "private"
    (root / "real").mkdir(parents=True)
    private.mkdir()
    (private / "secret").write_bytes(b"s")
    os.symlink(private, root / "dir")
    os.symlink(root / "real", root / "dirlink")
    changed = {b"dir/x", b"dirlink/y", b"real/z"}
    names = [b"dir", b"dirlink", b"real"]
    assert with_contents(os.fsencode(root), changed, names) == [b"dir", b"dirlink", b"real/"]
