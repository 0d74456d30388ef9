"""Text from outside shown safely (syncsup/text.py) and the log's one line
per record."""

from __future__ import annotations

import io
import logging

from syncsup.logs import _LineFormatter
from syncsup.text import escaped, printable


def test_printable_replaces_every_control_character_and_bounds_the_length() -> None:
    assert printable("a\x1b]0;t\x07b\x9bc\rd\ne\x7f") == "a?]0;t?b?c?d?e?"
    assert printable("x" * 500, 10) == "x" * 10
    assert printable("sp ace, ünïcode, \\back") == "sp ace, ünïcode, \\back"


def test_escaped_writes_control_characters_as_escapes() -> None:
    assert escaped("new\nline\ttab\rcr\x1b[2J\x9b\x00") == \
        "new\\nline\\ttab\\rcr\\x1b[2J\\x9b\\x00"
    assert escaped("plain ünïcode") == "plain ünïcode"


def test_a_record_is_one_line_whatever_its_arguments_hold() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(_LineFormatter("%(levelname)s x: %(message)s"))
    log = logging.getLogger("syncsup.test.text")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("renamed %s", "a\nWARNING x: forged\x1b[2J")
    finally:
        log.removeHandler(handler)
    assert out.getvalue() == "WARNING x: renamed a\\nWARNING x: forged\\x1b[2J\n"
