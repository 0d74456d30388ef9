#!/usr/bin/env bash
# Install what syncsup needs on a Debian/Ubuntu host: rsync, the OpenSSH
# client and server (the tests run a real sshd on loopback), promtool (the
# alert rules in deploy/prometheus are checked with it), and the Python
# package with its test extras (lupa, the Lua runtime import-lsyncd uses,
# is a self-contained wheel: no system Lua needed). Safe to run again;
# apt-get only when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v rsync >/dev/null || need+=(rsync)
command -v ssh >/dev/null || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v promtool >/dev/null || need+=(prometheus)
if [ "${1:-}" = "--with-lsyncd" ] && ! command -v lsyncd >/dev/null; then need+=(lsyncd); fi
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing with apt-get: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
