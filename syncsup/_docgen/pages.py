"""The man pages: syncsup(1) and syncsup-target(1) from their argument
parsers and the tables beside them (exit statuses, signals, files), and
syncsup.toml(5) from docs/config.md.

Nothing is written by hand here but the page skeletons (section order, SEE
ALSO): a new option, command or exit status shows up in the page the next
time it is generated, and the staleness test says so until it is.
"""

from __future__ import annotations

import argparse
import re

from syncsup import __version__
from syncsup._docgen import markdown
from syncsup._docgen.roff import Page, code, text, var

__all__ = ["config_page", "syncsup_page", "target_page"]

SOURCE = f"syncsup {__version__}"
MANUAL = "syncsup manual"


def _paragraphs(s: str) -> list[str]:
    """Blank-line separated paragraphs, each joined into one line."""
    return [" ".join(p.split()) for p in s.strip().split("\n\n") if p.strip()]


def _synopsis_word(word: str) -> str:
    """One word of a usage line: options and command words bold,
    placeholders (CONFIG, SECONDS) italic, brackets and ``|`` as they are."""
    m = re.fullmatch(r"([\[\]{(]*)(.*?)([\]}),]*)", word)
    assert m is not None
    head, core, tail = m.groups()
    if not core or core in ("...", "|"):
        return text(word)
    parts = []
    for alt in core.split("|"):
        parts.append(var(alt) if alt.isupper() else code(alt))
    return text(head) + "|".join(parts) + text(tail)


def _usage_lines(prog: str, parser: argparse.ArgumentParser) -> list[str]:
    """The usage lines of ``parser`` (its own ``usage`` if it has one),
    without ``-h``."""
    if parser.usage:
        return [" ".join(ln.split()) for ln in (parser.usage % {"prog": prog}).splitlines()]
    words = [prog]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            word = action.option_strings[-1]
            if action.nargs != 0:
                word += " " + _metavar(action)
            words.append(word if action.required else f"[{word}]")
        else:
            name = _metavar(action)
            words.append(f"[{name}]" if action.nargs == "?" else name)
    return [" ".join(words)]


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        return action.metavar
    if action.choices is not None:
        return "|".join(str(c) for c in action.choices)
    return action.dest.upper()


def _synopsis(page: Page, lines: list[str]) -> None:
    page.request("PP")
    for n, line in enumerate(lines):
        if n:
            page.request("br")
        page.raw(" ".join(_synopsis_word(w) for w in line.split()))


def _options(page: Page, parser: argparse.ArgumentParser, with_help: bool = False) -> None:
    """Every argument of ``parser`` by group (``-h`` only if ``with_help``:
    every command has it, the page says it once)."""
    skip: tuple[type, ...] = (argparse._SubParsersAction,)
    if not with_help:
        skip += (argparse._HelpAction,)
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, skip)]
        if not actions:
            continue
        if group.title not in ("positional arguments", "options") and group.title:
            page.para(f"\\fI{text(group.title)}:\\fR")
            for para in _paragraphs(group.description or ""):
                page.para(text(para))
        for action in actions:
            if action.option_strings:
                tag = ", ".join(code(o) for o in action.option_strings)
                if action.nargs != 0:
                    tag += " " + _synopsis_word(_metavar(action))
            else:
                tag = var(_metavar(action))
            page.tagged(tag, text(action.help or ""))


def _table(page: Page, rows: tuple[tuple[object, str], ...]) -> None:
    for key, meaning in rows:
        page.tagged(code(str(key)), text(meaning))


