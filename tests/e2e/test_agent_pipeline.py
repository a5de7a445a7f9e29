"""The whole pipe, for real: obs-exec + obs-net + obs-llm → FIFOs → obs-merge, while a Python
agent calls a local fake LLM endpoint (api.openai.com mapped to loopback) and runs tools.

The agent starts its tools in new sessions (setsid, as Node's `detached` does), so the
single-tool default (`pgid@start`) gives each tool its own session; only obs-merge's process
tree, rooted at the process that made LLM calls, can put them in the agent's session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from tests.support.hosts import mapped
from tests.support.tls_server import tls_server
from tests.support.tools import tool_cmd, wait_for

pytestmark = pytest.mark.kernel
# A name of our own under api.openai.com: /etc/hosts is shared with any other run of the suite
# on this machine, and a second mapping of one name gives getaddrinfo() two answers.
HOST, ADDR = f"obs-e2e-{os.getpid()}.api.openai.com", "127.0.0.94"

AGENT = textwrap.dedent("""
    import http.client, os, ssl, subprocess, sys, time
    port, cafile, work, go, host = int(sys.argv[1]), *sys.argv[2:6]
    while not os.path.exists(go):          # wait until every observer is attached
        time.sleep(0.02)
    ctx = ssl.create_default_context(cafile=cafile)
    def llm():
        c = http.client.HTTPSConnection(host, port, context=ctx)
        c.request("POST", "/v1/chat/completions?delay=80&chunks=3&interval=10&size=2000",
                  body=b'{"model": "gpt-4o"}', headers={"content-type": "application/json"})
        c.getresponse().read()
        c.close()
    llm()
    tool = dict(start_new_session=True, cwd=work)
    subprocess.run(["sh", "-c", "ls / > listing.txt; exit 4"], **tool)
    subprocess.run([sys.executable, "-c", "open('notes.txt', 'w').write('x')"], **tool)
    subprocess.run(["rm", "-f", "listing.txt"], **tool)
    llm()
""")


def test_tool_events_carry_the_agent_session(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    go = tmp_path / "go"
    with mapped({HOST: ADDR}), tls_server([HOST], addr=ADDR) as srv:
        agent = subprocess.Popen([sys.executable, "-c", AGENT, str(srv.port), str(srv.cafile),
                                  str(work), str(go), HOST])
        fifos = {t: tmp_path / f"{t}.fifo" for t in ("obs-exec", "obs-net", "obs-llm")}
        for f in fifos.values():
            os.mkfifo(f)
        merged = tmp_path / "merged.ndjson"
        with open(merged, "wb") as out:
            merge = subprocess.Popen(tool_cmd("obs-merge", "--format", "json", "--window", "1",
                                              *map(str, fifos.values())), stdout=out)
        tools = []
        for name, extra in (("obs-exec", ["--files"]), ("obs-net", []), ("obs-llm", [])):
            hb = tmp_path / f"{name}.hb"
            with open(fifos[name], "wb") as w:
                tools.append((hb, subprocess.Popen(
                    tool_cmd(name, "--format", "json", "--heartbeat-file", str(hb),
                             "--pid", str(agent.pid), *extra), stdout=w)))
        try:
            for hb, p in tools:
                wait_for(lambda hb=hb, p=p: hb.exists() or p.poll() is not None, 60, "attach")
                assert p.poll() is None, "an observer exited before attaching"
            go.touch()
            assert agent.wait(timeout=60) == 0
            time.sleep(1.0)
        finally:
            for _, p in tools:
                p.send_signal(signal.SIGTERM)
            codes = [p.wait(timeout=30) for _, p in tools]
            merge_code = merge.wait(timeout=30)
    assert codes == [0, 0, 0] and merge_code == 0

    events = [orjson.loads(ln) for ln in merged.read_bytes().splitlines()]
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts), "obs-merge output is not ordered by ts"

    calls = [e for e in events if "LlmCall" in e["event"]]
    assert len(calls) == 2 and all(c["event"]["LlmCall"]["pid"] == agent.pid for c in calls)
    assert all(c["provider"] == "OpenAi" for c in calls)
    session = calls[0]["identity"]["session"]
    assert session and session.startswith(f"{agent.pid}@")

    execs = {e["event"]["ToolExec"]["pid"]: e for e in events if "ToolExec" in e["event"]}
    tools_run = {p: e for p, e in execs.items() if p != agent.pid}
    names = sorted(e["event"]["ToolExec"]["comm"] for e in tools_run.values())
    assert names == sorted(["sh", "ls", Path(sys.executable).name, "rm"]), names
    # every event of every tool subprocess: the agent's session, not its own process group's
    tool_events = [e for e in events if e.get("process", {}).get("pid") in tools_run]
    assert tool_events
    for e in tool_events:
        assert e["identity"]["session"] == session, e
    shell_exit = [e["event"]["ProcessExit"] for e in events if "ProcessExit" in e["event"]
                  and e["event"]["ProcessExit"]["comm"] == "sh"]
    assert [x["exit_code"] for x in shell_exit] == [4]
    writes = {e["event"]["FileAccess"]["path"] for e in events if "FileAccess" in e["event"]}
    assert {str(work / "listing.txt"), str(work / "notes.txt")} <= writes
    deletes = [e["event"]["FileDelete"]["path"] for e in events if "FileDelete" in e["event"]]
    assert str(work / "listing.txt") in deletes

    summary = subprocess.run(tool_cmd("obs-merge", "--summary-only", "--format", "human",
                                      str(merged)), capture_output=True, text=True, timeout=60)
    assert summary.returncode == 0, summary.stderr
    assert session in summary.stdout and "OpenAi" in summary.stdout
    print(summary.stdout)
