#!/usr/bin/env bash
# The systemd unit proven under a real systemd as PID 1: a Debian container
# (systemd-nspawn -b) with syncsup installed into a venv under /opt as
# docs/operations.md says, the unit and drop-in written by `syncsup unit`,
# then: start, mirror to a local and an ssh target (sshd in the same
# container), `systemctl restart`, `systemctl kill -s KILL` (back after
# RestartSec), `journalctl -u`, `systemd-analyze security` of the loaded
# unit, stop with nothing left running. The steps inside the container are
# scripts/systemd-proof-inside.sh.
#
# Usage (as root): scripts/systemd-proof.sh [--no-download]
#   SYNCSUP_PROOF_CACHE   where the Debian root file system is kept
#                         (default /var/cache/syncsup-proof); made once by
#                         debootstrap, then reused
#   SYNCSUP_PROOF_MIRROR  the Debian mirror for debootstrap
#   --no-download         never run debootstrap: without a cached root file
#                         system, exit 77
# Exit: 0 proven; 1 a step failed (the output says which); 77 cannot run here
# (the reason is printed: not root, no systemd-nspawn, no cache and no
# debootstrap).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${SYNCSUP_PROOF_CACHE:-/var/cache/syncsup-proof}
MIRROR=${SYNCSUP_PROOF_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
BASE=$CACHE/$SUITE
PACKAGES=systemd,systemd-sysv,dbus,rsync,openssh-server,openssh-client,python3,python3-venv,iproute2
DOWNLOAD=1
[ "${1:-}" = "--no-download" ] && DOWNLOAD=0

skip() { echo "systemd-proof: cannot run here: $*" >&2; exit 77; }
say() { echo "systemd-proof: $*" >&2; }

[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, systemd-nspawn)"
command -v systemd-nspawn >/dev/null || skip "systemd-nspawn is not installed (apt-get install systemd-container)"
command -v nsenter >/dev/null || skip "nsenter is not installed (util-linux)"

if [ ! -x "$BASE/lib/systemd/systemd" ]; then
    [ "$DOWNLOAD" = 1 ] || skip "no cached Debian root file system in $BASE (run scripts/systemd-proof.sh once to make it)"
    command -v debootstrap >/dev/null || skip "no cached root file system in $BASE, and debootstrap is not installed"
    say "debootstrap $SUITE into $BASE (once; kept for later runs)"
    mkdir -p "$CACHE"
    rm -rf "$BASE.tmp"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$BASE.tmp" "$MIRROR" >&2 \
        || skip "debootstrap from $MIRROR failed (no network to the Debian mirror?)"
    mv "$BASE.tmp" "$BASE"
fi

WORK=$(mktemp -d /var/tmp/syncsup-proof.XXXXXX)
ROOT=$WORK/root
NSPAWN_PID=
LEADER=
OVERLAY=0
cleanup() {
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        # The proof is over (the service already stopped and checked): the
        # throw-away container powers off at once, killing what is left and
        # unmounting, without stopping each unit in turn (which takes many
        # seconds). Without a leader to ask, SIGTERM: nspawn asks the
        # container's systemd to power off.
        if [ -z "$LEADER" ] || ! nsenter --target "$LEADER" --all -- \
                /bin/systemctl poweroff --force >/dev/null 2>&1; then
            kill -TERM "$NSPAWN_PID" 2>/dev/null || true
        fi
        for _ in $(seq 300); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$NSPAWN_PID" 2>/dev/null || true
        wait "$NSPAWN_PID" 2>/dev/null || true
    fi
    [ "$OVERLAY" = 0 ] || umount "$ROOT" 2>/dev/null || umount -l "$ROOT" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# The cached root file system stays untouched: the container writes into an
# overlay on top of it (a copy of its 300 MB where overlayfs is missing).
mkdir -p "$ROOT" "$WORK/upper" "$WORK/overlay-work"
if mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$WORK/upper,workdir=$WORK/overlay-work" \
        "$ROOT" 2>/dev/null; then
    OVERLAY=1
    say "the root file system: an overlay on $BASE"
else
    say "copying the root file system into $ROOT"
    rmdir "$ROOT"
    cp -a --reflink=auto "$BASE" "$ROOT"
fi
# The checkout as it is now (tracked and new files, not what .gitignore
# names), installed as docs/operations.md says.
mkdir -p "$ROOT/usr/src/syncsup"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | xargs -0 -I{} sh -c 'test -e "$1" && printf "%s\0" "$1"' _ {} \
    | tar --null -T - -cf -) | tar -xf - -C "$ROOT/usr/src/syncsup"
cp "$REPO/scripts/systemd-proof-inside.sh" "$ROOT/usr/local/sbin/syncsup-proof-inside"
chmod 0755 "$ROOT/usr/local/sbin/syncsup-proof-inside"
rm -f "$ROOT/etc/hostname"; echo syncsup-proof > "$ROOT/etc/hostname"

NSPAWN=(systemd-nspawn --register=no --keep-unit --quiet -D "$ROOT")
# The wheels come from the host's pip (its index and certificates), kept in
# the cache; the container installs from them alone.
say "building the syncsup wheel and fetching its dependencies with the host's pip"
WHEELS=$WORK/wheels
python3 -m pip wheel --quiet --disable-pip-version-check --no-deps \
    -w "$WHEELS" "$ROOT/usr/src/syncsup" >&2
# From the cache alone when it has them all, else from the index.
python3 -m pip download --quiet --disable-pip-version-check -d "$CACHE/wheels" \
    --no-index --find-links "$CACHE/wheels" \
    --python-version 3.11 --only-binary=:all: "$WHEELS"/syncsup-*.whl >/dev/null 2>&1 \
|| python3 -m pip download --quiet --disable-pip-version-check -d "$CACHE/wheels" \
    --python-version 3.11 --only-binary=:all: "$WHEELS"/syncsup-*.whl >&2 \
    || skip "pip could not fetch syncsup's dependencies"
# pip download copies the syncsup wheel too: never keep it, or a later run
# would install this one instead of its own.
rm -f "$CACHE"/wheels/syncsup-*.whl
cp -n "$CACHE"/wheels/*.whl "$WHEELS"/
say "installing syncsup into /opt/syncsup inside the container, as docs/operations.md says"
"${NSPAWN[@]}" --pipe --bind-ro="$WHEELS:/usr/src/wheels" \
    /bin/sh -ec 'python3 -m venv /opt/syncsup
                 /opt/syncsup/bin/pip install --quiet --disable-pip-version-check --no-index \
                     --find-links /usr/src/wheels syncsup
                 ln -sf /opt/syncsup/bin/syncsup /usr/local/bin/syncsup' </dev/null >&2

say "booting the container (systemd as PID 1, a private network)"
# A unified cgroup hierarchy and the bpf() call let the container's systemd
# enforce IPAddressDeny=/IPAddressAllow= (its BPF firewall), which the proof
# checks; without them systemd would silently run the unit unfiltered.
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 "${NSPAWN[@]}" -b --private-network --system-call-filter=bpf --console=pipe </dev/null >"$WORK/console.log" 2>&1 &
NSPAWN_PID=$!
for _ in $(seq 300); do
    LEADER=$(ps -o pid= --ppid "$NSPAWN_PID" | head -n1 | tr -d ' ' || true)
    [ -n "$LEADER" ] && [ "$(cat "/proc/$LEADER/comm" 2>/dev/null)" = systemd ] && break
    LEADER=
    sleep 0.2
done
[ -n "$LEADER" ] || { cat "$WORK/console.log" >&2; say "FAILED: the container's systemd did not start"; exit 1; }
inside() { nsenter --target "$LEADER" --all -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
state=
for _ in $(seq 600); do
    state=$(inside systemctl is-system-running 2>/dev/null || true)
    case "$state" in running|degraded) break ;; esac
    sleep 0.2
done
say "systemd in the container: ${state:-not answering} (PID 1: $(inside cat /proc/1/comm))"
case "$state" in running|degraded) ;; *) say "FAILED: the container did not boot"; exit 1 ;; esac

set +e
inside /usr/local/sbin/syncsup-proof-inside
rc=$?
set -e
if [ "$rc" = 0 ]; then say "PROVEN"; else say "FAILED (exit $rc)"; fi
exit "$rc"
