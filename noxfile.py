"""Sessions: setup, run, tests, lint, bench, soak, tls_matrix.

bcc comes from Debian (python3-bpfcc) and only Debian's /usr/bin/python3 sees it, so the project
venv is made by deploy/setup-host.sh from that interpreter with --system-site-packages, and every
session runs in it (nox's own venvs would not see bcc). `session.posargs` pass through.
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


def _setup(session: nox.Session) -> None:
    session.run("bash", str(ROOT / "deploy" / "setup-host.sh"), external=True)


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
        return " ".join([shlex.quote(PY), shlex.quote(str(ROOT / "tools" / name)), *args])

    script = (f"exec {tool('obs-merge')} <({tool('obs-exec', '--files', extra)}) "
              f"<({tool('obs-net', extra)}) <({tool('obs-llm', extra)})")
    session.run("bash", "-c", script, external=True)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Setup, then every test (real BPF in the real kernel; needs root)."""
    _setup(session)
    session.run(PY, "-m", "pytest", *(session.posargs or ["tests"]), external=True)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff and mypy."""
    _setup(session)
    files = ["libobs", "tests", "noxfile.py", *map(str, sorted((ROOT / "tools").glob("obs-*")))]
    session.run(PY, "-m", "ruff", "check", *files, external=True)
    session.run(PY, "-m", "mypy", "libobs", external=True)


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
    """Which TLS clients obs-ssl reads, measured: prints the README's table of stacks."""
    _setup(session)
    session.run(PY, "-m", "tests.support.tls_matrix", external=True, env={"PYTHONPATH": str(ROOT)})
