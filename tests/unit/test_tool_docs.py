"""Every tool ships with --help (with examples), a man page that documents every option and
passes mandoc's lint, a systemd unit that systemd-analyze accepts, and a README section."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.support.tools import tool_cmd, tool_module

REPO = Path(__file__).resolve().parents[2]
TOOLS = sorted(p.stem.replace("_", "-") for p in (REPO / "tools").glob("obs_*.py"))
SECTIONS = ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "FIELDS", "EXAMPLES", "EXIT STATUS",
            "OVERHEAD", "SEE ALSO"]


def help_text(tool: str) -> str:
    p = subprocess.run(tool_cmd(tool, "--help"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_every_tool_is_packaged():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(TOOLS)
    for tool in TOOLS:
        assert scripts[tool] == f"{tool_module(tool)}:run"


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_is_a_thin_importable_executable(tool):
    """Code like the rest (imported here without tricks), runnable as a file, and thin."""
    module = importlib.import_module(tool_module(tool))
    assert callable(module.run)
    path = Path(module.__file__ or "")
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env python3\n") and path.stat().st_mode & 0o111
    assert len(text.splitlines()) < 150, f"{tool} is not thin"


@pytest.mark.parametrize("tool", TOOLS)
def test_help_has_examples(tool):
    text = help_text(tool)
    assert "Examples:" in text and tool in text.split("Examples:", 1)[1]


@pytest.mark.parametrize("tool", TOOLS)
def test_man_page_documents_every_option(tool):
    page = REPO / "man" / f"{tool}.1"
    assert page.exists(), f"man/{tool}.1 missing"
    src = page.read_text()
    for section in SECTIONS:
        assert re.search(rf"^\.Sh {section}$", src, re.M), f"{tool}.1 lacks {section}"
    own = help_text(tool).split("Examples:", 1)[0]  # examples may pass other tools' options
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", own))
    documented = set(re.findall(r"Fl -([a-z][a-z0-9-]+)", src))
    missing = {o for o in options if o[2:] not in documented}
    assert not missing, f"{tool}.1 does not document {sorted(missing)}"


@pytest.mark.parametrize("tool", TOOLS)
def test_man_page_lint_clean(tool):
    if shutil.which("mandoc") is None:
        pytest.fail("mandoc is not installed (deploy/setup-host.sh installs it)")
    p = subprocess.run(["mandoc", "-Tlint", "-W", "warning", str(REPO / "man" / f"{tool}.1")],
                       capture_output=True, text=True)
    assert p.stdout + p.stderr == "" and p.returncode == 0


@pytest.mark.parametrize("tool", TOOLS)
def test_systemd_unit_verifies(tool, tmp_path):
    units = list((REPO / "deploy" / "systemd").glob(f"{tool}*.service"))
    assert units, f"no deploy/systemd/{tool}*.service"
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed (deploy/setup-host.sh installs systemd)")
    for unit in units:
        target = unit
        if unit.name.endswith("@.service"):  # templates verify as an instance
            target = unit.with_name(unit.name.replace("@.service", "@example.service"))
            target = tmp_path / target.name
            shutil.copy(unit, target)
        p = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True,
                           text=True)
        about_it = [ln for ln in p.stderr.splitlines() if target.name in ln]
        assert p.returncode == 0 and not about_it, p.stderr


@pytest.mark.parametrize("tool", TOOLS)
def test_readme_section(tool):
    readme = (REPO / "README.md").read_text()
    assert re.search(rf"^### {re.escape(tool)}\b", readme, re.M), f"README lacks ### {tool}"
