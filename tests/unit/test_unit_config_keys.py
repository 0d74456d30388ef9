"""The config schema (``syncsup.config_keys``) and the parser agree: every
key the parser reads is documented, every documented key is accepted, an
undocumented key is refused, and the generated docs list every key."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from syncsup import config, config_keys
from syncsup._docgen import generate
from syncsup._docgen.keys import fill_key_tables
from syncsup.config import ConfigError
from syncsup.timings import Timings

REPO = Path(__file__).resolve().parents[2]
FAKE = Path("/tmp/x.toml")

# A value for every documented key (each section parsed in one config below).
SAMPLES: dict[str, dict[str, Any]] = {
    "settings": {
        "state_dir": "/var/lib/x", "log_level": "debug", "log_file": "/var/log/x.log",
        "log_format": "json", "max_processes": 2, "metrics": "127.0.0.1:9473",
        "status_file": "/var/log/x.status", "status_interval": 5, "strict_rsync": True,
    },
    "sync": {
        "name": "www", "source": "/srv/www", "mode": "rsyncssh", "delay": 0.5,
        "delete": "running", "init": False, "max_delays": 10, "max_delete": 5,
        "full_sync_interval": 60, "startup_checksum": True, "agent_max_size": 0,
        "exclude": ["*.swp"],
        "filter": ["- *.tmp"], "ssh": {}, "rsync": {},
        "targets": ["h1:/srv/www"],
    },
    "sync.targets": {"path": "/srv/b", "host": "h2", "user": "backup", "confined": True,
                     "relay": True},
    "sync.ssh": {
        "host": "h1", "user": "u", "port": 2222, "identity_file": "/id", "options": ["A=b"],
        "confined": False, "target_command": "/usr/local/bin/syncsup-target", "agent_idle": 30,
        "master_idle": 120,
    },
    "sync.rsync": {
        "binary": "rsync", "archive": True, "compress": True, "checksum": True,
        "bwlimit": "10M", "chown": "a:b", "chmod": "D755", "usermap": "1:2", "groupmap": "3:4",
        "extra": ["--acls"], "timeout": 60,
    },
    "sync.rsyncd": {"port": 8730},
    # Each field twice its default: not the default, and the relations
    # between fields (a timeout at least two heartbeats...) still hold.
    "timings": {f.name: 2 * f.default for f in dataclasses.fields(Timings)},
}
# Keys whose sample needs a file or another mode: parsed in their own configs.
FILE_KEYS = {"exclude_from", "filter_from", "rsyncd"}
COMMAND_KEYS = {"on_create", "on_modify", "on_delete", "on_move", "on_startup", "action"}
RSYNCD_FILE_KEYS = {"password_file"}  # needs a private file and a daemon target


def _section(where: str) -> str:
    """``sync[0].targets[1]`` -> ``sync.targets``."""
    return re.sub(r"\[\d+\]", "", where)


def _full_doc() -> dict[str, Any]:
    sync = dict(SAMPLES["sync"])
    sync["ssh"] = dict(SAMPLES["sync.ssh"])
    sync["rsync"] = dict(SAMPLES["sync.rsync"])
    sync["targets"] = ["h1:/srv/www", dict(SAMPLES["sync.targets"])]
    return {"settings": dict(SAMPLES["settings"]), "sync": [sync],
            "timings": dict(SAMPLES["timings"])}


def _command_doc(tmp_path: Path) -> dict[str, Any]:
    rules = tmp_path / "rules"
    rules.write_text("*.tmp\n")
    return {"settings": {"state_dir": "/var/lib/x"}, "sync": [{
        "name": "cmd", "source": "/srv/c", "mode": "command",
        "exclude_from": str(rules), "filter_from": str(rules),
        **{k: ["/bin/true", "{path}"] for k in COMMAND_KEYS - {"action"}},
    }, {
        "name": "act", "source": "/srv/d", "mode": "command", "action": "pkg.mod:Act",
    }, {
        "name": "daemon", "source": "/srv/e", "targets": ["backup@h3::mirror/www"],
        "rsyncd": {**SAMPLES["sync.rsyncd"], "password_file": str(_password_file(tmp_path))},
    }]}


def _password_file(tmp_path: Path) -> Path:
    pw = tmp_path / "rsync.password"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    return pw


def test_samples_cover_every_documented_key() -> None:
    for section in config_keys.SECTIONS:
        extra = FILE_KEYS | COMMAND_KEYS if section == "sync" else set()
        extra |= RSYNCD_FILE_KEYS if section == "sync.rsyncd" else set()
        assert config_keys.names(section) == set(SAMPLES[section]) | extra, section


def test_every_documented_key_is_accepted(tmp_path: Path) -> None:
    conf = config.parse(_full_doc(), FAKE)
    assert conf.settings.metrics == "127.0.0.1:9473"
    assert conf.timings == Timings(**SAMPLES["timings"])
    assert conf.syncs[0].targets[1].confined
    command = config.parse(_command_doc(tmp_path), FAKE)
    assert command.syncs[1].commands.action == "pkg.mod:Act"
    assert command.syncs[2].rsyncd.password_file == _password_file(tmp_path)
    assert command.syncs[2].targets[0].port == 8730


def test_every_key_the_parser_reads_is_documented(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Ask the parser itself: every key it looks up, present or not (a
    lookup with a default happens either way), must be in the schema of
    its section. A key added to the parser alone fails here."""
    asked: set[tuple[str, str]] = set()
    real_pop = config._pop

    def recording_pop(table: dict[str, Any], key: str, *args: Any, **kw: Any) -> Any:
        asked.add((_section(args[1] if len(args) > 1 else kw["where"]), key))
        return real_pop(table, key, *args, **kw)

    monkeypatch.setattr(config, "_pop", recording_pop)
    config.parse(_full_doc(), FAKE)
    config.parse(_command_doc(tmp_path), FAKE)
    assert {s for s, _ in asked} == set(config_keys.SECTIONS)
    undocumented = sorted(f"{s}.{k}" for s, k in asked if k not in config_keys.names(s))
    assert not undocumented, f"keys the parser reads but syncsup/config_keys.py lacks: " \
                             f"{undocumented}"


