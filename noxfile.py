"""Sessions: setup, run, tests, unit, lint, bench, soak, tls_matrix, agents_table.

bcc comes from Debian (python3-bpfcc) and only Debian's /usr/bin/python3 sees it, so the project
venv is made by deploy/setup-host.sh from that interpreter with --system-site-packages, and every
session that loads BPF runs in it (nox's own venvs would not see bcc). `lint` and `unit` need
neither root nor bcc: they run in nox's own venvs. `session.posargs` pass through.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import nox

ROOT = Path(__file__).parent
VENV = ROOT / ".venv"
PY = str(VENV / "bin" / "python")
nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"


def _setup(session: nox.Session, *args: str) -> None:
    session.run("bash", str(ROOT / "deploy" / "setup-host.sh"), *args, external=True)


@nox.session(venv_backend="none")
def setup(session: nox.Session) -> None:
    """Install what is missing (bcc, headers, tracefs, venv) — idempotent."""
    _setup(session)


@nox.session(venv_backend="none")
def run(session: nox.Session) -> None:
    """Setup, then observe this host: processes and file writes, connections and DNS, and LLM
    calls, merged into one stream by agent session (Ctrl-C stops). Extra arguments go to every
    observer, e.g. `nox -s run -- --comm python3`."""
    _setup(session)
    extra = " ".join(shlex.quote(a) for a in session.posargs)

    def tool(name: str, *args: str) -> str:
        module = "tools." + name.replace("-", "_")
        return " ".join([shlex.quote(PY), "-m", module, *args])

    script = (f"exec {tool('obs-merge')} <({tool('obs-exec', '--files', extra)}) "
              f"<({tool('obs-net', extra)}) <({tool('obs-llm', extra)})")
    session.run("bash", "-c", script, external=True)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Setup, then every test (real BPF in the real kernel; needs root). Setup also installs
    the real agents the e2e tests drive (pinned, cached: ~30 s once, then nothing)."""
    _setup(session, "--agents")
    session.run(PY, "-m", "pytest", *(session.posargs or ["tests"]), external=True)


@nox.session(venv_backend="venv")
def unit(session: nox.Session) -> None:
    """The unit tests alone: no root, no bcc, no kernel."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *(session.posargs or ["tests/unit"]))


@nox.session(venv_backend="venv")
def lint(session: nox.Session) -> None:
    """ruff and mypy (no root, no bcc)."""
    session.install("-e", ".[lint,test]")
    session.run("ruff", "check", "libobs", "tools", "tests", "deploy", "noxfile.py")
    session.run("mypy", "libobs", "tools")


@nox.session(venv_backend="none")
def units(session: nox.Session) -> None:
    """Every deploy/systemd unit started under a real systemd: a debootstrapped Debian 12
    booted with systemd-nspawn (made once under /var/lib/obs-nspawn), this checkout and .venv
    bound in, on a host where /var/log/obs does not exist yet. Not in the default run: it
    needs systemd-container and debootstrap, and about 600 MB and 4 minutes the first time."""
    _setup(session)
    session.run("apt-get", "install", "-y", "-q", "--no-install-recommends",
                "systemd-container", "debootstrap", external=True)
    session.run("bash", str(ROOT / "deploy" / "nspawn" / "run.sh"), *session.posargs,
                external=True, env={"OBS_VENV": str(VENV)})


@nox.session(venv_backend="none")
def soak(session: nox.Session) -> None:
    """Long runs: OBS_SOAK_MINUTES (default 30) of steady load; flat RSS, zero loss."""
    _setup(session)
    session.run(PY, "-m", "pytest", "-s", "-p", "no:cacheprovider", "--timeout", "0",
                *(session.posargs or ["tests/soak"]), external=True,
                env={"OBS_SOAK": "1"})


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Benchmarks; each prints ratios against a baseline measured in the same run."""
    _setup(session)
    for script in sorted((ROOT / "tests" / "bench").glob("bench_*.py")):
        if session.posargs and not any(a in script.name for a in session.posargs):
            continue
        session.run(PY, str(script), external=True, env={"PYTHONPATH": str(ROOT)})


@nox.session(venv_backend="none")
def tls_matrix(session: nox.Session) -> None:
    """Which TLS clients obs-ssl reads, measured: prints the README's table of stacks and
    puts it in README.md."""
    _setup(session)
    session.run(PY, "-m", "tests.support.tls_matrix", "--readme", external=True,
                env={"PYTHONPATH": str(ROOT)})


@nox.session(venv_backend="none")
def agents_table(session: nox.Session) -> None:
    """What obs sees of each real agent (Claude Code, Codex, Gemini CLI), measured against
    stand-ins with and without Nagle: prints the tables and puts them in README.md."""
    _setup(session, "--agents")
    for nagle in ([], ["--nagle"]):
        session.run(PY, "-m", "tests.support.agent_table", "--readme", *nagle, external=True,
                    env={"PYTHONPATH": str(ROOT)})
