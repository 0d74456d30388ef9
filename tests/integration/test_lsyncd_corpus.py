"""The corpus of Lsyncd configs (tests/data/lsyncd_corpus) run side by side:
real ``lsyncd`` on each config, syncsup on what ``import-lsyncd`` made of
it, both on the same source tree (hostile names, symlinks, modes, excluded
names, nested directories, targets holding files the source never had),
the same churn, and then the two targets compared byte for byte (content,
mode, type, symlink target). Where the two differ by design the difference
is asserted as documented (docs/lsyncd.md), never skipped.

Bounded: every config's lsyncd runs at once, and one syncsup daemon runs the
syncs of all of them (their imported [[sync]] tables, renamed apart); a Lua
line before each config makes every sync wait 1 s instead of the config's
own delay, in both tools alike (the importer runs the same Lua).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.daemon import LOG_LEVEL, run_cli
from tests.helpers.rsyncd import RsyncDaemon
from tests.helpers.tree import diff_trees, snapshot

pytestmark = pytest.mark.timeout(400)

CORPUS = Path(__file__).resolve().parents[1] / "data" / "lsyncd_corpus"
# Lsyncd and the importer run this before the config: every sync waits 1 s.
FAST = ("local corpus_sync = sync\n"
        "sync = function(t) t.delay = 1; return corpus_sync(t) end\n")
STALE = "stale-on-target.txt"
SENTINEL = "zz-last-change.txt"
# Both trees unchanged this long (twice the syncs' 1 s delay) counts as
# settled: each tool has had a full delay to act on anything still coming.
SETTLE = 2.0

# Configs with nothing to mirror on syncsup's side, by design: asserted here.
NOT_MIRRORED = {"custom_layers.lua": "layer 1-3 actions only: the import has no [[sync]]"}


# Directories other than targets that both tools fill alike (rsync's
# --backup-dir): compared like targets, without the churn's last file.
ALSO_COMPARED = {"backups_append.lua": ["backup"]}


@dataclass
class Side:
    """One config run by both tools: its source, its imported document and
    the target pairs (lsyncd's path, syncsup's path)."""

    name: str
    world: Path
    lsyncd_conf: Path
    doc: dict[str, Any]
    messages: list[str]
    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None


def fill(name: str, base: Path, subs: dict[str, str]) -> Path:
    text = FAST + (CORPUS / name).read_text()
    for key, value in {"BASE": str(base), "DATA": str(CORPUS), **subs}.items():
        text = text.replace(f"@{key}@", value)
    base.mkdir(parents=True, exist_ok=True)
    path = base / name
    path.write_text(text)
    return path


def seed(src: Path, outside: Path) -> None:
    """The tree both tools start from."""
    src.mkdir(parents=True)
    files = {"a.txt": "first\n", "b.txt": "second\n", "gone.txt": "deleted later\n",
             "sp ace.txt": "space\n", "ünï cödé.txt": "utf-8\n", "-dash.txt": "dash\n",
             "new\nline.txt": "newline\n", "x.txt": "renamed into an excluded name\n",
             "y.tmp": "renamed out of an excluded name\n", "skip.tmp": "excluded\n",
             "z.log": "log\n", "obj.o": "object\n", "m.pyc": "bytecode\n", "s.bak": "bak\n",
             "core": "core\n", "w.part": "part\n", "dir/inner.txt": "inner\n",
             "deep/a/b/c.txt": "deep\n", ".cache/c.txt": "cache\n",
             "build/out.txt": "build\n", "scratch/s.txt": "scratch\n",
             "keep/k.txt": "keep\n", "keep/k.pyc": "kept bytecode?\n"}
    for rel, text in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text * 40)
    for raw in (b"latin1-\xe9t\xe9.txt", b"glob[ab]*?.txt", b"back\\slash.txt"):
        with open(os.path.join(os.fsencode(src), raw), "wb") as fh:
            fh.write(raw * 20)
    (src / "private.txt").write_text("0600\n")
    os.chmod(src / "private.txt", 0o600)
    (src / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "run.sh", 0o755)
    (src / "empty").mkdir()
    os.symlink("a.txt", src / "link")
    os.symlink("dir", src / "dirlink")
    outside.write_text("outside the tree\n")
    os.symlink(outside, src / "unsafe-link")
    os.link(src / "b.txt", src / "hard-b.txt")


def churn(src: Path) -> None:
    """Each path changes once, so batching cannot change the outcome of
    options such as append or backup. The sentinel comes after, from
    :func:`churn_all`."""
    (src / "tree" / "deep").mkdir(parents=True)
    (src / "tree" / "deep" / "f.txt").write_bytes(os.urandom(3000))
    (src / "new.bin").write_bytes(os.urandom(20000))
    with open(src / "a.txt", "a") as fh:
        fh.write("appended\n" * 50)
    (src / "b.txt").rename(src / "b-renamed.txt")
    (src / "dir").rename(src / "dir-renamed")
    (src / "gone.txt").unlink()
    os.symlink("a.txt", src / "new-link")
    os.chmod(src / "private.txt", 0o640)
    (src / "x.txt").rename(src / "x.tmp")
    (src / "y.tmp").rename(src / "y.txt")
    (src / "n.swp").write_text("excluded\n")
    os.rename(os.path.join(os.fsencode(src), b"glob[ab]*?.txt"),
              os.path.join(os.fsencode(src), b"glob[ab]*?-moved\xff.txt"))
    (src / "empty2").mkdir()


def churn_all(worlds: list[Path]) -> None:
    """The churn in every world, then, half a second later (one wait for
    all), the sentinel in each: the last change, in a later event than the
    rest."""
    for world in worlds:
        churn(world)
    time.sleep(0.5)
    for world in worlds:
        (world / SENTINEL).write_text("last\n")


def local_path(target: str) -> Path:
    return Path(target.split(":", 1)[1] if ":" in target else target)


def lsyncd_binary() -> str:
    path = shutil.which("lsyncd")
    if path is None:
        pytest.fail("lsyncd is not installed (bash scripts/install-deps.sh --with-lsyncd)")
    return path


def daemon_module_path(target: str) -> tuple[str, str]:
    """(module, path inside it) of ``host::module/path`` or
    ``rsync://host:port/module/path``."""
    rest = target.split("::", 1)[1] if "::" in target else target.split("/", 3)[3]
    module, _, path = rest.partition("/")
    return module, path


