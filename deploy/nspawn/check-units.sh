#!/bin/sh
# Runs inside a booted Debian container (deploy/nspawn/run.sh): installs every unit of
# deploy/systemd and starts each one alone on a fresh host -- /var/log/obs and /run/obs removed
# first, so no unit can lean on a directory another one made -- waits until it is ready (the
# heartbeat file a tool writes once every probe is attached; obs-merge's output file), stops it,
# and writes one line per unit to /results/active. Powers the container off when done.
set -u
out=/results
units="obs-exec obs-net obs-llm obs-ssl obs-fileguard obs-enforce@a1 obs-merge"
exec >"$out/check.log" 2>&1
cp /opt/obs/deploy/systemd/*.service /etc/systemd/system/
for t in /opt/obs/tools/obs_*.py; do
    name=$(basename "$t" .py | tr _ -)
    mod=tools.$(basename "$t" .py)
    printf '#!/bin/sh\nPYTHONPATH=/opt/obs exec /opt/obs-venv/bin/python -m %s "$@"\n' "$mod" \
        >"/usr/local/bin/$name"
    chmod 755 "/usr/local/bin/$name"
done
# The guards' inputs, root-owned as they must be; an agent cgroup for obs-enforce@a1.
mkdir -p /etc/obs/enforce
echo /nonexistent-obs-check >/etc/obs/fileguard.deny
echo 192.0.2.1 >/etc/obs/enforce/a1.deny
cg=$(ls -d /sys/fs/cgroup/unified 2>/dev/null || echo /sys/fs/cgroup)
mkdir -p "$cg/obs-check-agent"
printf 'OBS_ENFORCE_CGROUP=%s\nOBS_DENY_FILE=/etc/obs/enforce/a1.deny\n' "$cg/obs-check-agent" \
    >/etc/obs/enforce/a1.env
systemctl daemon-reload
: >"$out/active"
for u in $units; do
    case $u in
        obs-fileguard) proof=/run/obs-fileguard/heartbeat.json ;;
        obs-enforce@*) proof=/run/obs/obs-enforce-${u#obs-enforce@}.heartbeat ;;
        obs-merge) proof=/var/log/obs/merged.ndjson ;;
        *) proof=/run/obs/$u.heartbeat ;;
    esac
    rm -rf /var/log/obs /run/obs /run/obs-fileguard  # a fresh host
    systemctl start --no-block "$u.service"
    for _ in $(seq 1 60); do  # bcc compiles for a few seconds on 2 cores
        [ -e "$proof" ] && break
        sleep 1
    done
    sleep 2  # still up a moment later?
    [ -e "$proof" ] && ready=ready || ready=not-ready
    state=$(systemctl is-active "$u.service")
    restarts=$(systemctl show -P NRestarts "$u.service")
    echo "== $u $state restarts=$restarts $ready"
    systemctl status --no-pager --lines=0 "$u.service" | sed -n 1,4p
    # The first failure says why (this boot only).
    journalctl -b -u "$u.service" --no-pager -o cat | grep -v -e '^Start' -e '^Stopp' \
        -e 'Scheduled restart' -e '^[│╭╰]' | head -n 6
    ls -l /var/log/obs /run/obs 2>&1 | sed 's/^/    /'
    printf '%s restarts=%s %s %s\n' "$state" "$restarts" "$ready" "$u" >>"$out/active"
    systemctl stop "$u.service"
done
systemctl poweroff
