"""syncsup-target's request parsing and confined renames (no ssh needed:
the forced command is a pure function of $SSH_ORIGINAL_COMMAND and stdin)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncsup.target import Refused, parse_request, rename_pairs


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "mirror"
    (r / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", r / "escape")
    return r


def test_rsync_receiver_inside_root_is_allowed(root: Path) -> None:
    kind, argv = parse_request(str(root), f"rsync --server -ldogDtpIRe.LsfxCIvu --timeout=300 "
                                          f"--force --stats --delete-missing-args . {root}/")
    assert kind == "rsync"
    assert argv[:2] == ["rsync", "--server"] and argv[-1] == f"{root}/"


def test_escaped_space_in_dest_is_one_word(root: Path) -> None:
    (root / "a b").mkdir()
    _kind, argv = parse_request(str(root), f"rsync --server -logDtpre.iLsfxC . {root}/a\\ b/")
    assert argv[-1] == f"{root}/a b/"


def test_not_yet_existing_dest_below_root_is_allowed(root: Path) -> None:
    parse_request(str(root), f"rsync --server -logDtpre.iLsfxC . {root}/new/deeper/")


@pytest.mark.parametrize("command", [
    "sh", "bash -c id", "cat /etc/passwd", "", "rsync --server --sender -logDtpre.iLsfxC . {root}/",
    "rsync --server -logDtpre.iLsfxC . {root}/../outside", "rsync --server -logDtpre.iLsfxC . /etc",
    "rsync --server -logDtpre.iLsfxC . {root}/escape/",
    "rsync --server -logDtpre.iLsfxC . {root}/escape/x/y",
    "rsync --server --log-file=/tmp/x -logDtpre.iLsfxC . {root}/",
    "rsync --server --rsync-path=sh -logDtpre.iLsfxC . {root}/",
    "rsync --server -logDtpre.iLsfxC {root}/",
    "rsync --version; sh", "true && sh", "rsync --server -e.LsfxC . {root}/ ; id",
    "cd -- {root}/../outside && xargs -0 -r -n 2 mv -f -T --",
    "cd -- {root} && xargs -0 -r -n 2 rm -rf --",
    "cd -- {root} && xargs -0 -r -n 2 mv -f -T -- ; id",
    "'unbalanced",
])
def test_everything_else_is_refused(root: Path, command: str) -> None:
    with pytest.raises(Refused):
        parse_request(str(root), command.format(root=root))


def test_info_commands(root: Path) -> None:
    assert parse_request(str(root), "rsync --version")[0] == "info"
    assert parse_request(str(root), "true")[0] == "info"


def test_rename_request_and_pairs(root: Path) -> None:
    kind, words = parse_request(str(root), f"cd -- {root} && xargs -0 -r -n 2 mv -f -T --")
    assert kind == "rename"
    (root / "sub" / "f").write_text("x")
    ino = (root / "sub" / "f").stat().st_ino
    assert rename_pairs(words[0], b"sub/f\0sub/g\0sub\0moved\0") == 0
    assert (root / "moved" / "g").stat().st_ino == ino


def test_renames_never_leave_the_root(root: Path, tmp_path: Path) -> None:
    (root / "f").write_text("x")
    # through a symlinked directory on the target, as a destination and a source
    assert rename_pairs(str(root), b"f\0escape/f\0") == 1
    (tmp_path / "outside" / "secret").write_text("s")
    assert rename_pairs(str(root), b"escape/secret\0stolen\0") == 1
    assert not (tmp_path / "outside" / "f").exists()
    assert (tmp_path / "outside" / "secret").exists() and not (root / "stolen").exists()
    for bad in (b"../x\0f\0", b"f\0../x\0", b"/etc/passwd\0f\0", b"f\0sub/./g\0", b"f\0\0"):
        with pytest.raises(Refused):
            rename_pairs(str(root), bad)
    with pytest.raises(Refused):
        rename_pairs(str(root), b"f\0")


def test_a_failed_rename_does_not_stop_the_rest(root: Path) -> None:
    (root / "a").write_text("a")
    assert rename_pairs(str(root), b"missing\0x\0a\0b\0") == 1
    assert (root / "b").read_text() == "a"
