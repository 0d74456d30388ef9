"""The project's corpus of Lsyncd configs (tests/data/lsyncd_corpus): each
config imports to exactly what its NAME.expect.toml says (exit status, every
stderr line, the whole TOML document); together they use every setting of
Lsyncd's manual (syncsup.lsyncd._manual); docs/lsyncd.md's table names every
one of them. Plus the importer rules the corpus brought up.

The imports run the real sandbox (a child process with lupa) in a few
tenths of a second each. To write the expectation files after a deliberate
change of the importer: ``python3 -m tests.unit.test_unit_lsyncd_corpus``,
then read the diff before committing it.
"""

from __future__ import annotations

import io
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from syncsup.lsyncd import import_lsyncd
from syncsup.lsyncd._lua import Recorded, RecordedSync
from syncsup.lsyncd._manual import MANUAL, REFUSED_BY_2_2_3
from syncsup.lsyncd._mapping import RSYNC_EXIT, map_config

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "data" / "lsyncd_corpus"
DOCS = REPO / "docs" / "lsyncd.md"
PREFIX = "syncsup import-lsyncd: "
# The values the unit test fills in (nothing is run, so any will do); @DATA@
# is the corpus directory itself, written back as @DATA@ in the results.
FILL = {"BASE": "/srv/corpus", "HOST": "backup.example.net", "USER": "mirror",
        "PORT": "2222", "IDENTITY": "/etc/lsyncd/id_mirror",
        "KNOWN_HOSTS": "/etc/lsyncd/known_hosts"}
CONFIGS = sorted(p.name for p in CORPUS.glob("*.lua"))


def fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def import_corpus(name: str, tmp_path: Path) -> dict[str, Any]:
    """Exit status, stderr lines and the document, with the corpus path
    written back as @DATA@ and the source file's name as @CONFIG@."""
    conf = tmp_path / name
    conf.write_text(fill((CORPUS / name).read_text(), {**FILL, "DATA": str(CORPUS)}))
    out, err = io.StringIO(), io.StringIO()
    rc = import_lsyncd(str(conf), out, err, cwd=Path("/srv/corpus"))

    def back(text: str) -> str:
        return text.replace(str(CORPUS), "@DATA@")

    lines = [back(ln.removeprefix(PREFIX)) for ln in err.getvalue().splitlines()]
    doc = tomllib.loads(back(out.getvalue())) if out.getvalue() else {}
    return {"exit": rc, "messages": lines, "doc": doc}


@pytest.fixture(autouse=True)
def _no_corpus_env(monkeypatch):
    monkeypatch.delenv("LSYNCD_CORPUS_UNSET", raising=False)


def test_the_corpus_is_there():
    assert len(CONFIGS) >= 15, CONFIGS
    for name in CONFIGS:
        assert (CORPUS / name.replace(".lua", ".expect.toml")).is_file(), name


@pytest.mark.parametrize("name", CONFIGS)
def test_corpus_config_imports_to_exactly_its_expectation(tmp_path, name):
    expect = tomllib.loads((CORPUS / name.replace(".lua", ".expect.toml")).read_text())
    got = import_corpus(name, tmp_path)
    assert got["exit"] == expect["exit"], got["messages"]
    assert got["messages"] == expect["messages"]
    assert got["doc"] == expect.get("doc", {})
    # exit 2 exactly when something was dropped, each said in one line
    dropped = [m for m in got["messages"] if m.startswith("dropped: ")]
    assert (got["exit"] == 2) == bool(dropped)


@pytest.mark.parametrize("setting", MANUAL, ids=lambda s: s.name)
def test_every_documented_setting_is_used_by_a_corpus_config(setting):
    texts = {name: (CORPUS / name).read_text() for name in CONFIGS}
    users = [n for n, t in texts.items() if re.search(setting.pattern, t)]
    assert users, f"no corpus config uses {setting.name} (pattern {setting.pattern})"


def _docs_table_names() -> list[str]:
    text = DOCS.read_text()
    section = text.split("## Every Lsyncd setting", 1)[1].split("\n## ", 1)[0]
    names: list[str] = []
    for row in section.splitlines():
        if row.startswith("| `"):
            names += re.findall(r"`([^`]+)`", row.split(" | ", 1)[0])
    return names


def test_the_docs_table_lists_every_documented_setting_once():
    names = _docs_table_names()
    assert sorted(names) == sorted({s.name for s in MANUAL}), (
        f"missing: {sorted({s.name for s in MANUAL} - set(names))}; "
        f"unknown: {sorted(set(names) - {s.name for s in MANUAL})}")
    assert len(names) == len(set(names))


