"""The generated documentation: man pages and shell completion are current
(regenerated into a temp dir and compared with the checked-in files), the
pages render without a warning, completion loads in bash, and ``--help``,
``--version`` and the man pages say the same things."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from syncsup import __version__
from syncsup._docgen import REGENERATE, generate
from syncsup._docgen.markdown import UnsupportedMarkdown, convert
from syncsup._docgen.roff import Page, inline, text

REPO = Path(__file__).resolve().parents[2]
GENERATED_DIRS = ("man", "completion")
PAGES = ("man/syncsup.1", "man/syncsup-target.1", "man/syncsup.toml.5")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    return env


def _run(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_env(),
                          check=False, **kw)  # type: ignore[call-overload]


def _norm(s: str) -> str:
    """Words only: line breaks, hyphenation and spacing differ between
    argparse and a man renderer."""
    return " ".join(s.replace("\u2010", "-").split())


# ------------------------------------------------------------ staleness
def test_checked_in_files_are_current(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    shutil.copy(REPO / "docs" / "config.md", tmp_path / "docs" / "config.md")
    r = _run(sys.executable, "-m", "syncsup._docgen", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    fresh = {p.relative_to(tmp_path).as_posix() for d in GENERATED_DIRS
             for p in (tmp_path / d).rglob("*") if p.is_file()}
    checked_in = {p.relative_to(REPO).as_posix() for d in GENERATED_DIRS
                  for p in (REPO / d).rglob("*") if p.is_file()}
    stale = sorted(rel for rel in fresh | checked_in
                   if rel not in fresh or rel not in checked_in
                   or (tmp_path / rel).read_bytes() != (REPO / rel).read_bytes())
    assert not stale, (f"generated files are stale: {', '.join(stale)}; run `{REGENERATE}` "
                       "in the checkout to regenerate them, and commit the result")


def test_output_is_deterministic() -> None:
    assert generate(REPO) == generate(REPO)
    for rel, content in generate(REPO).items():
        assert str(REPO) not in content, f"{rel} names this checkout's path"


# ------------------------------------------------------------ rendering
def test_pages_are_well_formed_roff() -> None:
    for rel in PAGES:
        lines = (REPO / rel).read_text("ascii").splitlines()  # ASCII only: escapes
        assert lines[0].startswith(".TH "), f"{rel}: first line {lines[0]!r}"
        sections = [ln for ln in lines if ln.startswith(".SH ")]
        for name in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
            assert f'.SH "{name}"' in sections, f"{rel}: no {name} section"
        known = {"TH", "SH", "SS", "PP", "TP", "IP", "RS", "RE", "nf", "fi", "br", "ad", "nh"}
        for n, ln in enumerate(lines, 1):
            if ln.startswith((".", "'")):
                req = ln[1:].split(" ", 1)[0]
                assert req in known, f"{rel}:{n}: unexpected request {ln!r}"
            assert ln.strip() != "", f"{rel}:{n}: blank line (a paragraph break in roff)"


@pytest.mark.skipif(shutil.which("groff") is None,
                    reason="groff not installed (scripts/install-deps.sh installs groff-base)")
@pytest.mark.parametrize("rel", PAGES)
def test_pages_render_without_warnings(rel: str) -> None:
    r = _run("groff", "-man", "-Tutf8", "-ww", "-z", str(REPO / rel))
    assert r.returncode == 0 and not r.stderr, f"groff on {rel}:\n{r.stderr}"
    if shutil.which("man"):
        r = _run("man", "--warnings", "-l", str(REPO / rel))
        assert r.returncode == 0 and not r.stderr, f"man -l {rel}:\n{r.stderr}"


def _rendered(rel: str) -> str:
    if shutil.which("groff") is None:
        pytest.skip("groff not installed")
    r = _run("groff", "-man", "-Tutf8", "-P-cbou", str(REPO / rel))
    assert r.returncode == 0, r.stderr
    return _norm(r.stdout)


def test_syncsup_page_has_every_command_option_and_exit_status() -> None:
    from syncsup import cli

    page = _rendered("man/syncsup.1")
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices is not None
    for name, cmd in dict(sub.choices).items():
        assert f"syncsup {name}" in page, name
        assert _norm(cmd.description or "") in page, f"{name}'s description"
        for action in cmd._actions:
            for opt in action.option_strings:
                assert opt in page, f"{name} {opt}"
            assert _norm(action.help or "") in page, f"{name} {action.dest}'s help"
    for code, meaning in cli.EXIT_STATUS:
        assert f"{code} {_norm(meaning)}" in page, code
    for sigs, meaning in cli.SIGNALS:
        assert f"{sigs} {_norm(meaning)}" in page, sigs


def test_config_page_has_every_key_of_config_md() -> None:
    page = _rendered("man/syncsup.toml.5")
    md = (REPO / "docs" / "config.md").read_text()
    keys = re.findall(r"^\| `([a-z_]+)`", md, flags=re.M)
    assert len(keys) > 20, keys
    for key in keys:
        assert key in page, key
    assert 'on_create = ["/bin/sh", "-c", \'logger -t mirror "new: $1"\', "sh", "{path}"]' \
        in page, "the command mode example, verbatim"


# ------------------------------------------------------ --help, --version
def test_versions() -> None:
    r = _run(sys.executable, "-m", "syncsup", "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"syncsup {__version__}", r
    r = _run(sys.executable, "-P", "-m", "syncsup.target", "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"syncsup-target {__version__}", r


def test_target_help_says_what_its_page_says() -> None:
    from syncsup.target import _command as target

    r = _run(sys.executable, "-P", "-m", "syncsup.target", "--help")
    assert r.returncode == 0, r.stderr
    shown, page = _norm(r.stdout), _rendered("man/syncsup-target.1")
    texts = [target.DESCRIPTION, target.EXAMPLE]
    texts += [t for pair in target.REQUESTS for t in pair]
    texts += [t for _, t in target.EXIT_STATUS] + [t for pair in target.ENVIRONMENT for t in pair]
    for t in texts:
        for para in t.split("\n\n"):
            assert _norm(para) in shown, f"--help lacks: {para[:60]!r}"
            assert _norm(para) in page, f"the man page lacks: {para[:60]!r}"


def test_target_without_root_is_a_usage_error() -> None:
    r = _run(sys.executable, "-P", "-m", "syncsup.target", "relative/root")
    assert r.returncode == 2
    assert r.stderr.startswith("usage: syncsup-target [--allow-without=MECHANISM] "
                               "[--relay-status=FILE] ROOT"), r.stderr


# ------------------------------------------------------------ completion
@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_loads_and_completes() -> None:
    script = REPO / "completion" / "syncsup.bash"
    r = _run("bash", "-c", f'source "{script}" && complete -p syncsup')
    assert r.returncode == 0 and "syncsup" in r.stdout, r.stdout + r.stderr

    def complete(*words: str) -> list[str]:
        cmd = (f'source "{script}"; COMP_WORDS=({" ".join(repr(w) for w in words)}); '
               f'COMP_CWORD={len(words) - 1}; _shtab_syncsup; printf "%s\\n" "${{COMPREPLY[@]}}"')
        out = _run("bash", "-c", cmd)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert complete("syncsup", "st") == ["start", "status", "stop"]
    assert "--source" in complete("syncsup", "start", "--s")
    assert complete("syncsup", "start", "--mode", "") == ["rsync", "rsyncssh", "direct"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="no zsh")
def test_zsh_completion_parses_and_lists_commands_and_options() -> None:
    script = REPO / "completion" / "_syncsup"
    r = _run("zsh", "-n", str(script))
    assert r.returncode == 0, r.stderr
    # Loaded outside a completion widget: zsh's own _arguments and _describe
    # only run inside one, so they print what they were given instead.
    r = _run("zsh", "-fc", "_arguments() { :; }; _describe() { print -l -- ${(P)2}; }; "
             f"source {str(script)!r}; _shtab_syncsup_commands; "
             "print -l -- ${_shtab_syncsup_start_options[@]}")
    assert r.returncode == 0, r.stderr
    commands = [ln.split(":", 1)[0] for ln in r.stdout.splitlines() if ":" in ln
                and not ln.startswith(("(", "-", "*", ":"))]
    assert {"start", "status", "stop", "check", "import-lsyncd"} <= set(commands), r.stdout
    assert "--mode[how targets are reached" in r.stdout
    assert ":mode:(rsync rsyncssh direct)" in r.stdout


# ------------------------------------------------------- the converter
def _convert(md: str) -> str:
    page = Page("t", 5, "s", "m")
    convert(md, page)
    return page.render()


def test_nothing_becomes_a_roff_request() -> None:
    out = _convert(".TH evil\n\n'also evil\n\n```\n.SH x\n\\fB\n```\n")
    body = out.splitlines()[3:]  # after .TH, .ad, .nh
    assert not any(ln.startswith((".TH", ".SH", "'")) for ln in body), out
    assert "\\e" in out and "\\efB" in out
    assert text("a-b 'c' `d` ~^ \u00e9") == "a\\-b \\(aqc\\(aq \\(gad\\(ga \\(ti\\(ha \\[u00E9]"


def test_inline_markup() -> None:
    assert inline("`*x*` and *em* and [t](http://x)") == "\\fB*x*\\fR and \\fIem\\fR and t"


@pytest.mark.parametrize("md, line", [
    ("ok\n\n> quoted\n", 3),
    ("```\nnever closed\n", 1),
    ("| a | b |\n|---|---|\n| only one |\n", 3),
    ("| a | b |\n| c | d |\n", 1),
])
def test_unsupported_markdown_names_the_line(md: str, line: int) -> None:
    with pytest.raises(UnsupportedMarkdown, match=f"^line {line}:"):
        _convert(md)