Locate = Callable[[str, str, Path], Path]


def locate_local(side: str, target: str, base: Path) -> Path:
    """A target's directory: a local path, or the path of an ssh target (on
    this host), moved from syncsup's base to ``side``'s."""
    mine = local_path(target)
    return base / mine.relative_to(base.parent.parent / "syncsup" / base.name)


def prepare(tmp_path: Path, names: list[str], subs: dict[str, str],
            per_side: dict[str, dict[str, str]] | None = None,
            locate: Locate = locate_local) -> list[Side]:
    """Each config's source and both filled-in configs; ``per_side`` adds
    placeholders that differ between the tools (each its own daemon), and
    ``locate`` says where a target of the imported document is on disk
    for either tool."""
    filled = []
    for name in names:
        stem = name.removesuffix(".lua")
        world = tmp_path / "world" / stem
        seed(world, tmp_path / "world" / f"{stem}-outside.txt")
        bases = {side: tmp_path / side / stem for side in ("lsyncd", "syncsup")}
        for base in bases.values():
            base.mkdir(parents=True)
            (base / "src").symlink_to(world)
        lconf = fill(name, bases["lsyncd"], {**subs, **(per_side or {}).get("lsyncd", {})})
        sconf = fill(name, bases["syncsup"], {**subs, **(per_side or {}).get("syncsup", {})})
        filled.append((name, stem, world, bases, lconf, sconf))
    # the imports are independent processes: run side by side
    with ThreadPoolExecutor(4) as pool:
        imported = list(pool.map(lambda f: run_cli("import-lsyncd", f[5], cwd=f[3]["syncsup"],
                                                   timeout=120), filled))
    sides = []
    for (name, stem, world, bases, lconf, _sconf), r in zip(filled, imported, strict=True):
        assert r.returncode in (0, 2), r.stderr
        doc = tomllib.loads(r.stdout)
        side = Side(stem, world, lconf, doc, r.stderr.splitlines())
        for sync in doc.get("sync", []):
            for target in sync["targets"]:
                mine = locate("syncsup", target, bases["syncsup"])
                theirs = locate("lsyncd", target, bases["lsyncd"])
                for t in (mine, theirs):
                    t.mkdir(parents=True, exist_ok=True)
                    (t / STALE).write_text("the source never had this\n")
                side.pairs.append((theirs, mine))
        for extra in ALSO_COMPARED.get(name, []):
            for base in bases.values():
                (base / extra).mkdir()
            side.pairs.append((bases["lsyncd"] / extra, bases["syncsup"] / extra))
        sides.append(side)
    return sides


