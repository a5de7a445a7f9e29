#!/usr/bin/env bash
# Install the real AI agents the test suite drives, at pinned versions, into a root-owned cache:
#   /var/cache/obs/agents/<name>@<version>/  (npm install --prefix; npm's own cache beside it)
# Idempotent: a version whose binary already answered --version is not touched again, so a
# second run downloads nothing. Each agent's binary is checked with --version after install:
# claude-code and codex ship their native executables in optional per-platform packages, and a
# silently skipped optional package would leave a launcher with nothing to launch.
# Prints one line per agent on stdout: `<command> <version> <path of the executable>`.
# Usage: deploy/agents.sh [--cache DIR] [--list]   (--list: print only, install nothing)
set -euo pipefail

# The one place the versions are pinned (bump here; tests read them from our stdout).
AGENTS=(
    "claude @anthropic-ai/claude-code 2.1.332"
    "codex @openai/codex 0.171.0"
    "gemini @google/gemini-cli 0.61.0"
)

# Older Claude Code releases the BoringSSL locator is tested against besides the one above
# (tests/e2e/test_real_agents.py): only their native executables, from the platform package.
CLAUDE_PACKS=(2.1.110 2.1.200 2.1.328)

cache=/var/cache/obs/agents
list=0
while [ $# -gt 0 ]; do
    case "$1" in
        --cache) cache=$2; shift 2 ;;
        --list) list=1; shift ;;
        *) echo "agents: unknown option $1" >&2; exit 2 ;;
    esac
done

say() { printf 'agents: %s\n' "$*" >&2; }

install_one() {  # <command> <npm package> <version> <dir>
    local cmd=$1 pkg=$2 ver=$3 dir=$4
    [ -e "$dir/.obs-ok" ] && return 0
    command -v npm >/dev/null || { say "npm is missing (setup-host.sh installs nodejs/npm)"; return 1; }
    say "installing $pkg@$ver into $dir"
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp"
    # --include=optional: the native binaries live in optional platform packages.
    # --prefer-offline: a warm npm cache is used without asking the registry again.
    npm install --prefix "$dir.tmp" --cache "$cache/.npm" --prefer-offline --no-audit --no-fund \
        --no-update-notifier --include=optional --loglevel=error "$pkg@$ver" >&2
    # npm's bin links are relative, so the tree may move into place as a whole.
    local out
    # In a fresh network namespace (no interfaces): nothing may phone home from a version check.
    if ! out=$(unshare --net "$dir.tmp/node_modules/.bin/$cmd" --version 2>&1); then
        say "$pkg@$ver installed but its binary does not run: $out"
        return 1
    fi
    say "$pkg@$ver: --version → $out"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    touch "$dir/.obs-ok"
}

fetch_pack() {  # <version>: $cache/.packs/<version>/package/claude
    local ver=$1 dir="$cache/.packs/$1"
    [ -x "$dir/package/claude" ] && return 0
    say "fetching the Claude Code $ver executable into $dir"
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp"
    (cd "$dir.tmp" && npm pack --cache "$cache/.npm" --prefer-offline --loglevel=error \
        "@anthropic-ai/claude-code-linux-x64@$ver" >/dev/null && tar -xzf ./*.tgz && rm -f ./*.tgz)
    [ -x "$dir.tmp/package/claude" ] || { say "no executable in the $ver pack"; return 1; }
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
}

[ $list = 1 ] || { [ "$(id -u)" = 0 ] || { say "must run as root (writes $cache)"; exit 1; }; }
[ $list = 1 ] || { mkdir -p "$cache" && chmod 755 "$cache"; }
for entry in "${AGENTS[@]}"; do
    read -r cmd pkg ver <<<"$entry"
    dir="$cache/${pkg//\//+}@$ver"
    [ $list = 1 ] || install_one "$cmd" "$pkg" "$ver" "$dir"
    echo "$cmd $ver $dir/node_modules/.bin/$cmd"
done
if [ $list = 0 ]; then
    for ver in "${CLAUDE_PACKS[@]}"; do fetch_pack "$ver"; done
fi