def syncsup_page() -> str:
    """syncsup(1), from :func:`syncsup.cli.build_parser`."""
    from syncsup import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    page = Page("syncsup", 1, SOURCE, MANUAL)
    page.section("NAME")
    page.raw(f"syncsup \\- {text(cli.SUMMARY)}")
    page.section("SYNOPSIS")
    lines: list[str] = []
    for name, cmd in sub.choices.items():
        lines += _usage_lines(f"syncsup {name}", cmd)
    lines.append("syncsup --version")
    _synopsis(page, lines)
    page.section("DESCRIPTION")
    for para in _paragraphs(parser.description or ""):
        page.para(text(para))
    page.para(f"Each command takes the config file, described in {code('syncsup.toml')}(5); "
              f"{code('syncsup start')} can also take the one mirror it runs from options.")
    page.section("COMMANDS")
    for name, cmd in sub.choices.items():
        page.subsection(f"syncsup {name}")
        _synopsis(page, _usage_lines(f"syncsup {name}", cmd))
        for para in _paragraphs(cmd.description or ""):
            page.para(text(para))
        _options(page, cmd)
    page.section("OPTIONS")
    _options(page, parser, with_help=True)
    page.para(f"Every command also takes {code('-h')}, {code('--help')}.")
    page.section("EXIT STATUS")
    _table(page, cli.EXIT_STATUS)
    page.section("SIGNALS")
    page.para(f"Sent to the {code('syncsup start')} process (systemd sends TERM to stop, "
              "HUP to reload):")
    _table(page, cli.SIGNALS)
    page.section("ENVIRONMENT")
    _table(page, cli.ENVIRONMENT)
    page.section("FILES")
    _table(page, cli.FILES)
    page.section("SEE ALSO")
    page.para(_see_also("syncsup-target(1)", "syncsup.toml(5)", "rsync(1)", "ssh(1)",
                        "systemd.service(5)", "lsyncd(1)"))
    page.para("The documentation beside the sources: docs/operations.md (service install, "
              "status, metrics, what each error means), docs/status.md, docs/security.md.")
    return page.render()


def _see_also(*refs: str) -> str:
    out = []
    for ref in refs:
        name, _, section = ref.partition("(")
        out.append(f"{code(name)}({section}")
    return ", ".join(out)


def target_page() -> str:
    """syncsup-target(1), from :func:`syncsup.target._command.build_parser`."""
    from syncsup.target import _command as target

    parser = target.build_parser()
    page = Page("syncsup-target", 1, SOURCE, MANUAL)
    page.section("NAME")
    page.raw(f"syncsup\\-target \\- {text(target.SUMMARY)}")
    page.section("SYNOPSIS")
    _synopsis(page, [*_usage_lines("syncsup-target", parser), "syncsup-target --help",
                     "syncsup-target --version"])
    page.section("DESCRIPTION")
    for para in _paragraphs(parser.description or ""):
        page.para(text(para))
    page.section("OPTIONS")
    _options(page, parser, with_help=True)
    page.section("REQUESTS")
    page.para("What the client may ask for, in $SSH_ORIGINAL_COMMAND (or as arguments "
              "without a forced command); anything else is refused:")
    for request, meaning in target.REQUESTS:
        page.tagged(" ".join(_synopsis_word(w) for w in request.split()), text(meaning))
    page.section("ENVIRONMENT")
    _table(page, target.ENVIRONMENT)
    page.section("EXIT STATUS")
    _table(page, target.EXIT_STATUS)
    page.section("EXAMPLES")
    page.para("In ~/.ssh/authorized_keys of the target account:")
    page.example([target.EXAMPLE])
    page.section("SEE ALSO")
    page.para(_see_also("syncsup(1)", "syncsup.toml(5)", "sshd(8)", "rsync(1)",
                        "rsyncd.conf(5)"))
    page.para("docs/security.md beside the sources: the threat model and confined keys.")
    return page.render()


def config_page(config_md: str) -> str:
    """syncsup.toml(5), from the text of docs/config.md."""
    page = Page("syncsup.toml", 5, SOURCE, MANUAL)
    page.section("NAME")
    page.raw("syncsup.toml \\- syncsup configuration file")
    page.section("SYNOPSIS")
    page.para(f"{var('/etc/syncsup/NAME.toml')}, or any file given to {code('syncsup')}")
    page.section("DESCRIPTION")
    markdown.convert(config_md, page)
    page.section("SEE ALSO")
    page.para(_see_also("syncsup(1)", "syncsup-target(1)", "rsync(1)", "ssh_config(5)"))
    return page.render()
