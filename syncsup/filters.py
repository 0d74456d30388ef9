"""Which directories need no watch because rsync would exclude them anyway.

Not watching an excluded directory saves watches (a ``node_modules`` or a
cache can hold most of a tree's directories). The price of a mistake is
asymmetric: watching too much only costs a watch, watching too little loses
changes. So this module is deliberately conservative: rsync's filter rules
are first-match-wins, so only exclude rules that come *before* the first
include rule can be trusted, and rule kinds it does not understand stop the
list there too. Everything else is watched.

Pattern semantics follow rsync(1), "PATTERN MATCHING RULES": a leading ``/``
anchors at the source root, a trailing ``/`` matches only directories,
``*`` stays within one path component, ``**`` crosses ``/``, a pattern with a
``/`` in it (or ``**``) is matched against the whole path's tail, otherwise
against the last component; ``dir/***`` matches ``dir`` and all below it.

The rule files a sync names (``exclude_from``, ``filter_from``) are read
here too, once (:func:`expand_rule_files`), so that building command lines
(``syncer/argv.py``) stays pure.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from syncsup.config import Sync, rule_file_lines

__all__ = ["DirFilter", "RuleList", "exclude_patterns", "expand_rule_files", "plain_excludes"]

# How many directories' verdicts :meth:`RuleList.below_excluded` keeps: a
# batch's paths share a few directories, asked once per target and step.
_VERDICTS = 4096


def _translate(pattern: bytes) -> bytes:
    out = b""
    i = 0
    while i < len(pattern):
        c = pattern[i:i + 1]
        if pattern.startswith(b"**", i):
            out += b".*"
            i += 2
            continue
        if c == b"*":
            out += b"[^/]*"
        elif c == b"?":
            out += b"[^/]"
        elif c == b"[":
            end = pattern.find(b"]", i + 2)
            if end < 0:
                out += re.escape(c)
            else:
                body = pattern[i + 1:end].replace(b"\\", b"\\\\").replace(b"[", b"\\[")
                if body.startswith(b"!"):
                    body = b"^" + body[1:]
                out += b"[" + body + b"]"
                i = end
        else:
            out += re.escape(c)
        i += 1
    return out


class _Rule:
    def __init__(self, pattern: bytes) -> None:
        self.dir_only = pattern.endswith(b"/")
        pattern = pattern.rstrip(b"/")
        self.subtree = pattern.endswith(b"/***")
        if self.subtree:
            pattern = pattern[:-4]
        anchored = pattern.startswith(b"/")
        pattern = pattern.lstrip(b"/")
        self.anchored, self.pattern = anchored, pattern
        self.whole = anchored or b"/" in pattern or b"**" in pattern
        if pattern.startswith(b"**/"):
            pattern = pattern[3:]  # a leading "**/" also matches no directory at all
        body = _translate(pattern)
        prefix = b"" if anchored else b"(?:.*/)?"
        self.regex = re.compile(b"^" + prefix + body + b"$", re.DOTALL)

    def matches(self, rel: bytes, is_dir: bool) -> bool:
        if self.subtree:
            # "dir/***": the directory and everything below it
            parts = rel.split(b"/")
            return any(self._matches(b"/".join(parts[:i]), True) for i in range(1, len(parts))
                       ) or self._matches(rel, is_dir)
        return self._matches(rel, is_dir)

    def _matches(self, rel: bytes, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        subject = rel if self.whole else rel.rsplit(b"/", 1)[-1]
        return bool(self.regex.match(subject))


def exclude_patterns(sync: Sync) -> list[bytes]:
    """The exclude patterns that rsync applies before any include rule, in
    the order rsync sees them (see ``syncsup.syncer.argv``)."""
    return _patterns(sync)[0]


def plain_excludes(sync: Sync) -> list[bytes] | None:
    """The patterns, if every rule of the sync is a plain exclude (then a
    path is sent exactly when no pattern matches it); None if any rule is
    something else (an include, a merge, a protect rule...), whose meaning
    only rsync knows."""
    patterns, complete = _patterns(sync)
    return patterns if complete else None


# Rules that act on one side only (protect, risk, hide, show): they never
# decide what the sender sends.
_ONE_SIDED = re.compile(r"^[PRHS]( |,|$)|^(protect|risk|hide|show) ")
# The same, with the kind and the pattern: ``H *.o``, ``protect /keep``.
_SIDED = re.compile(r"^(?:([PRHS])|(protect|risk|hide|show)) (.+)$")


def _rules(sync: Sync) -> list[str]:
    """Every filter rule of ``sync`` in rsync's order: ``exclude``,
    ``exclude_from``, ``filter``, ``filter_from``. Raises ConfigError if a
    rule file cannot be read."""
    rules: list[str] = [f"- {p}" for p in sync.exclude]
    rules += [f"- {p}" for p in rule_file_lines(sync, "exclude_from")]
    rules += list(sync.filter)
    rules += rule_file_lines(sync, "filter_from")
    return rules


def _patterns(sync: Sync) -> tuple[list[bytes], bool]:
    out: list[bytes] = []
    complete = True
    for rule in _rules(sync):
        m = re.match(r"^(-|exclude) (.+)$", rule)
        if m is None:
            complete = False
            if _ONE_SIDED.match(rule):
                continue  # sender/receiver-side only: does not decide what is sent
            break  # include, merge, modifiers...: rules after this can't be trusted
        out.append(m.group(2).encode("utf-8", "surrogateescape"))
    return out, complete


class RuleList:
    """rsync's include/exclude rules of a sync, in order, for one question
    rsync does not ask itself: is a path listed in ``--files-from`` below a
    directory the rules exclude? rsync checks each listed name, not its
    parents, so a file in an excluded directory would be sent (creating the
    directory on the target) when the watcher watches that directory, i.e.
    when an include rule comes before its exclude. First match wins, as in
    rsync; a rule of a kind this module does not understand (merge files,
    modifiers) ends the list: nothing after it is taken as excluded, so a
    doubt sends the path as before."""

    def __init__(self, sync: Sync | None = None) -> None:
        self.rules: list[tuple[bool, _Rule]] = []  # (excludes, pattern)
        # What the sender obeys (hide and show too), for :meth:`sent`; ends
        # where ``rules`` ends. ``complete``: no rule was left unread.
        self.sender: list[tuple[bool, _Rule]] = []
        self.complete = True
        self.receiver_rules = False  # protect or risk rules: deletes on the target differ
        # directory -> is it or a directory above it excluded? The rules never
        # change once read, so a verdict holds for as long as this list lives.
        self._dirs: dict[bytes, bool] = {}
        if sync is None:
            return  # no rules
        for rule in _rules(sync):
            m = re.match(r"^(-|\+|exclude|include) (.+)$", rule)
            if m is None:
                if _ONE_SIDED.match(rule):
                    self._one_sided(rule)
                    continue  # receiver- or sender-only: says nothing about sending
                self.complete = False
                break
            pattern = m.group(2).encode("utf-8", "surrogateescape")
            if pattern.strip(b"/"):
                self.rules.append((m.group(1) in ("-", "exclude"), _Rule(pattern)))
            self._sender_rule(m.group(1) in ("-", "exclude"), m.group(2))

    def _one_sided(self, rule: str) -> None:
        """A hide or show rule is the sender's exclude or include; protect
        and risk only change what the target deletes."""
        side = _SIDED.match(rule)
        if side is None:
            self.complete = False  # with modifiers: not read
            return
        kind = (side.group(1) or side.group(2))[0].upper()
        if kind in "HS":
            self._sender_rule(kind == "H", side.group(3))
        else:
            self.receiver_rules = True

    def _sender_rule(self, excludes: bool, text: str) -> None:
        if not self.complete:
            return  # an unread rule came first: it may decide before this one
        pattern = text.encode("utf-8", "surrogateescape")
        if (not pattern.strip(b"/") or b"\\" in pattern or pattern[:2] in (b"+ ", b"- ")
                or b"//" in pattern or pattern.startswith(b"/**")):
            # "- /", an escaped wildcard, an exclude written "+ x" (rsync reads
            # it as an include), "cache//" or "/**/cache" (which rsync matches
            # otherwise than this module would): not modelled here, so a
            # doubt from here on
            self.complete = False
            return
        self.sender.append((excludes, _Rule(pattern)))

    def _verdict(self, rel: bytes, is_dir: bool) -> bool | None:
        """Does the sender's first matching rule let ``rel`` through (None:
        no rule read says, and some were not read)?"""
        for excludes, rule in self.sender:
            if rule.matches(rel, is_dir):
                return not excludes
        return True if self.complete else None

    @property
    def sends_everything(self) -> bool:
        """No rule is the sender's: rsync sends every name it is given."""
        return self.complete and not self.sender

    def sent(self, rel: bytes) -> bool | None:
        """Does rsync send the entry ``rel`` whatever its type, with every
        directory above it? True for certain, False if certainly not, None
        when it depends on the type (a rule for directories only) or on a
        rule this module does not read."""
        if self.sends_everything:  # asked per name of a step: answered at once
            return True
        parts = rel.split(b"/")
        for i in range(1, len(parts)):
            up = self._verdict(b"/".join(parts[:i]), True)
            if up is not True:
                return up
        as_file, as_dir = self._verdict(rel, False), self._verdict(rel, True)
        return as_file if as_file == as_dir else None

    def hidden(self, rel: bytes, is_dir: bool) -> bool:
        """Is the entry ``rel`` (a directory or not) certainly kept from the
        target by the sender's rules, by the first rule that matches it?
        Asked by a walk that goes down from a directory the rules let
        through, so the directories above ``rel`` were asked first; a
        doubt (a rule not read) is never hidden."""
        return self._verdict(rel, is_dir) is False

    @property
    def by_type(self) -> bool:
        """Does a rule read decide by type (``cache/``: directories only)?"""
        return any(rule.dir_only for _excl, rule in self.sender)

    def retyped(self, rel: bytes, is_dir: bool) -> bool:
        """Is ``rel``, being (or not being) a directory, excluded when the
        other type would be sent (``cache/`` and a file named ``cache``)?
        Then what the target holds there, if of the other type, is rsync's
        to delete, and naming ``rel`` alone never does it."""
        return self._verdict(rel, is_dir) is False and self._verdict(rel, not is_dir) is True

    def name_only(self) -> bool:
        """Does each rule decide by the last name alone, or by a top-level
        name (``/build``)? Then an entry below a directory is sent or not
        whatever that directory is called, so renaming the directory on the
        target moves nothing into or out of the rules' reach."""
        return self.complete and all(
            not rule.whole or (rule.anchored and b"/" not in rule.pattern
                               and b"**" not in rule.pattern)
            for _excl, rule in self.sender)

    def below_excluded(self, rel: bytes) -> bool:
        """Is a directory above ``rel`` excluded by the rules?

        Asked for every name of every step of every target, and the names of
        a batch share a few directories: the answer is kept per directory
        (it depends on nothing else)."""
        if b"/" not in rel or not self.rules:
            return False
        parent = rel.rpartition(b"/")[0]
        known = self._dirs.get(parent)
        if known is None:
            known = self._excluded_dir(parent)
            if len(self._dirs) >= _VERDICTS:
                self._dirs.clear()
            self._dirs[parent] = known
        return known

    def _excluded_dir(self, directory: bytes) -> bool:
        """Is ``directory``, or one above it, excluded? Top down, first
        match wins at each level, as rsync descends."""
        parts = directory.split(b"/")
        for i in range(1, len(parts) + 1):
            ancestor = b"/".join(parts[:i])
            for excludes, rule in self.rules:
                if rule.matches(ancestor, True):
                    if excludes:
                        return True
                    break  # included: look at the next directory down
        return False


class DirFilter:
    """``excluded(rel)``: True if rsync would never transfer the directory
    ``rel`` (relative to the source root), so it needs no watch."""

    def __init__(self, patterns: Iterable[bytes]) -> None:
        self.rules = [_Rule(p) for p in patterns if p.strip(b"/")]

    def excluded(self, rel: bytes, is_dir: bool = True) -> bool:
        return bool(rel) and any(r.matches(rel, is_dir) for r in self.rules)


def expand_rule_files(sync: Sync) -> Sync:
    """``exclude_from`` and ``filter_from`` read into ``exclude`` and
    ``filter``. rsync's ``--from0`` (needed for the file lists) also makes
    it read rule files as NUL-separated, so newline-separated rule files
    cannot be passed as they are. Read once when the syncer starts: edits
    take effect at the next restart or SIGHUP."""
    if sync.exclude_from is None and sync.filter_from is None:
        return sync
    return dataclasses.replace(
        sync, exclude=(*sync.exclude, *rule_file_lines(sync, "exclude_from")), exclude_from=None,
        filter=(*sync.filter, *rule_file_lines(sync, "filter_from")), filter_from=None)
