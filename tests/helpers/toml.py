"""Render the small subset of TOML that syncsup configs use (and bad ones for tests)."""

from __future__ import annotations

import math
import tomllib
from typing import Any


def _key(k: str) -> str:
    if k and all(c.isalnum() or c in "-_" for c in k) and k.isascii():
        return k
    return _str(k)


def _str(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04X}")
        elif 0xD800 <= o <= 0xDFFF:
            raise ValueError(f"lone surrogate in TOML string: {s!r}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {value(x)}" for k, x in v.items()) + "}"
    if hasattr(v, "__fspath__"):
        return _str(str(v.__fspath__()))
    raise TypeError(f"cannot render {type(v).__name__} as TOML")


def _table(lines: list[str], header: str | None, d: dict) -> None:
    scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and not _is_aot(v)}
    tables = {k: v for k, v in d.items() if isinstance(v, dict)}
    aots = {k: v for k, v in d.items() if _is_aot(v)}
    if header is not None:
        lines.append(header)
    for k, v in scalars.items():
        lines.append(f"{_key(k)} = {value(v)}")
    lines.append("")
    prefix = header.strip("[]") + "." if header else ""
    for k, v in tables.items():
        _table(lines, f"[{prefix}{_key(k)}]", v)
    for k, items in aots.items():
        for item in items:
            _table(lines, f"[[{prefix}{_key(k)}]]", item)


def _is_aot(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dumps(doc: dict) -> str:
    """TOML text for ``doc``; verified by parsing it back with tomllib."""
    lines: list[str] = []
    _table(lines, None, doc)
    text = "\n".join(lines).strip() + "\n"
    back = tomllib.loads(text)
    assert back == _normalise(doc), f"TOML renderer round-trip mismatch:\n{text}"
    return text


def _normalise(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _normalise(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_normalise(x) for x in v]
    if hasattr(v, "__fspath__"):
        return str(v.__fspath__())
    return v
