"""The markdown of docs/config.md as man(7) roff, for syncsup.toml(5).

Only the subset the docs use: headings, paragraphs, tables (as lists of
tagged paragraphs, see :func:`_table`), fenced code blocks, bullet and
numbered lists, and inline code, emphasis and links. Anything else (a
quote, raw HTML other than a one-line comment, a nested list) is an error
naming the line: the page is
generated and checked in, so a construct this does not know must fail the
generator rather than come out garbled.
"""

from __future__ import annotations

import re

from syncsup._docgen.roff import Page, inline, text

__all__ = ["UnsupportedMarkdown", "convert", "plain"]

_HEADING = re.compile(r"^(#{1,4}) (.+)$")
_BULLET = re.compile(r"^[-*] (.*)$")
_NUMBERED = re.compile(r"^(\d+)\. (.*)$")
_UNSUPPORTED = re.compile(r"^(>|<|\s+[-*] |\s*\d+\) |={3,}$|-{3,}$)")


class UnsupportedMarkdown(ValueError):
    """A construct outside the supported subset."""


def plain(s: str) -> str:
    """Inline markup removed (for headings): ```x``` and ``*x*`` become x."""
    s = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", s)
    return re.sub(r"`([^`]+)`|\*\*?([^*]+)\*\*?", lambda m: m.group(1) or m.group(2), s)


def _cells(row: str) -> list[str]:
    """The cells of ``| a | b |``; a ``|`` inside a code span or written
    ``\\|`` does not split."""
    cells, cur, in_code = [], "", False
    body = row.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and body[i + 1:i + 2] == "|":
            cur += "|"
            i += 2
            continue
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1
    cells.append(cur.strip())
    return cells


def _table(page: Page, rows: list[str], lineno: int) -> None:
    """A table as a list of tagged paragraphs, one per row: the first cell
    is the tag, the others follow as ``header: value`` lines (just the
    value in a two-column table). Prose columns squeezed side by side into
    80 terminal columns (tbl) are unreadable; a row per paragraph reads
    like the rest of a man page."""
    header = _cells(rows[0])
    if len(rows) < 2 or not re.fullmatch(r"\|?[\s:|-]+\|?", rows[1].strip()):
        raise UnsupportedMarkdown(f"line {lineno}: a table needs a |---| row under its header")
    for n, cells in enumerate(_cells(r) for r in rows[2:]):
        if len(cells) != len(header):
            raise UnsupportedMarkdown(f"line {lineno + 2 + n}: {len(cells)} cells, the header "
                                      f"has {len(header)}")
        page.request("TP")
        page.raw(inline(cells[0]) or "\\&")
        if len(header) == 2:
            page.raw(inline(cells[1]))
            continue
        for i, (name, cell) in enumerate(zip(header[1:], cells[1:], strict=True)):
            if i:
                page.request("br")
            page.raw(f"\\fI{text(plain(name))}:\\fR {inline(cell or '-')}")


def convert(md: str, page: Page) -> None:
    """Append ``md`` to ``page``: ``#`` is the page's title and is skipped,
    ``##`` a section, ``###`` a subsection, ``####`` a bold paragraph."""
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        lineno = i + 1
        if not line.strip() or re.fullmatch(r"<!--.*-->", line.strip()):
            i += 1  # blank, or a marker comment (see syncsup._docgen.keys)
            continue
        if line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise UnsupportedMarkdown(f"line {lineno}: code block never closed")
            page.example(lines[i + 1:end])
            i = end + 1
            continue
        heading = _HEADING.match(line)
        if heading:
            level, title = len(heading.group(1)), plain(heading.group(2))
            if level == 2:
                page.section(title)
            elif level == 3:
                page.subsection(title)
            elif level == 4:
                page.para(f"\\fB{text(title)}\\fR")
            i += 1
            continue
        if line.startswith("|"):
            end = i
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            _table(page, lines[i:end], lineno)
            i = end
            continue
        if _UNSUPPORTED.match(line):
            raise UnsupportedMarkdown(f"line {lineno}: not in the supported markdown subset: "
                                      f"{line!r}")
        item = _BULLET.match(line) or _NUMBERED.match(line)
        # a paragraph, or a list item with its continuation lines
        end = i + 1
        while (end < len(lines) and lines[end].strip() and not lines[end].startswith(("```", "|"))
               and not _HEADING.match(lines[end]) and not _BULLET.match(lines[end])
               and not _NUMBERED.match(lines[end])):
            end += 1
        first = item.group(item.lastindex or 1) if item else line
        words = " ".join([first.strip(), *(ln.strip() for ln in lines[i + 1:end])])
        if item is None:
            page.para(inline(words))
        else:
            mark = "\\(bu" if _BULLET.match(line) else f"{item.group(1)}."
            page.request("IP", mark, "4")
            page.raw(inline(words))
        i = end
