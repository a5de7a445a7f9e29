"""The real agents (Claude Code, Codex CLI, Gemini CLI) as the tests drive them.

Installed by deploy/agents.sh (pinned versions, cached under /var/cache/obs/agents); each is
run non-interactively in a loopback-only network namespace (support.netns) against the
provider stand-in (support.agent_server) running in the same namespace, with a private HOME
whose configuration turns off telemetry, update checks and other non-essential traffic.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import provider_server as ps
from tests.support.netns import in_netns, netns

REPO = Path(__file__).resolve().parents[2]
AGENTS_SH = REPO / "deploy" / "agents.sh"
AGENTS = ("claude", "codex", "gemini")
API_OF = {"claude": "anthropic", "codex": "openai-responses", "gemini": "gemini"}
# What each pinned agent's HTTPS goes through (docs/real-agents.md has how this was found).
STACK_OF = {"claude": "BoringSSL, static in a stripped Bun executable",
            "codex": "rustls, static musl Rust, stripped",
            "gemini": "OpenSSL in Node"}
PROMPT = "Run the shell command the tool call asks for, then say done."


def pinned(install: bool = False) -> dict[str, tuple[str, Path]]:
    """{command: (version, executable)} as deploy/agents.sh pins them; with install, installs
    what is missing first (cached: a no-op once installed)."""
    args = ["bash", str(AGENTS_SH)] + ([] if install else ["--list"])
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    rows = (line.split(" ", 2) for line in out.splitlines() if line.strip())
    return {cmd: (ver, Path(path)) for cmd, ver, path in rows}


def installed() -> dict[str, tuple[str, Path]]:
    """The pinned agents whose install completed (deploy/agents.sh marks each with .obs-ok)."""
    return {c: (v, p) for c, (v, p) in pinned().items()
            if (p.parents[2] / ".obs-ok").exists()}


def agent_env(agent: str, home: Path, ca: Path) -> dict[str, str]:
    """Environment and config files (written under home) pointing `agent` at the stand-in,
    with everything non-essential off."""
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "TERM": "dumb", "NO_COLOR": "1", "CI": "1"}
    if agent == "claude":
        env |= {"ANTHROPIC_API_KEY": "sk-ant-api03-" + "A" * 40, "NODE_EXTRA_CA_CERTS": str(ca),
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
                "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
                "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1"}
    elif agent == "codex":
        codex_home = home / ".codex"
        codex_home.mkdir(parents=True, exist_ok=True)
        (codex_home / "config.toml").write_text(
            'model = "gpt-5-codex"\nmodel_provider = "standin"\n'
            "check_for_update_on_startup = false\n"
            "[analytics]\nenabled = false\n[feedback]\nenabled = false\n"
            '[otel]\nexporter = "none"\n'
            '[model_providers.standin]\nname = "OpenAI stand-in"\n'
            'base_url = "https://api.openai.com/v1"\nwire_api = "responses"\n'
            'env_key = "OPENAI_API_KEY"\n')
        env |= {"CODEX_HOME": str(codex_home), "OPENAI_API_KEY": "sk-proj-" + "C" * 40,
                "SSL_CERT_FILE": str(ca), "CODEX_CA_CERTIFICATE": str(ca)}
    else:
        gem = home / ".gemini"
        gem.mkdir(parents=True, exist_ok=True)
        (gem / "settings.json").write_text(json.dumps({
            "security": {"auth": {"selectedType": "gemini-api-key"}},
            "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
            "privacy": {"usageStatisticsEnabled": False},
            "telemetry": {"enabled": False}}))
        env |= {"GEMINI_API_KEY": "AIza" + "B" * 35, "NODE_EXTRA_CA_CERTS": str(ca),
                "GEMINI_CLI_TRUST_WORKSPACE": "true"}
    return env


def agent_argv(agent: str, exe: Path, prompt: str = PROMPT) -> list[str]:
    if agent == "claude":
        return [str(exe), "-p", prompt, "--allowedTools", "Bash"]
    if agent == "codex":
        return [str(exe), "exec", "--skip-git-repo-check",
                "--dangerously-bypass-approvals-and-sandbox", prompt]
    # An explicit model skips the router, whose extra classifier calls want JSON answers.
    return [str(exe), "-p", prompt, "--yolo", "-m", ps.REQUEST_MODEL["gemini"]]


@dataclass
class Run:
    agent: str
    status: int
    stdout: str
    stderr: str
    pid: int
    log: list[dict[str, Any]]  # the stand-in's log, one dict per request

    def model_calls(self) -> list[dict[str, Any]]:
        return [r for r in self.log if r["model_call"]]


@contextlib.contextmanager
def stand_in(ns: str, tmp: Path, delay_ms: int = 250, nagle: bool = False,
             command: str = "echo obs-agent-tool", capture: Path | None = None
             ) -> Iterator[tuple[Path, Path]]:
    """The stand-in in namespace `ns` on port 443 of the providers' addresses; yields
    (ca.pem, log path)."""
    ca, cert, key = ps.write_certs(tmp)
    log = tmp / "server.ndjson"
    args = [sys.executable, "-m", "tests.support.agent_server", "--cert", str(cert), "--key",
            str(key), "--log", str(log), "--delay", str(delay_ms), "--command", command]
    args += ["--nagle"] if nagle else []
    args += ["--capture", str(capture)] if capture else []
    with ps.server_process(in_netns(ns, args), "agent stand-in", cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)}):
        yield ca, log


def run_agent(agent: str, exe: Path, *, delay_ms: int = 250, nagle: bool = False,
              command: str = "echo obs-agent-tool", capture: Path | None = None,
              timeout: float = 120, cgroup: Path | None = None) -> Run:
    """Run `agent` once against a fresh stand-in in a fresh namespace; with `cgroup`, the
    agent (and only the agent, not the stand-in) starts inside that cgroup-v2 directory."""
    with tempfile.TemporaryDirectory(prefix=f"obs-{agent}-") as tmp_, netns(ps.HOSTS) as ns, \
            stand_in(ns, Path(tmp_), delay_ms, nagle, command, capture) as (ca, log):
        home, work = Path(tmp_) / "home", Path(tmp_) / "work"
        home.mkdir()
        work.mkdir()
        env = agent_env(agent, home, ca)
        def join() -> None:  # in the child, before exec: nothing runs outside the cgroup
            if cgroup is not None:
                (cgroup / "cgroup.procs").write_text(str(os.getpid()))

        proc = subprocess.Popen(in_netns(ns, agent_argv(agent, exe)), cwd=work, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                preexec_fn=join)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, err = proc.communicate()
        time.sleep(0.1)  # the stand-in logs after its last write
        rows = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return Run(agent, proc.returncode, out, err, proc.pid, rows)
