"""What a host that cannot run a BPF tool gets told: one line naming what is missing and how to
get it, exit status 1, nothing attached. Real tools as root, with the one missing thing made
missing for real (a Python where `import bcc` fails) or, for what only the host can lack (a
tracepoint), the real check asked about it."""

from __future__ import annotations

import os
import subprocess

import pytest

from libobs.kernel import host
from tests.support.cgroups import cgroup
from tests.support.tools import REPO, tool_cmd

pytestmark = pytest.mark.kernel


@pytest.fixture
def without_bcc(tmp_path) -> dict[str, str]:
    """An environment whose Python finds a `bcc` that fails to import, as a Python without
    Debian's python3-bpfcc would (the PyPI package named bcc is another library)."""
    (tmp_path / "bcc").mkdir()
    (tmp_path / "bcc" / "__init__.py").write_text('raise ImportError("no bcc here")\n')
    return {**os.environ, "PYTHONPATH": f"{tmp_path}:{REPO}"}


@pytest.mark.parametrize("tool", ["obs-exec", "obs-net", "obs-llm", "obs-ssl", "obs-enforce"])
def test_a_python_without_bcc_is_told_how_to_get_it(tool, without_bcc, tmp_path):
    deny = tmp_path / "deny"
    deny.write_text("127.0.0.99\n")
    with cgroup() as cg:
        args = [str(cg), str(deny)] if tool == "obs-enforce" else []
        p = subprocess.run(tool_cmd(tool, *args, "--duration", "1"), capture_output=True,
                           text=True, timeout=60, cwd=REPO, env=without_bcc)
        assert p.returncode == 1 and p.stdout == "", p.stderr
        assert p.stderr == (f"{tool}: bcc is not importable from this Python (Debian "
                            f"python3-bpfcc): {host.SETUP_HINT}\n")
        if tool == "obs-enforce":
            assert subprocess.run(["bpftool", "cgroup", "show", str(cg)], capture_output=True,
                                  text=True, check=True).stdout == ""


def test_a_tracepoint_this_kernel_lacks_is_named():
    assert host.preflight(["sched:sched_process_exec"]) is None
    assert host.preflight(["sched:sched_process_exec", "syscalls:sys_enter_obs_none",
                           "obs_none:x"]) == (
        "this kernel lacks the tracepoint(s) syscalls:sys_enter_obs_none, obs_none:x")


@pytest.mark.parametrize("tool", ["obs-exec", "obs-fileguard", "obs-enforce"])
def test_a_node_name_that_would_corrupt_every_event_is_a_usage_error(tool, tmp_path):
    """A DaemonSet's OBS_NODE_NAME lands in every event's host: two words are refused before
    anything is loaded, not written into the stream."""
    deny = tmp_path / "deny"
    deny.write_text("/nonexistent-obs\n" if tool == "obs-fileguard" else "127.0.0.99\n")
    with cgroup() as cg:
        args = {"obs-fileguard": [str(deny)], "obs-enforce": [str(cg), str(deny)]}.get(tool, [])
        p = subprocess.run(tool_cmd(tool, *args, "--duration", "1"), capture_output=True,
                           text=True, timeout=60, cwd=REPO,
                           env={**os.environ, "OBS_NODE_NAME": "node a"})
    assert p.returncode == 2 and p.stdout == "", p.stderr
    assert p.stderr == (f"{tool}: OBS_NODE_NAME must be one printable word of 1-253 "
                        "characters, not 'node a'\n")
