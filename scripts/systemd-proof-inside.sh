#!/bin/bash
# The steps of scripts/systemd-proof.sh that run inside the booted container
# (systemd as PID 1, syncsup in /opt/syncsup): what an operator does after
# installing, each step checked. Not meant for a real host: it writes
# /etc/syncsup/proof.toml, an ssh key and root's authorized_keys, and adds
# 192.0.2.10 (a documentation address) to the loopback device, so that the
# ssh target is reached at an address that is not localhost, as a real one
# is.
set -euo pipefail

UNIT=syncsup@proof.service
SRC=/srv/src
MIRROR=/srv/mirror
REMOTE=/srv/remote
SSH_ADDR=192.0.2.10
OTHER_ADDR=192.0.2.11
STATUS_FILE=/run/lsyncd/proof.status
METRICS=127.0.0.1:9477
PY=/usr/bin/python3

step() { echo "== $*" >&2; }
fail() { echo "FAILED: $*" >&2; systemctl status --no-pager "$UNIT" >&2 || true
         journalctl -u "$UNIT" --no-pager -n 60 >&2 || true; exit 1; }

# Every name, its type, bytes, mode and owner: the source and a target
# compared, until equal or after a generous timeout (a convergence, not a
# timing).
converged() {
    "$PY" - "$@" <<'EOF'
import os, sys, time
def snap(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if os.path.islink(p):
                body = os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as fh:
                    body = fh.read()
            else:
                body = None
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_uid, st.st_gid, body)
    return out
src, targets = sys.argv[1], sys.argv[2:]
deadline = time.monotonic() + 240
while True:
    want = snap(src)
    diff = [t for t in targets if snap(t) != want]
    if not diff:
        sys.exit(0)
    if time.monotonic() > deadline:
        for t in diff:
            got = snap(t)
            print(f"{t} differs from {src}:", sorted(k for k in set(want) | set(got)
                                                  if want.get(k) != got.get(k))[:20],
                  file=sys.stderr)
        sys.exit(1)
    time.sleep(0.2)
EOF
}

main_pid() { systemctl show -P MainPID "$UNIT"; }
restarts() { systemctl show -P NRestarts "$UNIT"; }

step "an ssh target at $SSH_ADDR: sshd in this container, a key for the daemon, the host key pinned"
ip addr add "$SSH_ADDR/32" dev lo 2>/dev/null || true
ip addr add "$OTHER_ADDR/32" dev lo 2>/dev/null || true
ip link set lo up
install -d -m 0755 /etc/syncsup
[ -f /etc/syncsup/id_ed25519 ] || ssh-keygen -q -t ed25519 -N '' -f /etc/syncsup/id_ed25519
install -d -m 0700 /root/.ssh
cat /etc/syncsup/id_ed25519.pub >> /root/.ssh/authorized_keys
systemctl is-active --quiet ssh || systemctl start ssh
for _ in $(seq 30); do
    keys=$(ssh-keyscan -T 5 "$SSH_ADDR" 2>/dev/null || true)
    [ -n "$keys" ] && break
    sleep 1
done
[ -n "$keys" ] || fail "sshd does not answer on $SSH_ADDR"
echo "$keys" >> /etc/ssh/ssh_known_hosts
install -d -m 0755 "$SRC" "$MIRROR" "$REMOTE" "$(dirname "$STATUS_FILE")"
# The target side, as docs/operations.md sets up a target host: rsync and
# the agent on the PATH of the ssh login.
ln -sf /opt/syncsup/bin/syncsup-target /usr/local/bin/syncsup-target

step "a config, checked"
cat > /etc/syncsup/proof.toml <<EOF
[settings]
state_dir = "/var/lib/syncsup/proof"
log_level = "info"
metrics = "$METRICS"
# as an imported Lsyncd config may have it: under /run, which the unit
# hides, so the drop-in binds its directory in
status_file = "$STATUS_FILE"
status_interval = 1

[[sync]]
name = "proof"
source = "$SRC"
mode = "rsync"
delay = 0.5
delete = true
targets = ["$MIRROR", "root@$SSH_ADDR:$REMOTE"]

[sync.ssh]
identity_file = "/etc/syncsup/id_ed25519"
options = ["StrictHostKeyChecking=yes"]
EOF
syncsup check /etc/syncsup/proof.toml >&2 || fail "syncsup check"

step "the unit and its drop-in written by syncsup unit, verified"
/opt/syncsup/bin/syncsup unit --config /etc/syncsup/proof.toml --output /etc/systemd/system >&2
grep -q '^ExecStart=/opt/syncsup/bin/syncsup start' /etc/systemd/system/syncsup@.service \
    || fail "the unit does not name /opt/syncsup/bin/syncsup"
# the unit's user: its sysusers.d file written, and the user created from it
[ -f /etc/sysusers.d/syncsup.conf ] || fail "no /etc/sysusers.d/syncsup.conf"
getent passwd syncsup >&2 || fail "syncsup unit did not create the service user"
SERVICE_UID=$(id -u syncsup)
cat /etc/systemd/system/syncsup@proof.service.d/sandbox.conf >&2
systemd-analyze verify /etc/systemd/system/syncsup@proof.service >&2 || fail "systemd-analyze verify"
systemctl daemon-reload

