"""The key tables of docs/config.md, filled in from ``syncsup.config_keys``.

docs/config.md keeps its prose; each key table sits between two marker
lines, ``<!-- keys SECTION -->`` and ``<!-- end keys -->``, and whatever is
between them is replaced by the table generated from the schema. Every
section of the schema must have its markers, so a new section cannot go
undocumented either.
"""

from __future__ import annotations

import re

from syncsup.config_keys import SECTIONS, table_markdown

__all__ = ["MARKER", "fill_key_tables"]

MARKER = re.compile(r"^<!-- keys (?P<section>[a-z.]+) -->\n(?P<body>.*?)^<!-- end keys -->$",
                    re.M | re.S)


def fill_key_tables(md: str) -> str:
    """``md`` with every marked key table regenerated. Raises ValueError
    for a marker naming no section, or a section without markers."""
    seen: list[str] = []

    def fill(m: re.Match[str]) -> str:
        section = m.group("section")
        if section not in SECTIONS:
            raise ValueError(f"docs/config.md: no config section {section!r} "
                             f"(known: {', '.join(SECTIONS)})")
        seen.append(section)
        return f"<!-- keys {section} -->\n{table_markdown(section)}\n<!-- end keys -->"

    out = MARKER.sub(fill, md)
    missing = [s for s in SECTIONS if s not in seen]
    if missing:
        raise ValueError(f"docs/config.md: no key table for {', '.join(missing)} (add "
                         f"'<!-- keys SECTION -->' and '<!-- end keys -->' lines)")
    return out