def start_lsyncd(side: Side) -> None:
    side.log = side.lsyncd_conf.parent / "lsyncd.out"
    with open(side.log, "wb") as out:
        side.proc = subprocess.Popen(
            [lsyncd_binary(), "-nodaemon", str(side.lsyncd_conf)], stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=side.lsyncd_conf.parent, preexec_fn=lambda: os.umask(0o022))


def stop_lsyncd(side: Side) -> None:
    proc = side.proc
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def lsyncd_out(side: Side) -> str:
    return side.log.read_text(errors="replace")[-2000:] if side.log else ""


def syncs_of(sides: list[Side]) -> list[dict[str, Any]]:
    syncs = []
    for side in sides:
        for sync in side.doc.get("sync", []):
            syncs.append({**sync, "name": f"{side.name}-{sync['name']}",
                          "source": os.path.realpath(sync["source"])})
    return syncs


# ---------------------------------------------------- differences by design
# Each rule takes (lsyncd's snapshot, syncsup's, the source's, the pair's
# Side) and returns the paths where the two differ exactly as documented in
# docs/lsyncd.md ("What differs"); any other difference fails the test.
Snap = dict[bytes, Any]
Rule = Callable[[Snap, Snap, Snap], set[bytes]]


def mode_not_followed(a: Snap, b: Snap, src: Snap) -> set[bytes]:
    """Lsyncd's rsync without --perms leaves an existing file's mode as it
    was; the import adds --perms, so syncsup follows the source's chmod."""
    rel = b"private.txt"
    ea, eb = a.get(rel), b.get(rel)
    if ea and eb and ea[0] == eb[0] == "file" and ea[1] == 0o600 and eb[1] == 0o640 \
            and ea[2:] == eb[2:] and eb == src.get(rel):
        return {rel}
    return set()


def direct_symlink_copied(a: Snap, b: Snap, src: Snap) -> set[bytes]:
    """default.direct: Lsyncd copies a symlink made while it runs as the
    file it points to (cp follows it); syncsup keeps the symlink."""
    out = set()
    for rel, eb in b.items():
        ea = a.get(rel)
        if eb[0] == "symlink" and ea is not None and ea[0] == "file" and eb == src.get(rel):
            referent = src.get(eb[1] if isinstance(eb[1], bytes) else eb[1].encode())
            if referent is not None and referent[2:] == ea[2:]:
                out.add(rel)
    return out


def root_refreshed(follow: bool) -> Rule:
    """A batch whose rsync times step lists the source root (one level
    deep, without -I: its paths step sent no name for certain, or
    deletions are off) brings up to date a root entry that changed without an
    event of its own (a symlink's referent, under copy_links or
    copy_dirlinks) or that an init = false target lacks; Lsyncd leaves it.
    syncsup's entry is then the source's (the referent's, with
    ``follow``)."""
    def rule(a: Snap, b: Snap, src: Snap) -> set[bytes]:
        out = set()
        for rel in set(a) | set(b):
            if a.get(rel) == b.get(rel):
                continue
            top = rel.split(b"/", 1)[0]
            if rel == top:
                want = src.get(rel)
                if follow and want is not None and want[0] == "symlink":
                    want = src.get(want[1])  # a link within the tree: its referent's entry
                if b.get(rel) == want and want is not None:
                    out.add(rel)
            elif a.get(top, ("",))[0] == "dir" and b.get(top, ("",))[0] == "symlink" \
                    and rel not in b:
                out.add(rel)  # under a directory syncsup rightly made a symlink again
        return out
    return rule


