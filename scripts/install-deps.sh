#!/usr/bin/env bash
# Install what syncsup needs on a Debian/Ubuntu host: rsync, the OpenSSH
# client and server (the tests run a real sshd on loopback), promtool (the
# alert rules in deploy/prometheus are checked with it), systemd (for
# systemd-analyze, which checks the unit), groff and zsh (a
# test renders the man pages and loads the zsh completion), and the Python
# package with its test extras (shtab among them, for the generated
# completion scripts; lupa, the Lua runtime import-lsyncd uses, is a
# self-contained wheel: no system Lua needed). Safe to run again; apt-get
# only when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# rsync: prefer 3.5.0 or newer (its sender never follows a symlink raced
# into a source directory; syncsup probes that at start, whatever the
# version): install it, or upgrade an older one where the archive has one.
rsync_ok() {
    local out
    out=$(rsync --version 2>/dev/null) || return 1
    python3 -c 'import re, sys
v = re.search(r"version (\d+)\.(\d+)\.(\d+)", sys.argv[1])
sys.exit(not v or tuple(map(int, v.groups())) < (3, 5, 0))' "$out"
}
rsync_ok || need+=(rsync)
command -v strace >/dev/null || need+=(strace)  # the tests count the bytes rsync reads
command -v ssh >/dev/null || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v promtool >/dev/null || need+=(prometheus)
command -v groff >/dev/null || need+=(groff-base)  # the man pages are rendered by a test
command -v zsh >/dev/null || need+=(zsh)  # the zsh completion is loaded by a test
# systemd-analyze checks the unit (verify, security --offline); it runs
# without systemd as PID 1
command -v systemd-analyze >/dev/null || need+=(systemd)
# scripts/systemd-proof.sh (run by a test) boots a Debian container with
# systemd as PID 1: systemd-nspawn, and debootstrap to make its root once
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ "${1:-}" = "--with-lsyncd" ] && ! command -v lsyncd >/dev/null; then need+=(lsyncd); fi
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing with apt-get: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    rsync_ok || echo "warning: this rsync is older than 3.5.0 (or missing); syncsup start probes whether its sender follows raced symlinks" >&2
fi
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
