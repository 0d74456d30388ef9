"""``syncsup import-lsyncd CONFIG.lua``: an Lsyncd config to a syncsup TOML.

The Lua config is executed in a real Lua 5.3 (the version Lsyncd 2.2 embeds)
inside a sandboxed child process (:mod:`syncsup.lsyncd._sandbox`), with
recording stand-ins for ``settings``, ``sync`` and the ``default`` layers;
what it recorded is mapped key by key (:mod:`syncsup.lsyncd._mapping`).

stdout carries only the TOML, so ``> sync.toml`` works; stderr carries one
line per finding. Exit status: 0 complete import (notes about settings with
no meaning for syncsup included); 2 partial (TOML printed, something that
changes behaviour dropped, each listed); 78 the Lua config is broken (one line:
syntax error with its line, runtime error, sandbox limit); 1 the file
cannot be read.
"""

from __future__ import annotations

import datetime
import sys
import tomllib
from pathlib import Path
from typing import IO

__all__ = ["EX_BROKEN", "EX_PARTIAL", "EX_UNREADABLE", "import_lsyncd", "render"]

EX_PARTIAL = 2
EX_BROKEN = 78
EX_UNREADABLE = 1
PROG = "syncsup import-lsyncd"


def render(doc: dict[str, object], source: Path, partial: bool,
           today: datetime.date | None = None) -> str:
    """The TOML text with a header naming where it came from and when.
    tomli-w writes the values (quoting, escapes, arrays of tables), so no
    file name can break the document."""
    import tomli_w

    name = str(source).replace("\n", "\\n")
    header = [f"# syncsup config imported from the Lsyncd config {name}",
              f"# by `syncsup import-lsyncd` on {(today or datetime.date.today()).isoformat()}.",
              "# Review it, then run: syncsup check THIS_FILE"]
    if partial:
        header.append("# PARTIAL IMPORT: the importer listed on stderr what it could not map.")
    return "\n".join(header) + "\n\n" + tomli_w.dumps(doc)


def import_lsyncd(path: str, stdout: IO[str] | None = None, stderr: IO[str] | None = None,
                  cwd: Path | None = None) -> int:
    """Convert the Lsyncd config at ``path``; the exit status (see above)."""
    from syncsup import config as cfg
    from syncsup.lsyncd._lua import LuaBroken, run_config
    from syncsup.lsyncd._mapping import map_config

    out = stdout or sys.stdout
    err = stderr or sys.stderr
    source = Path(path)
    try:
        text = source.read_bytes()
    except OSError as exc:
        print(f"{PROG}: cannot read {path}: {exc.strerror or exc}", file=err)
        return EX_UNREADABLE
    try:
        recorded, printed = run_config(text, source.name)
    except LuaBroken as exc:
        print(f"{PROG}: {exc}", file=err)
        return EX_BROKEN
    if printed:
        err.write(printed if printed.endswith("\n") else printed + "\n")
    base = cwd or Path.cwd()
    imported = map_config(recorded, base)
    msgs = imported.messages
    try:
        cfg.parse(tomllib.loads(render(imported.doc, source, False)), base / "imported.toml")
    except cfg.ConfigError as exc:
        if imported.doc.get("sync"):
            msgs.warning("syncsup check", f"will refuse this config until it is fixed: {exc}")
    try:
        toml = render(imported.doc, source.resolve(), msgs.partial)
        toml.encode("utf-8")
    except UnicodeEncodeError:
        print(f"{PROG}: {source.name}: the config holds text that is not UTF-8 (a path?), "
              "which a TOML file cannot carry", file=err)
        return EX_BROKEN
    for m in msgs:
        print(f"{PROG}: {m.line()}", file=err)
    out.write(toml)
    out.flush()
    return EX_PARTIAL if msgs.partial else 0