def matches(a: Snap, b: Snap, src: Snap, rules: list[Rule]) -> tuple[bool, list[int]]:
    """Equal but for paths the rules explain; and the rules (their
    indices) that explained a path that differs."""
    explained: set[bytes] = set()
    differing = {rel for rel in set(a) | set(b) if a.get(rel) != b.get(rel)}
    fired = []
    for i, rule in enumerate(rules):
        paths = rule(a, b, src)
        explained |= paths
        if paths & differing:
            fired.append(i)
    return differing <= explained, fired


@dataclass
class Pair:
    lsyncd: Path
    syncsup: Path
    source: Path
    rules: list[Rule]
    sentinel: bool = True  # the last change of the churn arrives (not --existing)
    fired: list[int] = field(default_factory=list)


def settle(pairs: list[Pair], describe: Callable[[], str], sentinel: bool,
           timeout: float = 150.0) -> None:
    """Wait until every pair is equal (but for its documented differences),
    holds the sentinel where it should (after the churn), and nothing
    changed for SETTLE seconds."""
    deadline = time.monotonic() + timeout
    last: list[Any] | None = None
    since = time.monotonic()
    while True:
        snaps = [(snapshot(p.lsyncd, tolerate_vanish=True),
                  snapshot(p.syncsup, tolerate_vanish=True), snapshot(p.source)) for p in pairs]
        results = [matches(sa, sb, ss, p.rules) for (sa, sb, ss), p in zip(snaps, pairs,
                                                                            strict=True)]
        ready = all(ok and (not (p.sentinel and sentinel) or SENTINEL.encode() in sa)
                    for (ok, _), (sa, _, _), p in zip(results, snaps, pairs, strict=True))
        if snaps != last:
            last, since = snaps, time.monotonic()
        elif ready and time.monotonic() - since >= SETTLE:
            for p, (_, fired) in zip(pairs, results, strict=True):
                p.fired = fired
            return
        if time.monotonic() > deadline:
            lines = []
            for (sa, sb, _), (ok, _), p in zip(snaps, results, pairs, strict=True):
                if not ok:
                    lines += [f"--- {p.lsyncd} vs {p.syncsup}",
                              *diff_trees(sa, sb, names=("lsyncd", "syncsup"))]
                if sentinel and p.sentinel and SENTINEL.encode() not in sa:
                    lines.append(f"no {SENTINEL} yet in {p.lsyncd}")
            raise AssertionError("the two targets did not settle equal:\n" + "\n".join(lines)
                                 + "\n" + describe())
        time.sleep(0.5)


