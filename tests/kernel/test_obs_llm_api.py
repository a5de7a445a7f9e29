"""obs-llm --api: each LlmCall carries the model and token counts of its exchange, joined from
the same process's TLS plaintext; real clients against the provider wire-format server."""

from __future__ import annotations

import json
import sys

import pytest

from tests.kernel.test_obs_ssl import COMM, run, run_client, server  # noqa: F401 (fixture)
from tests.support import provider_server as ps
from tests.support.tools import running

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def llm(server):  # noqa: F811
    with running("obs-llm", "--api", "--comm", COMM, "--heartbeat-interval", "1") as r:
        yield r
    assert r.status == 0, r.stderr()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("api", ps.APIS)
@pytest.mark.parametrize("client", ["curl", "python", "node"])
def test_llm_call_has_model_and_tokens(llm, server, client, api, stream):  # noqa: F811
    pid = run_client(client, server, api, stream, "gzip")
    [call] = llm.wait_events("LlmCall", lambda f: f["pid"] == pid)
    want = ps.EXPECTED[(api, stream)]
    got = {k: call[k] for k in ("model", "prompt_tokens", "completion_tokens",
                                "cache_read_tokens", "cache_creation_tokens")}
    assert got == want
    assert call["_env"]["provider"] == ps.PROVIDER_OF[api]
    assert call["sni"] == ps.HOST_OF[api]
    assert call["req_bytes"] > 0 and call["resp_bytes"] > 0


TRANSCRIPT_CLIENT = r"""
import datetime, http.client, json, os, ssl, sys, time
host, port, ca, rollout, usage = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], \
    json.loads(sys.argv[5])
os.makedirs(os.path.dirname(rollout), exist_ok=True)
f = open(rollout, "ab")  # held open for the whole session, as Codex holds its rollout

def line(kind, payload):
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    f.write(json.dumps({"timestamp": now.replace("+00:00", "Z"), "type": kind,
                        "payload": payload}).encode() + b"\n")
    f.flush()

line("turn_context", {"model": "gpt-5-codex"})
conn = http.client.HTTPSConnection(host, port, context=ssl.create_default_context(cafile=ca))
conn.request("POST", "/v1/no-api-obs-reads", body=b"{}")  # the wire says nothing
conn.getresponse().read()
if usage:
    line("token_usage_record", {"usage": usage})
time.sleep(1.5)  # the connection stays open meanwhile: obs looks at this process's fds
"""


def test_usage_from_the_transcript_the_process_has_open(llm, server, tmp_path):  # noqa: F811
    """A process whose wire obs cannot read (here: a path no decoder knows) and that writes a
    Codex rollout: its LlmCall takes the rollout's usage line, found through /proc/<pid>/fd;
    a process whose line never comes gets nulls after --transcript-wait, counted as late."""
    host = ps.HOST_OF["openai-responses"]
    usage = {"input_tokens": 777, "cached_input_tokens": 33, "cache_write_input_tokens": 0,
             "output_tokens": 55, "reasoning_output_tokens": 0, "total_tokens": 832}
    pids = {}
    for name, u in (("usage", usage), ("silent", None)):
        rollout = tmp_path / name / ".codex/sessions/2026/12/02/rollout-2026-12-02T00-00-00-x.jsonl"
        pids[name] = run([sys.executable, "-c", TRANSCRIPT_CLIENT, host,
                          str(server.port(host)), str(server.ca), str(rollout), json.dumps(u)])
    [call] = llm.wait_events("LlmCall", lambda f: f["pid"] == pids["usage"])
    assert {k: call[k] for k in ("usage_source", "model", "prompt_tokens", "completion_tokens",
                                 "cache_read_tokens", "cache_creation_tokens")} == \
        {"usage_source": "transcript", "model": "gpt-5-codex", "prompt_tokens": 777,
         "completion_tokens": 55, "cache_read_tokens": 33, "cache_creation_tokens": None}
    [silent] = llm.wait_events("LlmCall", lambda f: f["pid"] == pids["silent"])
    assert silent["usage_source"] is None and silent["prompt_tokens"] is None
    beat = llm.wait_events("CollectorHeartbeat", lambda f: f.get("transcripts", {}).get("late"))
    counts = beat[-1]["transcripts"]
    assert counts["files"] >= 2 and counts["joined"] >= 1 and counts["late"] >= 1
    assert "transcript" in llm.stderr()
