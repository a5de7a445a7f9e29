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
    """The options --help lists (not those its examples pass to other tools)."""
    options = text.split("Options:", 1)[1].split("Examples:", 1)[0]
    return set(re.findall(r"^ +(?:-\w, )?(--[a-z][a-z-]+)", options, re.M)) - {"--help"}


def env_vars(text: str) -> dict[str, str]:
    """option → its environment variable, from --help's `[env var: ...]` notes."""
    options = " ".join(text.split("Options:", 1)[1].split("Examples:", 1)[0].split())
    pairs = re.findall(r"(--[a-z][a-z-]+)[^\[]*?\[env var: (OBS_[A-Z_]+)", options)
    return dict(pairs)


def test_help_has_every_option_and_examples(help_text: str) -> None:
    assert long_options(help_text) == {
        "--run", "--window", "--follow", "--from-end", "--agent", "--grace", "--format",
        "--summary", "--summary-only", "--no-proc", "--duration", "--trace", "--live"}
    assert "Examples:" in help_text and "obs-merge -" in help_text


def test_every_option_has_an_env_var(help_text: str) -> None:
    """systemd units set options through OBS_* variables: every option has one."""
    assert set(env_vars(help_text)) == long_options(help_text)
    assert env_vars(help_text)["--summary-only"] == "OBS_MERGE_SUMMARY_ONLY"


def test_man_page_documents_every_option_and_env_var(help_text: str) -> None:
    options = MAN.read_text().split(".Sh OPTIONS", 1)[1].split(".Sh FIELDS", 1)[0]
    items = re.split(r"^\.It ", options, flags=re.M)[1:]
    for option, var in env_vars(help_text).items():
        item = next((i for i in items if f"Fl -{option[2:]}" in i.split("\n", 1)[0]), None)
        assert item is not None, f"obs-merge.1 does not document {option}"
        assert f".Ev {var}" in item, f"obs-merge.1 does not give {var} for {option}"


def test_man_page_has_the_sections() -> None:
    heads = re.findall(r"^\.Sh (.+)$", MAN.read_text(), re.M)
    assert heads == ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "FIELDS", "ENVIRONMENT",
                     "EXIT STATUS", "EXAMPLES", "OVERHEAD", "SEE ALSO"]


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
