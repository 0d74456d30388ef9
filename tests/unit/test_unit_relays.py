"""``syncsup status --relays`` against a hostile relay: whatever the relay's
host answers (it is not ours), the command neither crashes, nor fills the
memory, nor writes control sequences to the operator's terminal. The relay
is played by a small Python program in place of ssh."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from syncsup import config, relays


def _relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str) -> relays.Relay:
    prog = tmp_path / "relay.py"
    prog.write_text(code)
    monkeypatch.setattr(relays, "status_argv", lambda sync, target: [sys.executable, str(prog)])
    conf = config.parse({"sync": [{"source": str(tmp_path), "targets": [
        {"host": "relay", "path": "/srv/m", "relay": True}]}]}, tmp_path / "c.toml")
    sync = conf.syncs[0]
    return relays.ask(sync, sync.targets[0], timeout=20)


def _answer(status: Any, age: Any = 1.0) -> str:
    return f"import sys; sys.stdout.write({json.dumps({'status': status, 'age': age})!r})\n"


def test_an_answer_without_end_is_cut_at_the_limit(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    t0 = time.monotonic()
    r = _relay(tmp_path, monkeypatch, "import sys\nwhile True: sys.stdout.write('x' * 65536)\n")
    assert r.status is None and r.error is not None and "more than" in r.error, r
    assert time.monotonic() - t0 < 15


def test_a_relay_that_never_answers_is_given_up(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    prog = tmp_path / "relay.py"
    prog.write_text("import time; time.sleep(60)\n")
    monkeypatch.setattr(relays, "status_argv", lambda sync, target: [sys.executable, str(prog)])
    conf = config.parse({"sync": [{"source": str(tmp_path), "targets": [
        {"host": "relay", "path": "/srv/m", "relay": True}]}]}, tmp_path / "c.toml")
    r = relays.ask(conf.syncs[0], conf.syncs[0].targets[0], timeout=1)
    assert r.status is None and r.error == "no answer within 1s", r


@pytest.mark.parametrize("body", [
    "import sys; sys.stdout.write('[' * 200000 + ']' * 200000)",          # recursion
    "import sys; sys.stdout.write('{\"status\": {\"syncs\": []}, \"age\": NaN}')",
    "import sys; sys.stdout.write('{\"status\": {\"syncs\": []}, \"age\": 1e400}')",
    "import sys; sys.stdout.write('not json')",
    _answer({"syncs": []}, age=True),
])
def test_a_malformed_answer_is_an_error_not_a_crash(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    body: str) -> None:
    r = _relay(tmp_path, monkeypatch, body + "\n")
    assert r.status is None and r.error == "the answer is not a syncsup status", r


def test_hostile_fields_are_shown_safely(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    status = {"syncs": [{"targets": [
        {"target": "\x1b]0;owned\x07\x1b[2Jt", "state": "\x9b31mred", "pending": "x",
         "lag": 10 ** 400},
        {"target": "ok", "state": "idle", "pending": 3, "lag": 2.0}]}, "junk"]}
    r = _relay(tmp_path, monkeypatch, _answer(status))
    assert r.status is not None, r
    text = relays.format_relays([r])
    assert "\x1b" not in text and "\x9b" not in text and "\x07" not in text, repr(text)
    assert "?]0;owned??[2Jt" in text
    assert "lag 2s" in text and "      3" in text


def test_the_last_error_line_is_shown_without_control_characters(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = _relay(tmp_path, monkeypatch,
               "import sys; sys.stderr.write('boom\\x1b[31m red\\n'); sys.exit(3)\n")
    assert r.error == "exit 3: boom?[31m red", r