step "the sandbox holds: a process in it cannot have systemd start a command outside it"
# The unit and drop-in as written, with only the command and its type
# changed: it asks systemd, through its private socket and through D-Bus,
# to start a unit that would leave a mark.
printf '[Service]\nType=oneshot\nExecStart=/bin/touch /var/lib/proof-escaped\n' \
    > /etc/systemd/system/proof-escaped.service
cat > /usr/local/sbin/proof-escape <<PROBE
#!/bin/sh
echo "visible in /run: \$(ls -A /run | tr '\\n' ' ')"
# an address the drop-in's IPAddressAllow= does not name (on loopback a
# connection that is let through is made at once: 2 s is ample)
python3 -c "import socket; socket.create_connection(('$OTHER_ADDR', 22), 2)" \
    && echo "connected to $OTHER_ADDR" || echo "no connection to $OTHER_ADDR"
systemctl start proof-escaped.service
busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 \
    org.freedesktop.systemd1.Manager StartUnit ss proof-escaped.service replace
exit 0
PROBE
chmod 0755 /usr/local/sbin/proof-escape
python3 -c "import socket; socket.create_connection(('$OTHER_ADDR', 22), 2)" \
    || fail "$OTHER_ADDR:22 cannot be reached even outside the sandbox"
sed -e 's#^ExecStart=.*#ExecStart=/usr/local/sbin/proof-escape#' -e 's#^Type=notify#Type=oneshot#' \
    -e '/^NotifyAccess=\|^WatchdogSec=\|^Restart/d' \
    /etc/systemd/system/syncsup@.service > /etc/systemd/system/proof-escape@.service
cp -r /etc/systemd/system/syncsup@proof.service.d /etc/systemd/system/proof-escape@proof.service.d
systemctl daemon-reload
systemctl start proof-escape@proof.service || fail "the escape probe did not run"
journalctl -u proof-escape@proof.service --no-pager -o cat | grep -v '^$' >&2 || true
[ ! -e /var/lib/proof-escaped ] || fail "a process in the sandbox had systemd start a command outside it"
echo "refused: the probe could not reach systemd" >&2
if ! journalctl -u proof-escape@proof.service --no-pager -o cat \
        | grep -q "no connection to $OTHER_ADDR"; then
    journalctl -b --no-pager -o cat | grep -i 'bpf\|cgroup' >&2 || true
    stat -fc 'cgroup file system: %T' /sys/fs/cgroup >&2
    fail "the sandbox reached $OTHER_ADDR, which IPAddressAllow= does not name"
fi

step "a tree with two other users' files (0600: only a DAC override reads them), then start"
mkdir -p "$SRC/sub/deeper"
head -c 100000 /dev/urandom > "$SRC/big.bin"
echo "secret" > "$SRC/sub/private.txt"
chmod 0600 "$SRC/sub/private.txt"
ln -s ../big.bin "$SRC/sub/link"
# Files of another user, directories root's: with an rsync whose sender
# follows a raced symlink (the probe decides), syncsup refuses a source
# whose directories another user can write.
chown 4321:4322 "$SRC/sub/private.txt"
chown -h 4321:4322 "$SRC/sub/link"
echo "second user" > "$SRC/sub/deeper/other.txt"
chmod 0640 "$SRC/sub/deeper/other.txt"
chown 4331:4332 "$SRC/sub/deeper/other.txt"
# as a unit that ran as root left its state (the escape probe's run made
# the directory syncsup's already): handed to syncsup at start
install -d -m 0700 /var/lib/syncsup/proof
chown root:root /var/lib/syncsup/proof
touch /var/lib/syncsup/proof/left-by-root
systemctl start "$UNIT" || fail "systemctl start (Type=notify: returns after READY=1)"
owner=$(stat -c %U /var/lib/syncsup/proof/left-by-root)
[ "$owner" = syncsup ] || fail "the state root left belongs to $owner, not syncsup, after start"
systemctl is-active --quiet "$UNIT" || fail "not active after start"
converged "$SRC" "$MIRROR" "$REMOTE" || fail "the startup sync did not converge"
echo "startup sync converged (local and ssh targets, owners of two users included)" >&2

step "the service runs as the user syncsup, with the mirroring capabilities only"
pid=$(main_pid)
uid=$(awk '/^Uid:/ {print $3}' "/proc/$pid/status")
capeff=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
echo "MainPID $pid: effective uid $uid, CapEff $capeff" >&2
[ "$uid" = "$SERVICE_UID" ] || fail "the daemon runs as uid $uid, not syncsup ($SERVICE_UID)"
[ "$capeff" = 000000000000001f ] || fail "CapEff $capeff, not CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID"
procs=$(cat "/sys/fs/cgroup$(systemctl show -P ControlGroup "$UNIT")/cgroup.procs")
for p in $procs; do
    puid=$(awk '/^Uid:/ {print $3}' "/proc/$p/status" 2>/dev/null || true)
    [ -z "$puid" ] || [ "$puid" = "$SERVICE_UID" ] \
        || fail "process $p of the unit runs as uid $puid: $(tr '\0' ' ' < "/proc/$p/cmdline")"