def test_settings_lsyncd_2_2_3_refuses_are_in_the_manual_list():
    assert {s.name for s in MANUAL} >= REFUSED_BY_2_2_3


# ------------------------------------------------- importer rules it brought up
def _one(config: dict[Any, Any]):
    base = {"action": None, "source": "/srv/a", "target": "/mnt/a", "delay": 1,
            "rsync": {"binary": "/usr/bin/rsync", "archive": True}}
    from syncsup.lsyncd._lua import LuaFunction

    base["action"] = LuaFunction(builtin="default.rsync.action")
    base.update(config)
    imported = map_config(Recorded(syncs=[RecordedSync(index=1, line=3, config=base)]),
                          Path("/"))
    return imported.doc, [m.line() for m in imported.messages]


def test_an_exit_code_table_that_agrees_with_syncsup_is_a_note():
    """23 as "again" is what syncsup does (retry): nothing dropped."""
    doc, lines = _one({"exitcodes": {**RSYNC_EXIT, 23: "again"}})
    assert doc["sync"] and not [ln for ln in lines if ln.startswith("dropped")], lines
    assert any("exitcodes: the codes it changes (23) are classified so by syncsup" in ln
               for ln in lines), lines


def test_an_exit_code_table_that_disagrees_names_the_codes():
    _doc, lines = _one({"exitcodes": {**RSYNC_EXIT, 23: "again", 12: "die", 24: "again"}})
    (line,) = [ln for ln in lines if ln.startswith("dropped")]
    assert "rsync exit code 12, 24 otherwise" in line, line


def test_an_exit_code_table_without_code_0_says_lsyncd_stopped():
    """{ [0] = "ok", [1] = "die" } written out reaches Lsyncd as { "die" }
    (no _verbatim marker): Lsyncd stops on the first exit 0."""
    _doc, lines = _one({"sshExitCodes": {1: "die"}, "rsyncExitCodes": {1: "die"}})
    dropped = [ln for ln in lines if ln.startswith("dropped")]
    assert len(dropped) == 2 and all("no entry for exit code 0" in ln for ln in dropped), lines
    assert "copy default.sshExitCodes" in dropped[1], dropped


def test_xargs_of_lsyncd_2_1_is_a_note():
    doc, lines = _one({"xargs": {"binary": "/usr/bin/xargs"}})
    assert doc["sync"] and not [ln for ln in lines if ln.startswith("dropped")], lines
    assert any("xargs: Lsyncd 2.1 batched" in ln for ln in lines), lines


def test_copy_unsafe_links_is_mapped_and_noted():
    doc, lines = _one({"rsync": {"archive": True, "copy_unsafe_links": True}})
    assert doc["sync"][0]["rsync"]["extra"] == ["--copy-unsafe-links"]
    assert any("Lsyncd 2.2 refuses this key" in ln for ln in lines), lines


def test_same_source_different_settings_is_said_once_per_sync():
    from syncsup.lsyncd._lua import LuaFunction

    syncs = [RecordedSync(index=i, line=i, config={
        "action": LuaFunction(builtin="default.rsync.action"), "source": "/srv/a",
        "target": f"/mnt/{i}", "delay": i, "rsync": {"archive": True}}) for i in (1, 2, 3)]
    lines = [m.line() for m in map_config(Recorded(syncs=syncs), Path("/")).messages]
    assert len([ln for ln in lines if "same source as" in ln]) == 2, lines


def test_an_unset_variable_is_noted_as_unset():
    imported = map_config(Recorded(getenv=[("HOME_BASE", None)]), Path("/"))
    assert any("HOME_BASE was read at import time (unset)" in m.line()
               for m in imported.messages)


# ----------------------------------------------------------- expectations
def write_expectations(tmp: Path) -> None:
    """(Re)write every NAME.expect.toml from the importer as it is now."""
    for name in CONFIGS:
        got = import_corpus(name, tmp)
        doc = {"exit": got["exit"], "messages": got["messages"]}
        if got["doc"]:
            doc["doc"] = got["doc"]
        (CORPUS / name.replace(".lua", ".expect.toml")).write_text(
            "# What import-lsyncd makes of the config of the same name (written by\n"
            "# tests/unit/test_unit_lsyncd_corpus.py, reviewed by hand).\n"
            + tomli_w.dumps(doc))
        print(name, got["exit"], file=sys.stderr)


if __name__ == "__main__":
    import os
    import tempfile

    os.environ.pop("LSYNCD_CORPUS_UNSET", None)
    with tempfile.TemporaryDirectory() as d:
        write_expectations(Path(d))
