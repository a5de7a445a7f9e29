#!/bin/bash
# Boot a debootstrapped Debian 12 under systemd-nspawn with this checkout bound in, and start
# every unit of deploy/systemd under a real systemd (deploy/nspawn/check-units.sh). Needs root,
# systemd-container and debootstrap; the root filesystem is made once (about 600 MB, 4 min).
#   deploy/nspawn/run.sh            # exit 0 when every unit is active
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
root=${OBS_NSPAWN_ROOT:-/var/lib/obs-nspawn/bookworm}
venv=${OBS_VENV:-$repo/.venv}
if [ ! -x "$root/lib/systemd/systemd" ]; then
    mkdir -p "$(dirname "$root")"
    debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,python3,python3-bpfcc,procps,iproute2 \
        bookworm "$root" http://deb.debian.org/debian
fi
cat >"$root/etc/systemd/system/obs-check.service" <<'UNIT'
[Unit]
Description=start every obs unit and record the outcome
[Service]
Type=oneshot
ExecStart=/opt/obs/deploy/nspawn/check-units.sh
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/obs-check.service "$root/etc/systemd/system/multi-user.target.wants/"
results=${OBS_NSPAWN_RESULTS:-$(mktemp -d)}
mkdir -p "$results"
# The container shares the host kernel: bcc compiles against the host's headers and loads
# into the host kernel, so tracefs, bpffs and the module/header trees are bound in.
timeout "${OBS_NSPAWN_TIMEOUT:-600}" systemd-nspawn --quiet -D "$root" --boot --register=no --keep-unit \
    --capability=all --system-call-filter='bpf perf_event_open fanotify_init fanotify_mark' \
    --bind-ro=/lib/modules --bind-ro=/usr/src --bind=/sys/kernel/tracing --bind=/sys/fs/bpf \
    --bind-ro="$repo:/opt/obs" --bind-ro="$venv:/opt/obs-venv" --bind="$results:/results" \
    </dev/null >"$results/console.log" 2>&1 || echo "systemd-nspawn exited $?" >>"$results/console.log"
cat "$results/check.log" 2>/dev/null || { echo "no check.log; console:"; tail -40 "$results/console.log"; }
echo "== summary"
cat "$results/active" 2>/dev/null || exit 1
! grep -qv '^active restarts=0 ready ' "$results/active"