done
echo "all $(echo "$procs" | wc -w) processes of the unit run as syncsup" >&2

step "root's syncsup status finds the service's daemon without a config"
syncsup status >&2 || fail "syncsup status (no config) as root"
syncsup status | grep -q "^proof " || fail "syncsup status does not list proof"
syncsup status proof >/dev/null || fail "syncsup status proof"

for _ in $(seq 300); do [ -s "$STATUS_FILE" ] && break; sleep 0.2; done
[ -s "$STATUS_FILE" ] || fail "no status file at $STATUS_FILE (bound into the hidden /run)"
echo "the status file under /run is written: $(head -n 1 "$STATUS_FILE")" >&2

step "live changes"
echo "changed while running" > "$SRC/sub/deeper/new.txt"
chown 4321:4322 "$SRC/sub/deeper/new.txt"
rm "$SRC/big.bin"
mv "$SRC/sub/private.txt" "$SRC/sub/renamed.txt"
converged "$SRC" "$MIRROR" "$REMOTE" || fail "live changes did not converge"

step "metrics served from inside the sandbox"
"$PY" -c "import urllib.request,sys; r=urllib.request.urlopen('http://$METRICS/metrics', timeout=15); \
sys.exit(0 if b'syncsup_' in r.read() else 1)" || fail "no metrics on $METRICS"

step "systemctl restart"
before=$(main_pid)
systemctl restart "$UNIT" || fail "systemctl restart"
after=$(main_pid)
[ "$after" != "$before" ] && [ "$after" != 0 ] || fail "MainPID $before -> $after after restart"
echo "restart after" > "$SRC/after-restart.txt"
converged "$SRC" "$MIRROR" "$REMOTE" || fail "no convergence after restart"

step "systemctl kill -s KILL: every process of the unit killed; back after RestartSec"
before=$(main_pid)
n0=$(restarts)
systemctl kill -s KILL "$UNIT"
echo "written while it was dead" > "$SRC/while-dead.txt"
for _ in $(seq 600); do
    if [ "$(restarts)" -gt "$n0" ] && systemctl is-active --quiet "$UNIT"; then break; fi
    sleep 0.2
done
systemctl is-active --quiet "$UNIT" || fail "not active again after kill -9"
[ "$(restarts)" -gt "$n0" ] || fail "NRestarts did not grow after kill -9"
[ "$(main_pid)" != "$before" ] || fail "same MainPID after kill -9"
converged "$SRC" "$MIRROR" "$REMOTE" || fail "no convergence after kill -9"
echo "restarted by systemd (NRestarts $(restarts)); what changed while it was dead arrived" >&2
# /proc/sys is hidden (ProcSubset=pid): the boot id comes from /run/syncsup,
# so a restart within the boot compares only what changed since the last
# seen-point (a margin of seconds), not as after a reboot (ten minutes).
journalctl -u "$UNIT" --no-pager -o short-unix | grep "changed since" | tail -n 1 | "$PY" -c '
import datetime, sys
line = sys.stdin.read()
logged = float(line.split()[0])
since = datetime.datetime.strptime(line.rsplit("since ", 1)[1].strip()[:19], "%Y-%m-%d %H:%M:%S")
lag = logged - since.timestamp()
print(f"the restart compared what changed in the last {lag:.0f} s", file=sys.stderr)
sys.exit(0 if lag < 600 else 1)' || fail "the restart was taken for a reboot (the boot id is not kept)"

step "journalctl -u $UNIT"
ups=$(journalctl -u "$UNIT" --no-pager -o cat | grep -c "collator up" || true)
[ "$ups" -ge 3 ] || fail "the journal shows $ups starts of the collator, not 3 (start, restart, after kill)"
journalctl -u "$UNIT" --no-pager -n 8 >&2

step "systemd-analyze security of the loaded unit"
systemd-analyze security --no-pager "$UNIT" | grep -v '^  ✓\|^✓' >&2 || true
systemd-analyze security --no-pager "$UNIT" | tail -n 1
exposure=$(systemd-analyze security --no-pager "$UNIT" | tail -n 1 | grep -o '[0-9]\+\.[0-9]' | head -n 1)
"$PY" -c "import sys; sys.exit(0 if float('$exposure') <= 2.0 else 1)" \
    || fail "the loaded unit's exposure is $exposure, above 2.0"

step "stop: nothing left running"
cgroup=$(systemctl show -P ControlGroup "$UNIT")
systemctl stop "$UNIT"
systemctl is-active --quiet "$UNIT" && fail "still active after stop"
left=$(pgrep -f '/opt/syncsup/bin/' || true)
[ -z "$left" ] || fail "processes left after stop: $left"
converged "$SRC" "$MIRROR" "$REMOTE" || fail "targets differ after stop"
echo "stopped; cgroup $cgroup empty; targets equal to the source" >&2
