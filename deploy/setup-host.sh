#!/usr/bin/env bash
# Prepare this host for obs, idempotently:
#   1. Debian packages: bcc (python3-bpfcc), bpftool, bpftrace, venv, mandoc, iproute2; for the
#      tests also golang-go (a Go TLS client is built) and libcurl built with GnuTLS and NSS.
#   2. Kernel headers for bcc: nothing when the running kernel already has them; otherwise the
#      nearest linux-headers-* Debian offers, linked where bcc looks (/lib/modules/$(uname -r)).
#   3. tracefs mounted (bcc's TRACEPOINT_PROBE reads formats from it); bpffs for --pin.
#   4. A venv of Debian's python3 that sees bcc (--system-site-packages), obs installed into it,
#      and every obs-* tool linked into /usr/local/bin.
#   5. With --agents: the real AI agents the e2e tests drive, pinned, from npm into a cache
#      (deploy/agents.sh; a second run downloads nothing).
# Usage: deploy/setup-host.sh [--venv DIR] [--no-test-deps] [--agents]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv="$repo/.venv"
extras="[otel,test,lint]"
agents=0
while [ $# -gt 0 ]; do
    case "$1" in
        --venv) venv=$2; shift 2 ;;
        --no-test-deps) extras="[otel]"; shift ;;
        --agents) agents=1; shift ;;
        *) echo "setup-host: unknown option $1" >&2; exit 2 ;;
    esac
done

say() { printf 'setup-host: %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { say "must run as root (installs packages, mounts tracefs)"; exit 1; }

apt_updated=0
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ $apt_updated = 0 ]; then apt-get update -qq; apt_updated=1; fi
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

apt_install python3-bpfcc python3-venv python3-pip bpftool bpftrace iproute2 mandoc man-db curl \
    nodejs systemd procps util-linux python3-yaml gcc stress-ng
if [ -n "$extras" ]; then
    apt_install golang-go libcurl3-gnutls libcurl3-nss
fi

# --- kernel headers -------------------------------------------------------------------------
krel=$(uname -r)
mods=/lib/modules/$krel
if { [ -e "$mods/build/include/generated/autoconf.h" ] &&
     { [ -e "$mods/build/include/linux/kconfig.h" ] || [ -e "$mods/source/include/linux/kconfig.h" ]; }; } ||
   [ -e /sys/kernel/kheaders.tar.xz ]; then
    say "kernel headers for $krel present"
else
    # Nearest Debian headers: the highest cloud/amd64 flavour whose version is <= the running
    # kernel, else the lowest above it. Struct layouts from them are NOT trusted at run time
    # (libobs reads offsets from BTF); bcc only needs them to compile.
    if [ $apt_updated = 0 ]; then apt-get update -qq; apt_updated=1; fi
    flavour=cloud-amd64
    kver=${krel%%-*}
    cands=$(apt-cache search --names-only "^linux-headers-[0-9].*-$flavour\$" | awk '{print $1}' |
        sed -e 's/^linux-headers-//' -e "s/-$flavour\$//" | sort -V)
    [ -n "$cands" ] || { say "no linux-headers-*-$flavour package found"; exit 1; }
    pick=""
    for c in $cands; do
        cv=${c%%[-+]*}
        if [ "$(printf '%s\n%s\n' "$cv" "$kver" | sort -V | head -1)" = "$cv" ]; then pick=$c; fi
    done
    [ -n "$pick" ] || pick=$(echo "$cands" | head -1)
    apt_install "linux-headers-$pick-$flavour"
    common=$(ls -d /usr/src/linux-headers-"${pick}"-common 2>/dev/null ||
        ls -d /usr/src/linux-headers-"${pick%%-*}"*-common | tail -1)
    mkdir -p "$mods"
    ln -sfn "/usr/src/linux-headers-$pick-$flavour" "$mods/build"
    ln -sfn "$common" "$mods/source"
    say "linked headers $pick-$flavour for running kernel $krel"
fi

# --- filesystems ------------------------------------------------------------------------------
if [ ! -e /sys/kernel/tracing/events ] && [ ! -e /sys/kernel/debug/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing
    say "mounted tracefs"
fi
if ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf 2>/dev/null && say "mounted bpffs" || true
fi
if ! mountpoint -q /sys/kernel/security 2>/dev/null; then
    mount -t securityfs securityfs /sys/kernel/security 2>/dev/null || true
fi

# --- python environment -------------------------------------------------------------------------
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import bcc' 2>/dev/null; then
    rm -rf "$venv"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
    say "created venv $venv"
fi
stamp="$venv/.obs-installed"
# compat mode puts the checkout itself on sys.path: new modules need no reinstall, and a
# worktree's PYTHONPATH still comes first.
if [ ! -e "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ] ||
    ! grep -qxF "compat $extras" "$stamp"; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e "$repo$extras"
    echo "compat $extras" > "$stamp"
fi
# Bytecode written now (only what changed since): a unit's ProtectSystem=strict keeps the tools
# from writing __pycache__ into the checkout, as PYTHONDONTWRITEBYTECODE does, and compiling
# libobs from source took 15-30 ms of CPU of each tool's start.
"$venv/bin/python" -m compileall -q "$repo/libobs" "$repo/tools" >/dev/null
for t in "$repo"/tools/obs_*.py; do
    n=$(basename "$t" .py); n=${n//_/-}
    [ -x "$venv/bin/$n" ] && ln -sfn "$venv/bin/$n" "/usr/local/bin/$n"
done
mkdir -p /usr/local/share/man/man1
for m in "$repo"/man/obs-*.1; do
    [ -e "$m" ] && ln -sfn "$m" "/usr/local/share/man/man1/$(basename "$m")"
done
"$venv/bin/python" -c 'import bcc, orjson, typer' || { say "venv cannot import bcc/orjson/typer"; exit 1; }
if [ $agents = 1 ]; then
    bash "$repo/deploy/agents.sh" >/dev/null
fi
say "ready: venv $venv, tools in /usr/local/bin"
