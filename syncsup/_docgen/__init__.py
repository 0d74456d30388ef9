"""Generated documentation: man pages and shell completion.

``python -m syncsup._docgen`` (from a checkout) rewrites, from the argument
parsers, the config schema (``syncsup.config_keys``) and docs/config.md:

* the key tables of ``docs/config.md`` (between its ``<!-- keys SECTION -->``
  markers; the prose around them is kept);
* ``deploy/syncsup@.service``, the unit ``syncsup unit`` writes, for a
  system-wide pip (``/usr/local/bin/syncsup``);
* ``man/syncsup.1``, ``man/syncsup-target.1``, ``man/syncsup.toml.5``;
* ``completion/syncsup.bash`` and ``completion/_syncsup`` (zsh), with shtab.

The files are checked in, so installing them needs neither this package's
test extras nor a build step, and a unit test regenerates them to catch a
parser or doc change made without regenerating. Output depends only on the
sources (and the package version): no dates, no paths of this machine.

Not imported by the daemon or the CLI: the generator is a development tool.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REGENERATE", "generate", "stale"]

REGENERATE = "PYTHONPATH=. python3 -m syncsup._docgen"


def generate(root: Path) -> dict[str, str]:
    """Every generated file (path relative to the checkout -> content), from
    the checkout at ``root`` (its docs/config.md)."""
    from syncsup import unit
    from syncsup._docgen.completion import SHELLS, completion
    from syncsup._docgen.keys import fill_key_tables
    from syncsup._docgen.pages import config_page, syncsup_page, target_page

    config_md = fill_key_tables((root / "docs" / "config.md").read_text("utf-8"))
    files = {
        "deploy/syncsup@.service": unit.render_unit(unit.DEFAULT_BINARY,
                                                    "man:syncsup(1) man:syncsup.toml(5)"),
        "docs/config.md": config_md,
        "man/syncsup.1": syncsup_page(),
        "man/syncsup-target.1": target_page(),
        "man/syncsup.toml.5": config_page(config_md),
    }
    for shell, path in SHELLS.items():
        files[path] = completion(shell)
    return files


def stale(root: Path) -> list[str]:
    """The generated files under ``root`` that are missing or differ from
    what :func:`generate` makes now."""
    out = []
    for rel, content in generate(root).items():
        path = root / rel
        if not path.is_file() or path.read_text("utf-8") != content:
            out.append(rel)
    return out