def test_tables_the_parser_pops_directly_are_documented() -> None:
    """Sub-tables are taken with ``table.pop("NAME", ...)``, not ``_pop``:
    find those in the parser's source."""
    tree = ast.parse((REPO / "syncsup" / "config.py").read_text())
    popped = {node.args[0].value for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "pop" and isinstance(node.func.value, ast.Name)
              and node.func.value.id == "table" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)}
    assert popped, "the parser pops no sub-table any more: update this test"
    assert popped <= config_keys.names("sync"), popped - config_keys.names("sync")


@pytest.mark.parametrize(("section", "where"), [
    ("settings", "settings"), ("sync", "sync[0]"), ("sync.ssh", "sync[0].ssh"),
    ("sync.rsync", "sync[0].rsync"), ("sync.targets", "sync[0].targets[1]"),
])
def test_an_undocumented_key_is_refused_naming_it(section: str, where: str) -> None:
    doc = _full_doc()
    table = {"settings": doc["settings"], "sync": doc["sync"][0],
             "sync.ssh": doc["sync"][0]["ssh"], "sync.rsync": doc["sync"][0]["rsync"],
             "sync.targets": doc["sync"][0]["targets"][1]}[section]
    table["no_such_key"] = 1
    with pytest.raises(ConfigError) as exc:
        config.parse(doc, FAKE)
    assert exc.value.key == f"{where}.no_such_key"
    assert str(exc.value) == f"{where}.no_such_key: unknown key"


def test_a_misspelt_key_gets_a_suggestion() -> None:
    doc = _full_doc()
    doc["settings"]["log_fiel"] = doc["settings"].pop("log_file")
    with pytest.raises(ConfigError, match=r"^settings\.log_fiel: unknown key \(did you mean "
                                          r"log_file\?\)$"):
        config.parse(doc, FAKE)


def test_defaults_shown_are_the_parsers() -> None:
    """A default not written by hand is the dataclass's, which the parser
    uses (``_default``): spot-check that the two cannot differ."""
    shown = {k.names[0]: config_keys.default_text("settings", k)
             for k in config_keys.SECTIONS["settings"][0]}
    assert shown["status_interval"] == f"`{config.Settings.status_interval}`"
    assert shown["log_format"] == f'`"{config.Settings.log_format}"`'
    assert shown["log_file"] == "none"


def test_docs_and_man_page_list_every_key() -> None:
    files = generate(REPO)
    md = (REPO / "docs" / "config.md").read_text("utf-8")
    assert md == files["docs/config.md"], \
        "docs/config.md is stale: run `PYTHONPATH=. python3 -m syncsup._docgen`"
    man = (REPO / "man" / "syncsup.toml.5").read_text("ascii").splitlines()
    tags = [man[i + 1] for i, ln in enumerate(man[:-1]) if ln == ".TP"]  # a table row's key
    for section in config_keys.SECTIONS:
        for name in config_keys.names(section):
            assert re.search(rf"^\| [^|]*`{name}`", md, re.M), \
                f"docs/config.md has no table row for {section}.{name}"
            assert any(f"\\fB{name}\\fR" in tag for tag in tags), \
                f"syncsup.toml(5) has no entry for {section}.{name}"


def test_every_section_needs_its_markers() -> None:
    md = (REPO / "docs" / "config.md").read_text("utf-8")
    broken = md.replace("<!-- keys sync.rsync -->", "<!-- no keys -->")
    with pytest.raises(ValueError, match=r"no key table for sync\.rsync"):
        fill_key_tables(broken)
    with pytest.raises(ValueError, match="no config section 'nope'"):
        fill_key_tables(md + "\n<!-- keys nope -->\n<!-- end keys -->\n")
