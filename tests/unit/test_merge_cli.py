"""obs-merge's surface: help, man page, packaging and the systemd unit agree."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tools import obs_merge

REPO = Path(__file__).parents[2]
TOOL = REPO / "tools" / "obs_merge.py"
MAN = REPO / "man" / "obs-merge.1"
UNIT = REPO / "deploy" / "systemd" / "obs-merge.service"


@pytest.fixture(scope="module")
def help_text() -> str:
    result = CliRunner().invoke(obs_merge.app, ["--help"])
    assert result.exit_code == 0
    return result.output


def long_options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", text)) - {"--help"}


def test_help_has_every_option_and_examples(help_text: str) -> None:
    assert long_options(help_text) >= {"--window", "--follow", "--from-end", "--agent",
                                       "--grace", "--format", "--summary", "--summary-only",
                                       "--no-proc"}
    assert "Examples:" in help_text and "obs-merge -" in help_text
    for var in ("OBS_MERGE_WINDOW", "OBS_MERGE_GRACE", "OBS_MERGE_AGENT", "OBS_FORMAT"):
        assert var in help_text


def test_man_page_documents_every_option_and_env_var(help_text: str) -> None:
    options = MAN.read_text().split(".Sh OPTIONS", 1)[1].split(".Sh FIELDS", 1)[0]
    documented = {"--" + o for o in re.findall(r"Fl -([a-z][a-z0-9-]+)", options)}
    assert long_options(help_text) <= documented
    for var in re.findall(r"OBS_MERGE_[A-Z]+", help_text):
        assert f".Ev {var}" in options


def test_man_page_has_the_sections() -> None:
    heads = re.findall(r"^\.Sh (.+)$", MAN.read_text(), re.M)
    assert heads == ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "FIELDS", "EXIT STATUS",
                     "EXAMPLES", "OVERHEAD", "SEE ALSO"]


@pytest.mark.skipif(shutil.which("mandoc") is None, reason="mandoc not installed")
def test_man_page_is_lint_clean() -> None:
    # Style notes aside: FIELDS is a section the project wants, and the other tools' pages
    # are not installed where mandoc looks for cross-references.
    res = subprocess.run(["mandoc", "-Tlint", "-W", "warning", str(MAN)], capture_output=True,
                         text=True)
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr


def test_systemd_unit_is_hardened() -> None:
    unit = UNIT.read_text()
    for line in ("CapabilityBoundingSet=\n", "AmbientCapabilities=\n", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "LogsDirectory=obs", "Restart=on-failure"):
        assert line in unit
    found = re.search(r"^ExecStart=((?:.*\\\n)*.*)$", unit, re.M)  # with continuation lines
    assert found is not None
    # The shell appends (StandardOutput=append: would be opened before LogsDirectory= exists).
    inputs, _, output = found.group(1).partition(">>")
    assert "--follow" in inputs and "merged.ndjson" not in inputs  # never reads itself
    assert output.strip().startswith("/var/log/obs/merged.ndjson")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = tmp_path / "obs-merge.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/obs-merge", str(TOOL)))
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "obs-merge.service" not in res.stderr  # no warnings about our unit either
