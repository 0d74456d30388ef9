"""Writing man(7) roff: escaping, inline markup, and a page builder.

Every piece of text goes through :func:`text` (or :func:`code`), so no
character of a help string or of docs/config.md can start a roff request
or be turned into typography: ``-`` is written ``\\-`` (a real minus, so
options copied from a man page work), quotes, backquotes, ``^`` and ``~``
are written by name (groff would print them as curly quotes or accents in
UTF-8), and anything outside ASCII by its code point.
"""

from __future__ import annotations

import re

__all__ = ["Page", "code", "inline", "text"]

_NAMED = {
    "\\": "\\e", "-": "\\-", "'": "\\(aq", "`": "\\(ga", "^": "\\(ha", "~": "\\(ti",
    "\u2014": "\\(em", "\u2013": "\\(en", "\t": " ",
}


def text(s: str) -> str:
    """``s`` as roff text, to be placed inside a line (not at its start)."""
    out = []
    for ch in s:
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif ord(ch) > 126 or (ord(ch) < 32 and ch != "\n"):
            out.append(f"\\[u{ord(ch):04X}]")
        else:
            out.append(ch)
    return "".join(out)


def code(s: str) -> str:
    """A literal (command, option, key): bold."""
    return f"\\fB{text(s)}\\fR"


def var(s: str) -> str:
    """A placeholder (CONFIG, SECONDS): italic."""
    return f"\\fI{text(s)}\\fR"


_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*|\[([^\]]+)\]\(([^)]+)\)")


def inline(s: str) -> str:
    """Markdown inline markup to roff: ```code``` bold, ``*em*`` italic,
    ``**strong**`` bold, ``[text](link)`` its text. Code spans are taken
    first, so ``*`` inside them stays literal."""
    out: list[str] = []
    pos = 0
    for m in _INLINE.finditer(s):
        out.append(text(s[pos:m.start()]))
        literal, strong, em, label, _link = m.groups()
        if literal is not None:
            out.append(code(literal))
        elif strong is not None:
            out.append(code(strong))
        elif em is not None:
            out.append(var(em))
        else:
            out.append(text(label))
        pos = m.end()
    out.append(text(s[pos:]))
    return "".join(out)


def _line(s: str) -> str:
    """A text line: one starting with ``.`` or ``'`` would be a request."""
    return "\\&" + s if s.startswith((".", "'")) else s


class Page:
    """A man page being written, line by line."""

    def __init__(self, name: str, section: int, source: str, manual: str) -> None:
        # The date field stays empty: a page must not change with the day it
        # was generated on (the version says which syncsup it describes).
        self.lines: list[str] = []
        self.lines.append(f'.TH "{text(name.upper())}" "{section}" "" "{text(source)}" '
                          f'"{text(manual)}"')
        # Left-aligned, never hyphenated: the text is full of paths, options
        # and keys, which must read (and copy) as they are written.
        self.lines += [".ad l", ".nh"]

    def request(self, name: str, *args: str) -> None:
        """A request such as ``.SH``; arguments are quoted (already roff text)."""
        quoted = " ".join('"' + a.replace('"', '\\(dq') + '"' for a in args)
        self.lines.append(f".{name} {quoted}".rstrip())

    def raw(self, line: str) -> None:
        """A line of roff text (already escaped)."""
        self.lines.append(_line(line))

    def section(self, title: str) -> None:
        self.request("SH", text(title))

    def subsection(self, title: str) -> None:
        self.request("SS", text(title))

    def para(self, roff_text: str) -> None:
        self.request("PP")
        self.raw(roff_text)

    def tagged(self, tag: str, roff_text: str) -> None:
        """A tagged paragraph: ``tag`` on its line, ``roff_text`` indented below."""
        self.request("TP")
        self.raw(tag)
        self.raw(roff_text)

    def example(self, lines: list[str]) -> None:
        """Lines kept as they are (code), indented."""
        self.request("PP")
        self.request("RS", "4")
        self.request("nf")
        for ln in lines:
            self.raw(text(ln) if ln else "\\&")  # a blank line is a paragraph break
        self.request("fi")
        self.request("RE")

    def render(self) -> str:
        return "\n".join(self.lines) + "\n"
