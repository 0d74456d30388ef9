"""``python -m syncsup._docgen [--check] [ROOT]``: write the generated docs
into the checkout at ROOT (default: the one this package is in), or with
``--check`` only say which are stale (exit 1)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from syncsup._docgen import REGENERATE, generate, stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m syncsup._docgen",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a generated file is stale")
    parser.add_argument("root", nargs="?", type=Path,
                        default=Path(__file__).resolve().parents[2],
                        help="the checkout (with docs/config.md)")
    args = parser.parse_args(argv)
    root: Path = args.root
    if not (root / "docs" / "config.md").is_file():
        parser.error(f"{root} is not a syncsup checkout (no docs/config.md)")
    if args.check:
        old = stale(root)
        for rel in old:
            print(f"stale: {rel}", file=sys.stderr)
        if old:
            print(f"run `{REGENERATE}` to regenerate", file=sys.stderr)
        return 1 if old else 0
    for rel, content in generate(root).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text("utf-8") != content:
            path.write_text(content, "utf-8")
            print(f"wrote {rel}")
    return 0


sys.exit(main())
