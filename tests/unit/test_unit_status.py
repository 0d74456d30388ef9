"""Typed status records (syncsup/status.py): merging the children's parts,
the systemd summary, the human table, and the JSON of docs/status.md."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from syncsup.status import (
    BlindStatus,
    ComponentStatus,
    QueueStatus,
    Status,
    StatusPart,
    SyncStatus,
    TargetStatus,
    TransferStatus,
    WatchStatus,
    assemble,
    format_status,
    shorten,
    summary,
    to_json,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "status.md"
SYNCS = [("www", "/srv/www", "rsync", ["/m/www", "h:/www"]),
         ("db", "/srv/db", "direct", ["/m/db"])]
RUNNING = [ComponentStatus("supervisor", "supervisor", 1, "running", uptime=9.0),
           *(ComponentStatus(r, r, 10 + i, "running", uptime=5.0)
             for i, r in enumerate(("watcher", "collator", "syncer")))]


def collator_part(*queues: QueueStatus) -> StatusPart:
    return StatusPart(role="collator", queues=list(queues))


def test_targets_not_reported_yet_show_startup() -> None:
    doc = assemble("/etc/s.toml", 1.5, RUNNING, SYNCS, [])
    assert (doc.config, doc.started, doc.version, doc.components) == (
        "/etc/s.toml", 1.5, 1, RUNNING)
    assert [s.name for s in doc.syncs] == ["www", "db"]
    www = doc.syncs[0]
    assert (www.source, www.mode, www.rescans, www.journal) == ("/srv/www", "rsync", 0, "ok")
    assert www.targets == [TargetStatus(target="/m/www"), TargetStatus(target="h:/www")]
    assert all(t.state == "startup" and t.pending == 0 and t.transfer is None
               for s in doc.syncs for t in s.targets)


def test_watch_fields_are_none_until_the_watcher_answers() -> None:
    doc = assemble("c", 0.0, RUNNING, SYNCS, [collator_part()])
    for s in doc.syncs:
        assert (s.watches, s.unwatched, s.watch_limit_needed, s.overflows) == (
            None, None, None, None)
    watcher = StatusPart(role="watcher", watches=[
        WatchStatus(sync="www", watches=40, unwatched=2, watch_limit_needed=9000, overflows=1),
        WatchStatus(sync="db", watches=3, watch_limit_needed=0)])
    doc = assemble("c", 0.0, RUNNING, SYNCS, [watcher])
    www, db = doc.syncs
    assert (www.watches, www.unwatched, www.watch_limit_needed, www.overflows) == (40, 2, 9000, 1)
    # No limit needed: null, not 0.
    assert (db.watches, db.unwatched, db.watch_limit_needed, db.overflows) == (3, 0, None, 0)


def test_the_collators_queues_fill_in_the_targets() -> None:
    known = TargetStatus(target="h:/www", state="retrying", pending=4, lag=3.5, last_sync=2.0,
                         last_error="ssh: refused", transfers={"ok": 2, "retry": 1},
                         bytes_sent=10)
    queue = QueueStatus(sync="www", rescans=3, journal="damaged", targets=[
        known, TargetStatus(target="/no/longer/configured", state="idle")])
    doc = assemble("c", 0.0, RUNNING, SYNCS, [collator_part(queue)])
    www, db = doc.syncs
    assert (www.rescans, www.journal) == (3, "damaged")
    # Configured order; what the collator did not report starts as "startup";
    # what the config no longer has is not shown.
    assert www.targets == [TargetStatus(target="/m/www"), known]
    assert db.targets == [TargetStatus(target="/m/db")]


def test_running_transfers_go_to_their_own_target() -> None:
    running = TransferStatus(sync="www", target="h:/www", phase="tree", seconds=12.0,
                             io_bytes=5_000_000)
    other = TransferStatus(sync="db", target="/m/www", phase="paths", seconds=1.0)  # no such
    queue = QueueStatus(sync="www", targets=[TargetStatus(target="h:/www", state="syncing")])
    parts = [collator_part(queue), StatusPart(role="syncer", transfers=[running, other])]
    doc = assemble("c", 0.0, RUNNING, SYNCS, parts)
    www, db = doc.syncs
    assert [t.transfer for t in www.targets] == [None, running]
    assert www.targets[1].state == "syncing"
    assert [t.transfer for t in db.targets] == [None]


def test_assemble_does_not_change_the_parts() -> None:
    queue = QueueStatus(sync="www", targets=[TargetStatus(target="/m/www", state="idle")])
    running = TransferStatus(sync="www", target="/m/www", phase="paths", seconds=1.0)
    parts = [collator_part(queue), StatusPart(role="syncer", transfers=[running])]
    assemble("c", 0.0, RUNNING, SYNCS, parts)
    assert queue.targets == [TargetStatus(target="/m/www", state="idle")]
    assert queue.targets[0].transfer is None


# -------------------------------------------------------------------- summary
def doc_with(*targets: TargetStatus, components: list[ComponentStatus] | None = None
             ) -> Status:
    return Status(config="c", started=0.0, components=RUNNING if components is None
                  else components,
                  syncs=[SyncStatus(name="www", source="/s", mode="rsync",
                                    targets=list(targets))])


def test_summary() -> None:
    assert summary(doc_with(TargetStatus("a", state="idle"), TargetStatus("b", state="idle"))
                   ) == (True, "2 target(s), 0 pending")
    assert summary(doc_with(TargetStatus("a"), TargetStatus("b", state="pending", pending=7))
                   ) == (False, "2 target(s), 1 in initial sync, 7 pending")
    down = [*RUNNING[:2], ComponentStatus("collator", "collator", None, "backoff", restarts=2),
            ComponentStatus("syncer", "syncer", None, "fatal")]
    assert summary(doc_with(TargetStatus("a", state="retrying", pending=1),
                            TargetStatus("b", state="failed", pending=2),
                            TargetStatus("c", state="paused"), components=down)) == (
        True, "3 target(s), 3 pending, 2 failing, not running: collator, syncer")
    assert summary(doc_with()) == (True, "0 target(s), 0 pending")


# ---------------------------------------------------------------- the table
def test_format_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1000.0)
    doc = Status(config="c", started=0.0, components=[
        ComponentStatus("supervisor", "supervisor", 1, "running", uptime=9.4),
        ComponentStatus("syncer", "syncer", None, "backoff", restarts=3, last_exit=-9)],
        syncs=[SyncStatus(name="www", source="/srv/www", mode="rsync", watches=None,
                          journal="damaged", targets=[
                              TargetStatus("/m/a", state="syncing", pending=2, lag=61.0,
                                           last_sync=990.0, transfer=TransferStatus(
                                               sync="www", target="/m/a", phase="tree",
                                               seconds=125.0, io_bytes=3_450_000)),
                              TargetStatus("/m/b", state="idle", last_sync=400.0,
                                           transfer=TransferStatus(
                                               sync="www", target="/m/b", phase="paths",
                                               seconds=4.9)),
                              TargetStatus("/m/c", last_error="ssh: refused")])])
    lines = format_status(doc).splitlines()
    assert lines[0].split() == ["COMPONENT", "ROLE", "PID", "STATE", "RESTARTS", "UPTIME"]
    assert lines[1].split() == ["supervisor", "supervisor", "1", "running", "0", "9s"]
    assert lines[2].split() == ["syncer", "syncer", "-", "backoff", "3", "-"]
    assert "sync www: /srv/www (mode rsync, 0 directories watched, journal: damaged)" in lines
    rows = {ln.split()[0]: ln for ln in lines if ln.startswith("  /m/")}
    assert rows["/m/a"].split() == ["/m/a", "syncing", "2", "61s", "10s", "ago", "-"]
    assert rows["/m/b"].split() == ["/m/b", "idle", "0", "-", "10m", "ago", "-"]
    assert rows["/m/c"].split() == ["/m/c", "startup", "0", "-", "never", "ssh:", "refused"]
    # A long transfer is shown under its target; a short one is not.
    running = [ln.strip() for ln in lines if "running:" in ln]
    assert running == ["running: tree transfer for 125s, 3.5 MB read+written"]
    assert lines.index("    " + running[0]) == lines.index(rows["/m/a"]) + 1


def test_format_status_of_a_healthy_sync_mentions_no_journal() -> None:
    text = format_status(doc_with(TargetStatus("/m/a", state="idle")))
    assert "sync www: /s (mode rsync, 0 directories watched)" in text.splitlines()


def test_shorten_cuts_in_the_middle() -> None:
    assert shorten("short", 10) == "short"
    long = "/srv/www/" + "d/" * 2000 + "file: Permission denied (13)"
    cut = shorten(long, 80)
    assert len(cut) == 80 and "..." in cut
    assert cut.startswith("/srv/www/d/") and cut.endswith("Permission denied (13)")


def test_last_error_is_one_bounded_line_in_the_table_and_whole_in_json() -> None:
    """rsync's error about a 4 KB path: the table keeps its start and end on
    one line; --json keeps every byte."""
    error = ("rsync: [sender] opendir \"/s/" + "d/" * 2000 + "\" failed: File name too long"
             "\nrsync error: some files/attrs were not transferred (code 23)")
    doc = doc_with(TargetStatus("/m/a", state="retrying", last_error=error))
    row = next(ln for ln in format_status(doc).splitlines() if ln.startswith("  /m/a"))
    assert len(row) < 250, row
    assert "rsync: [sender] opendir" in row and row.endswith("(code 23)")
    assert to_json(doc)["syncs"][0]["targets"][0]["last_error"] == error


def test_the_table_shows_the_blind_subtrees_and_the_root() -> None:
    blind = [BlindStatus(path=f"deep{i}/" + "x" * 300, reason="too_long",
                         error="File name too long") for i in range(7)]
    doc = Status(config="c", started=0.0, components=RUNNING, syncs=[SyncStatus(
        name="www", source="/s", mode="rsync", root="symlink",
        blind_counts={"too_long": 7, "unreadable": 2}, blind=blind)])
    lines = format_status(doc).splitlines()
    assert any(ln.startswith("  SOURCE ROOT symlink") for ln in lines), lines
    assert "  BLIND: 7 too_long, 2 unreadable (not watched; see docs/status.md)" in lines
    named = [ln for ln in lines if ln.startswith("    too_long")]
    assert len(named) == 5 and all(len(ln) < 160 for ln in named), named
    assert named[0].split()[1].startswith("deep0/xxx") and "File name too long" in named[0]
    assert "    ... and 4 more (syncsup status --json lists up to 100)" in lines


def test_a_healthy_sync_shows_no_blind_lines() -> None:
    text = format_status(doc_with(TargetStatus("/m/a", state="idle")))
    assert "BLIND" not in text and "SOURCE ROOT" not in text


# ----------------------------------------------------------------------- JSON
def documented() -> dict[str, set[str]]:
    """The keys docs/status.md shows, by level: its JSON example plus the
    fields its tables describe."""
    text = DOC.read_text()
    example = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))  # type: ignore[union-attr]
    table_fields: dict[str, set[str]] = {}
    for heading, body in re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", text, re.S | re.M):
        table_fields[heading] = set(re.findall(r"^\| `(\w+)`", body, re.M))
    sync = example["syncs"][0]
    return {
        "top": set(example),
        "component": set(example["components"][0]) | table_fields["Components"],
        "sync": set(sync),
        "target": set(sync["targets"][0]) | table_fields["Targets"],
        "transfer": {"phase", "seconds", "io_bytes"},  # Targets table, `transfer`
    }


def full_status() -> Status:
    transfer = TransferStatus(sync="www", target="/m/a", phase="tree", seconds=3.0)
    return Status(config="c", started=1.0, components=RUNNING, syncs=[SyncStatus(
        name="www", source="/s", mode="rsync", watches=3, unwatched=0, overflows=0,
        targets=[TargetStatus("/m/a", transfer=transfer, transfers={"ok": 1})])])


# Keys beyond docs/status.md, pinned so that a rename shows up here.
UNDOCUMENTED: dict[str, set[str]] = {}


def test_json_keys_are_those_of_the_docs() -> None:
    doc = to_json(full_status())
    want = documented()
    sync = doc["syncs"][0]
    target = sync["targets"][0]
    have = {"top": set(doc), "component": set(doc["components"][0]), "sync": set(sync),
            "target": set(target), "transfer": set(target["transfer"]) - {"sync", "target"}}
    for level, keys in want.items():
        assert keys <= have[level], (level, keys - have[level])
        assert have[level] - keys == UNDOCUMENTED.get(level, set()), level
    assert doc["version"] == 1


def test_json_is_plain_data() -> None:
    doc = to_json(full_status())
    assert json.loads(json.dumps(doc)) == doc
    target: dict[str, Any] = doc["syncs"][0]["targets"][0]
    assert target["lag"] is None and target["transfer"]["phase"] == "tree"
    assert target["transfers"] == {"ok": 1}


def test_the_table_shows_text_from_outside_without_control_characters() -> None:
    """A target's error (its agent's answer, ssh's stderr), a source or a
    target named with escapes: the table keeps its lines and has no
    control character a terminal would obey."""
    evil = "\x1b]0;pwned\x07\x1b[2J\x9bred\rback\nforged line"
    status = Status(
        config="/etc/syncsup/www.toml", started=1.0e9,
        components=[ComponentStatus(name="supervisor", role="supervisor", pid=1,
                                    state="running")],
        syncs=[SyncStatus(name="www", source=f"/srv/{evil}", mode="rsync", targets=[
            TargetStatus(target=f"h:/{evil}", state="retrying", last_error=evil)])])
    text = format_status(status)
    assert "pwned" in text and "forged line" in text
    assert not any(c in text for c in "\x1b\x07\x9b\r"), repr(text)
    assert not any(line.startswith("forged") for line in text.splitlines()), text