def run_side_by_side(tmp_path: Path, daemon_factory, names: list[str], subs: dict[str, str],
                     special: dict[str, Callable[[Side, Callable[[], str]], None]],
                     rules: dict[str, list[Rule]], expect_differences: set[str],
                     per_side: dict[str, dict[str, str]] | None = None,
                     locate: Locate = locate_local) -> None:
    """The whole run: prepare, start both, settle, churn, settle, compare.
    Targets of configs in ``special`` are not compared pair by pair: their
    checker asserts the documented difference instead. ``rules`` name the
    documented differences of a target (by its directory name under the
    config's base); those in ``expect_differences`` must have shown up."""
    sides = prepare(tmp_path, names, subs, per_side, locate)
    d = daemon_factory(syncs_of(sides), settings_override={
        "state_dir": str(tmp_path / "state"), "log_level": LOG_LEVEL}, start=False)
    r = run_cli("check", d.config, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr

    def describe() -> str:
        return "\n".join(f"== lsyncd {s.name} (exit {s.proc.poll() if s.proc else None}):\n"
                         f"{lsyncd_out(s)}" for s in sides) + d.describe()

    pairs = [Pair(a, b, s.world, rules.get(f"{s.name}/{a.name}", []),
                  sentinel=not a.name.endswith("existing") and a.name != "backup")
             for s in sides if s.name + ".lua" not in special for a, b in s.pairs]
    try:
        for side in sides:
            start_lsyncd(side)
        d.start()
        settle(pairs, describe, sentinel=False)
        churn_all([side.world for side in sides])
        settle(pairs, describe, sentinel=True)
        for p in pairs:
            key = f"{p.lsyncd.parent.name}/{p.lsyncd.name}"
            if key in expect_differences:
                assert p.fired == list(range(len(p.rules))), \
                    f"{key}: not every documented difference showed ({p.fired} of {p.rules})"
        for side in sides:
            if side.name + ".lua" in special:
                special[side.name + ".lua"](side, describe)
            else:
                assert side.proc is not None and side.proc.poll() is None, describe()
    finally:
        for side in sides:
            stop_lsyncd(side)


def wait_for(pred: Callable[[], bool], what: str, describe: Callable[[], str],
             timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{describe()}")
        time.sleep(0.5)


def refused_by_lsyncd(key: str, check_syncsup: Callable[[Side], bool]
                      ) -> Callable[[Side, Callable[[], str]], None]:
    """Lsyncd 2.2.3 refuses the config over ``key`` (the import notes it and
    maps it as newer Lsyncd would); syncsup's mirror passes its own check."""
    def check(side: Side, describe: Callable[[], str]) -> None:
        assert side.proc is not None
        side.proc.wait(30)
        out = lsyncd_out(side)
        assert side.proc.returncode != 0 and f'Parameter "{key}" unknown' in out, out
        assert any("Lsyncd 2.2 refuses" in m for m in side.messages), side.messages
        wait_for(lambda: check_syncsup(side), f"syncsup's mirror of {side.name}", describe)
    return check


def mirrors_source(side: Side, transform: Callable[[dict[bytes, Any]], dict[bytes, Any]]
                   = lambda s: s) -> bool:
    want = transform(snapshot(side.world))
    return all(snapshot(b, tolerate_vanish=True) == want for _a, b in side.pairs)


def unsafe_links_copied(snap: dict[bytes, Any]) -> dict[bytes, Any]:
    out = dict(snap)
    text = b"outside the tree\n"
    out[b"unsafe-link"] = ("file", 0o644, len(text), hashlib.sha256(text).hexdigest())
    return out


def dry_run_differs(side: Side, describe: Callable[[], str]) -> None:
    """rsync.dry_run: Lsyncd's targets never change (only what they held at
    start); the import drops dry_run (exit 2) and syncsup mirrors."""
    assert any("dropped: " in m and "rsync.dry_run" in m for m in side.messages)
    wait_for(lambda: mirrors_source(side), "syncsup's mirror", describe)
    for a, _b in side.pairs:
        assert set(snapshot(a)) == {STALE.encode()}, describe()
    assert side.proc is not None and side.proc.poll() is None, describe()


LOCAL_SPECIAL: dict[str, Callable[[Side, Callable[[], str]], None]] = {
    "dry_run.lua": dry_run_differs,
    "copy_unsafe.lua": refused_by_lsyncd(
        "rsync.copy_unsafe_links", lambda s: mirrors_source(s, unsafe_links_copied)),
}
NO_PERMS = [mode_not_followed]
LOCAL_RULES: dict[str, list[Rule]] = {
    **{f"delete_modes/dst-{d}": NO_PERMS for d in ("true", "false", "startup", "running")},
    **{f"filters/dst-{d}": NO_PERMS for d in ("ex", "filter")},
    "direct_init/dst-direct": [mode_not_followed, direct_symlink_copied],
    "direct_init/dst-noinit": [root_refreshed(follow=False)],
    "links_modes/dst-copy": [root_refreshed(follow=True)],
    "links_modes/dst-dirlinks": [root_refreshed(follow=False)],
}
# differences that show only when a batch happens to send the root for its
# time (see root_refreshed): how the churn's events fall into batches decides
MAY_SHOW = {"direct_init/dst-noinit", "links_modes/dst-copy", "links_modes/dst-dirlinks"}
LOCAL = ["backups_append.lua", "copy_unsafe.lua", "delete_modes.lua", "direct_init.lua",
         "dry_run.lua", "filters.lua", "layers_loop.lua", "links_modes.lua",
         "mirror_settings.lua", "perms_owner.lua", "tuning.lua"]
DAEMON = ["daemon_targets.lua"]
DAEMON_MODULES = ("www", "docs")
SSH = ["rsync_remote.lua", "rsyncssh.lua", "rsyncssh_exitcodes.lua", "rsyncssh_xargs.lua",
       "syslog_exitcodes.lua"]


def lsyncd_stopped_on_exit_0(side: Side, describe: Callable[[], str]) -> None:
    """An exit code table written out reaches Lsyncd as a list: it stops at
    the first rename (exit 0 unknown); the import says so (exit 2) and
    syncsup mirrors."""
    assert any("no entry for exit code 0" in m for m in side.messages), side.messages
    assert side.proc is not None
    wait_for(lambda: side.proc is not None and side.proc.poll() is not None,
             "lsyncd to stop", describe)
    assert "Unknown exitcode" in lsyncd_out(side), lsyncd_out(side)
    wait_for(lambda: mirrors_source(side), f"syncsup's mirror of {side.name}", describe)


def test_every_corpus_config_is_run_or_said_why_not():
    every = sorted(p.name for p in CORPUS.glob("*.lua"))
    assert sorted([*LOCAL, *SSH, *DAEMON, *NOT_MIRRORED]) == every


def test_not_mirrored_configs_import_no_sync(tmp_path):
    for name in NOT_MIRRORED:
        r = run_cli("import-lsyncd", fill(name, tmp_path, {}), cwd=tmp_path, timeout=120)
        assert r.returncode == 2 and "sync" not in tomllib.loads(r.stdout), r.stderr


def test_local_configs_side_by_side_with_lsyncd(tmp_path, daemon_factory):
    run_side_by_side(tmp_path, daemon_factory, LOCAL, {}, LOCAL_SPECIAL, LOCAL_RULES,
                     set(LOCAL_RULES) - MAY_SHOW)


def test_ssh_configs_side_by_side_with_lsyncd(tmp_path, daemon_factory, sshd):
    subs = {"HOST": sshd.host, "USER": sshd.user, "PORT": str(sshd.port),
            "IDENTITY": str(sshd.identity_file), "KNOWN_HOSTS": str(sshd.known_hosts)}
    special = {"rsyncssh_xargs.lua": refused_by_lsyncd("xargs", mirrors_source),
               "rsyncssh_exitcodes.lua": lsyncd_stopped_on_exit_0}
    rules = {"syslog_exitcodes/dst-ssh": NO_PERMS}
    run_side_by_side(tmp_path, daemon_factory, SSH, subs, special, rules, set(rules))


def test_daemon_target_configs_side_by_side_with_lsyncd(tmp_path, daemon_factory):
    """Each tool pushes to its own ``rsync --daemon`` on loopback (the same
    modules, each daemon on its own free port: the config's @PORT@), as the
    user and with the password file the config names. The password file is
    a mode 0600 copy of the corpus's (git does not keep modes; rsync
    refuses a file others can read). As root the daemons chroot and keep
    owners, so the modules are compared like local targets."""
    secret = CORPUS / "rsyncd.secret"
    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(secret, data / secret.name)
    os.chmod(data / secret.name, 0o600)
    daemons = {side: RsyncDaemon(tmp_path / f"rsyncd-{side}", modules=DAEMON_MODULES,
                                 user="mirror", password=secret.read_text().strip())
               for side in ("lsyncd", "syncsup")}

    def locate(side: str, target: str, _base: Path) -> Path:
        module, path = daemon_module_path(target)
        assert module in DAEMON_MODULES, target
        return daemons[side].dir / module / path

    try:
        for rsyncd in daemons.values():
            rsyncd.start()
        per_side = {side: {"PORT": str(rsyncd.port)} for side, rsyncd in daemons.items()}
        run_side_by_side(tmp_path, daemon_factory, DAEMON, {"HOST": "127.0.0.1",
                                                            "DATA": str(data)},
                         {}, {}, set(), per_side, locate)
    finally:
        for rsyncd in daemons.values():
            rsyncd.close()
        for rsyncd in daemons.values():
            assert not rsyncd.running


# ------------------------------------ the manual's list against Lsyncd itself
def _lua_value(key: str) -> str:
    strings = {"backup_dir": '"/tmp"', "binary": '"/usr/bin/rsync"', "bwlimit": "100",
               "chown": '"root:root"', "chmod": '"u+rw"', "groupmap": '"*:root"',
               "usermap": '"*:root"', "password_file": '"/etc/hostname"',
               "rsh": '"/usr/bin/ssh -p 22"', "rsync_path": '"/usr/bin/rsync"',
               "suffix": '".old"', "temp_dir": '"/tmp"', "timeout": "60",
               "_extra": '{ "--human-readable" }'}
    return strings.get(key, "true")


def _lsyncd_check(tmp_path: Path, name: str, body: str) -> str:
    """lsyncd's verdict on a config whose source does not exist: it checks
    every key first ("Parameter ... unknown"), then the source."""
    conf = tmp_path / name
    conf.write_text(body)
    r = subprocess.run([lsyncd_binary(), "-nodaemon", str(conf)], capture_output=True,
                       text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert r.returncode != 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def test_lsyncd_2_2_3_takes_every_listed_key_and_refuses_the_ones_said(tmp_path):
    """The manual's list (syncsup.lsyncd._manual) checked against the
    checkgauge tables of the installed Lsyncd: every rsync, ssh and global
    key it lists passes Lsyncd's own check, except the ones listed as
    refused, which Lsyncd refuses by name (and so it does a key it has
    never had)."""
    from syncsup.lsyncd._manual import MANUAL, REFUSED_BY_2_2_3

    gone = "/nonexistent/corpus-source"
    names = {s.name for s in MANUAL}
    rsync_keys = sorted(n.split(".", 1)[1] for n in names
                        if n.startswith("rsync.") and n not in REFUSED_BY_2_2_3)
    ssh_keys = {"binary": '"/usr/bin/ssh"', "identityFile": '"/etc/hostname"',
                "options": "{ BatchMode = \"yes\" }", "port": "22", "_extra": '{ "-4" }'}
    assert {f"ssh.{k}" for k in ssh_keys} == {n for n in names if n.startswith("ssh.")}
    settings = {"logfile": f'"{tmp_path}/log"', "pidfile": f'"{tmp_path}/pid"',
                "nodaemon": "true", "statusFile": f'"{tmp_path}/status"',
                "statusInterval": "10", "logfacility": '"user"', "logident": '"corpus"',
                "insist": "true", "inotifyMode": '"CloseWrite"', "maxProcesses": "1",
                "maxDelays": "10"}
    assert {f"settings.{k}" for k in settings} == {n for n in names
                                                   if n.startswith("settings.")}
    body = ("settings {\n" + "".join(f"    {k} = {v},\n" for k, v in settings.items()) + "}\n"
            f'sync {{ default.rsync, source = "{gone}", target = "{tmp_path}/dst", delay = 1,\n'
            '    maxDelays = 5, maxProcesses = 1, init = false, delete = "running",\n'
            '    exclude = { "*.tmp" }, filter = { "- *.bak" },\n'
            "    rsync = {\n" + "".join(f"        {k} = {_lua_value(k)},\n" for k in rsync_keys)
            + "    },\n}\n"
            f'sync {{ default.rsyncssh, source = "{gone}", host = "localhost",\n'
            f'    targetdir = "{tmp_path}/dst2",\n'
            "    ssh = {\n" + "".join(f"        {k} = {v},\n" for k, v in ssh_keys.items())
            + "    },\n}\n")
    out = _lsyncd_check(tmp_path, "every_key.lua", body)
    assert "unknown" not in out and "Cannot access source directory" in out, out
    refused = {"rsync.copy_unsafe_links": "rsync = { copy_unsafe_links = true }",
               "rsyncssh.xargs": 'xargs = { binary = "/usr/bin/xargs" }',
               "rsync.devices": "rsync = { devices = true }"}
    assert set(refused) - {"rsync.devices"} == REFUSED_BY_2_2_3
    for key, setting in refused.items():
        layer = "default.rsyncssh, host = \"localhost\", targetdir = \"/x\"" \
            if key.startswith("rsyncssh") else f'default.rsync, target = "{tmp_path}/d"'
        out = _lsyncd_check(tmp_path, "refused.lua",
                            f'sync {{ {layer}, source = "{gone}", {setting} }}\n')
        assert f'Parameter "{key.removeprefix("rsyncssh.")}" unknown' in out, out
