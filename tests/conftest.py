import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property tests check what a decoder does, never how fast: no per-example deadline, so a busy
# machine cannot fail them.
settings.register_profile("obs", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("obs")

# Soaks run for tens of minutes: only in `nox -s soak` (which sets OBS_SOAK=1).
collect_ignore_glob = [] if os.environ.get("OBS_SOAK") else ["soak/*"]


def pytest_configure(config):
    """Under coverage (`nox -s tests`), tools that tests run as another user (setpriv
    --reuid=65534) write their data files too: the data directory is sticky and world-writable
    (like /tmp), the checkout itself is left alone."""
    try:
        import coverage
    except ImportError:
        return
    cov = coverage.Coverage.current()
    if cov is not None:
        data = Path(cov.config.data_file).resolve().parent
        data.mkdir(exist_ok=True)
        data.chmod(0o1777)


def pytest_collection_modifyitems(config, items):
    """Kernel tests need root and bcc; they skip (with the reason) only when those are truly
    absent — never in CI, where .ci/run runs as root after setup."""
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (loads BPF programs)"
    else:
        try:
            import bcc  # noqa: F401
        except ImportError:
            reason = "bcc is not importable (run deploy/setup-host.sh)"
    if os.environ.get("CI") and reason:
        reason = None  # in CI a missing prerequisite is a failure, not a skip
    _skip_agents_unless_installed(items)
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "kernel" in item.keywords or "/kernel/" in str(item.fspath) or "/e2e/" in str(item.fspath):
            item.add_marker(skip)


def _skip_agents_unless_installed(items):
    """Tests of the real agents run when setup installed them (`nox -s tests` does, through
    deploy/setup-host.sh --agents); a bare pytest without them skips with the reason."""
    marked = [item for item in items if item.get_closest_marker("agents")]
    if not marked or os.environ.get("CI"):
        return
    from tests.support.agents import AGENTS, installed

    missing = sorted(set(AGENTS) - set(installed()))
    if missing:
        skip = pytest.mark.skip(reason=f"agents not installed: {', '.join(missing)} "
                                       "(deploy/setup-host.sh --agents)")
        for item in marked:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def have_tool():
    def check(name: str) -> None:
        if shutil.which(name) is None:
            pytest.fail(f"{name} is not installed (deploy/setup-host.sh installs it)")
    return check
