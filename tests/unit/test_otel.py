"""obs-otel against a real OTLP receiver (gRPC and HTTP/protobuf) started here, fed the recorded
agent run in tests/fixtures merged by obs-merge; and the span mapping's bounds."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from libobs.events import envelope
from libobs.export.otel import Tracer, trace_id
from libobs.merge.input import decode
from libobs.merge.merger import Merge
from libobs.merge.sessions import Sessions
from libobs.tool.sink import dumps
from tests.support.otlp_receiver import attrs, grpc_receiver, http_receiver
from tests.support.tools import tool_cmd

FIXTURES = Path(__file__).parents[1] / "fixtures"
RUN = ["agent_exec", "agent_net", "agent_llm", "agent_ssl", "agent_enforce"]
SESSION = "4100@8123456"
MODEL = "claude-sonnet-4-5-20250929"


def merged(names: list[str] = RUN) -> list[dict[str, Any]]:
    m = Merge(Sessions(), range(len(names)))
    out = []
    for sid, name in enumerate(names):
        for line in (FIXTURES / f"{name}.ndjson").read_bytes().splitlines():
            ev, _ = decode(line)
            assert ev is not None
            out += [e for e, _ in m.push(ev, sid, 0)]
        m.close(sid)
    return out + [e for e, _ in m.drain()]


@pytest.fixture(scope="module")
def run_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("otel") / "merged.ndjson"
    path.write_bytes(b"".join(dumps(ev) for ev in merged()))
    return path


def obs_otel(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
             ) -> tuple[int, list[dict[str, Any]], str]:
    p = subprocess.run(tool_cmd("obs-otel", "--metric-interval", "30", *args), input=stdin,
                       capture_output=True, timeout=90, env={**os.environ, **(env or {})})
    beats = [orjson.loads(line)["event"]["CollectorHeartbeat"] for line in p.stdout.splitlines()]
    return p.returncode, beats, p.stderr.decode()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_spans_and_metrics_reach_a_real_receiver(run_file: Path, protocol: str) -> None:
    receiver = grpc_receiver if protocol == "grpc" else http_receiver
    # One variant reads a file, the other a real pipe on stdin.
    source = ["-"] if protocol == "grpc" else [str(run_file)]
    with receiver() as (endpoint, got):
        rc, beats, err = obs_otel("--protocol", protocol, "--endpoint", endpoint, *source,
                                  stdin=run_file.read_bytes() if source == ["-"] else None)
        spans, points = got.spans(), got.metric_points()
    assert rc == 0, err
    assert err == ""
    counts = beats[-1]["counts"]
    assert counts["spans_exported"] == counts["spans"] == len(spans)
    assert counts["spans_failed"] == counts["spans_pending"] == 0
    assert "cost:genai-prices 0.2.3" in beats[-1]["enabled_features"]
    assert (counts["requests_priced"], counts["requests_unpriced"]) == (3, 0)

    agent = [s for s in spans if s.trace_id == trace_id(SESSION).to_bytes(16, "big")]
    by_name: dict[str, list[Any]] = {}
    for s in agent:
        by_name.setdefault(s.name, []).append(s)
    (root,) = by_name["invoke_agent python3"]
    assert root.parent_span_id == b"" and attrs(root.attributes)["obs.session"] == SESSION

    # Each LlmCall a CLIENT span, its true start/end from the kernel's ts + latency.
    llm = sorted(by_name[f"chat {MODEL}"], key=lambda s: s.start_time_unix_nano)
    assert len(llm) == 3 and all(s.kind == s.SPAN_KIND_CLIENT for s in llm)
    assert all(s.parent_span_id == root.span_id for s in llm)
    first = attrs(llm[0].attributes)
    assert llm[0].start_time_unix_nano == 1764100000321000000
    assert llm[0].end_time_unix_nano == 1764100000321000000 + 2_580_000_000
    assert first == {**first, "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
                     "gen_ai.request.model": MODEL, "gen_ai.response.model": MODEL,
                     "gen_ai.usage.input_tokens": 1834, "gen_ai.usage.output_tokens": 212,
                     "gen_ai.usage.cache_read.input_tokens": 0,
                     "server.address": "api.anthropic.com", "server.port": 443}
    second = attrs(llm[1].attributes)  # input includes the cache reads (Anthropic counts apart)
    assert (second["gen_ai.usage.input_tokens"], second["gen_ai.usage.cache_read.input_tokens"]
            ) == (2510 + 1792, 1792)
    assert first["obs.cost.usd"] > 0

    # Tool processes as spans of the same trace: git-remote-http's parent is git's span.
    (git,) = by_name["exec git"]
    (remote,) = by_name["exec git-remote-http"]
    assert git.parent_span_id == root.span_id and remote.parent_span_id == git.span_id
    assert attrs(git.attributes)["process.command_args"] == [
        "git", "clone", "https://github.com/example/widgets.git"]
    failed = [s for s in by_name["exec curl"] if attrs(s.attributes).get("process.exit.code") == 7]
    assert failed and failed[0].status.code == failed[0].status.STATUS_CODE_ERROR
    # The denial is a span event on the curl that was refused.
    denied = [e for s in agent for e in s.events if e.name == "obs.Denied"]
    assert len(denied) == 1 and attrs(denied[0].attributes)["obs.target"] == "203.0.113.5:443"

    # The GenAI client metrics, as histograms with the semconv attributes.
    tokens = points["gen_ai.client.token.usage"]
    by_type = {attrs(p.attributes)["gen_ai.token.type"]: p for p in tokens}
    assert by_type["input"].sum == 1834 + 4302 + 5681 and by_type["input"].count == 3
    assert by_type["output"].sum == 212 + 388 + 95
    assert attrs(by_type["input"].attributes)["gen_ai.provider.name"] == "anthropic"
    (duration,) = points["gen_ai.client.operation.duration"]
    assert duration.count == 3 and duration.sum == pytest.approx(2.58 + 2.9 + 2.76)
    (ttft,) = points["gen_ai.client.operation.time_to_first_chunk"]
    assert ttft.count == 3 and ttft.sum == pytest.approx(0.61 + 0.54 + 0.72)


def test_what_could_not_be_exported_is_counted_and_said_once(run_file: Path) -> None:
    with http_receiver() as (endpoint, got):
        got.fail = True
        rc, beats, err = obs_otel("--protocol", "http/protobuf", "--endpoint", endpoint,
                                  str(run_file), env={"OTEL_EXPORTER_OTLP_TIMEOUT": "2"})
    assert rc == 1 and got.refused >= 2
    counts = beats[-1]["counts"]
    assert counts["spans_failed"] == counts["spans"] > 0 and counts["spans_exported"] == 0
    assert counts["metric_points_failed"] > 0
    assert beats[-1]["dropped"] == counts["spans_failed"] + counts["metric_points_failed"]
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"obs-otel: could not export to {endpoint}")


def test_a_heartbeat_file_that_cannot_be_written_is_said_once(run_file: Path,
                                                               tmp_path: Path) -> None:
    beat = tmp_path / "no-such-dir" / "beat.json"
    with grpc_receiver() as (endpoint, _):
        rc, beats, err = obs_otel("--endpoint", endpoint, "--heartbeat-file", str(beat),
                                  str(run_file))
    assert rc == 0 and beats
    assert err == f"obs-otel: cannot write heartbeat file {beat}: No such file or directory\n"


def test_a_receiver_that_is_down_is_retried_then_counted(run_file: Path) -> None:
    with grpc_receiver() as (endpoint, _):
        pass  # now nothing listens there
    rc, beats, err = obs_otel("--endpoint", endpoint, str(run_file),
                              env={"OTEL_EXPORTER_OTLP_TIMEOUT": "2"})
    assert rc == 1 and "UNAVAILABLE" in err and len(err.splitlines()) == 1
    assert beats[-1]["counts"]["spans_failed"] == beats[-1]["counts"]["spans"]


# -- the mapping, without a receiver -------------------------------------------------------
def _exec(pid: int, ts: int, session: str = "1@0") -> dict[str, Any]:
    return envelope("ToolExec", {"pid": pid, "ppid": 1, "uid": 0, "comm": f"t{pid}",
                                 "filename": "/bin/true", "argv": ["true"],
                                 "argv_truncated": False, "cwd": "/"}, ts=ts, host="h",
                    identity={"agent": "a", "task": str(pid), "session": session})


def test_open_spans_are_bounded_and_evictions_counted() -> None:
    tracer = Tracer(max_open=3)
    done = []
    for pid in range(2, 7):
        done += tracer.feed(_exec(pid, pid * 10))[0]
    assert len(tracer.open) == 3 and tracer.counts["evicted"] == 3
    assert all(s.attributes["obs.evicted"] for s in done)
    rest = tracer.close()
    assert len(rest) == 3 and all(s.attributes["obs.incomplete"] for s in rest)
    assert not tracer.sessions  # nothing kept once everything ended


def test_trace_ids_are_per_session_and_deterministic() -> None:
    a = Tracer().feed(_exec(2, 10, "1@0"))
    b = Tracer().feed(_exec(2, 10, "1@0"))
    assert a == b  # also ids, across runs
    c = Tracer()
    c.feed(_exec(2, 10, "9@0"))
    (span,) = c.close()[-1:]
    assert span.trace_id == trace_id("9@0") != trace_id("1@0")


def test_events_without_a_session_are_counted() -> None:
    tracer = Tracer()
    ev = _exec(2, 10)
    ev["identity"] = {"agent": None, "task": None, "session": None}
    assert tracer.feed(ev) == ([], []) and tracer.counts["no_session"] == 1


def test_llmapi_alone_makes_the_llm_spans_from_request_to_response() -> None:
    """obs-ssl without obs-llm: each response is a span from its request, once."""
    tracer = Tracer()
    spans = [span for ev in merged(["agent_exec", "agent_ssl"]) for span in tracer.feed(ev)[0]]
    llm = [s for s in spans + tracer.close() if s.kind == "client"]
    assert [(s.start_ns, s.end_ns) for s in llm] == [
        (1764100000320000000, 1764100002900000000), (1764100004310000000, 1764100007205000000),
        (1764100009250000000, 1764100012005000000)]
    assert all(s.attributes["gen_ai.request.model"] == MODEL for s in llm)
    assert llm[1].attributes["gen_ai.usage.input_tokens"] == 2510 + 1792


def test_a_request_seen_both_ways_is_one_span() -> None:
    """With obs-llm and obs-ssl, the joined LlmCall makes the span; its LlmApi response none."""
    tracer = Tracer()
    spans = [span for ev in merged() for span in tracer.feed(ev)[0]] + tracer.close()
    assert len([s for s in spans if s.kind == "client"]) == 3


def test_a_request_that_is_no_model_call_is_an_http_span_without_genai_metrics() -> None:
    """Claude Code's settings GET (`model_call: false`) is an HTTP CLIENT span named by its
    request, with no gen_ai attributes, and counts in no GenAI metric."""
    tracer = Tracer()
    for ev in merged(["agent_exec"]):
        tracer.feed(ev)
    fields = {"pid": 4100, "sni": "api.anthropic.com", "peer": "160.79.104.10", "port": 443,
              "req_bytes": 900, "resp_bytes": 2000, "latency": {"secs": 0, "nanos": 80_000_000},
              "ttft": {"secs": 0, "nanos": 70_000_000}, "exchange": 1, "model": None,
              "model_call": False, "request": "GET /api/claude_code/settings"}
    call = envelope("LlmCall", fields, ts=1764100000100000000, host="h",
                    identity={"agent": "claude", "task": "4100", "session": SESSION},
                    process={"pid": 4100}, provider="Anthropic")
    spans, points = tracer.feed(call)
    assert points == []
    [span] = spans
    assert (span.name, span.kind) == ("GET /api/claude_code/settings", "client")
    assert span.end_ns - span.start_ns == 80_000_000
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["url.path"] == "/api/claude_code/settings"
    assert span.attributes["server.address"] == "api.anthropic.com"
    assert not any(k.startswith("gen_ai.") for k in span.attributes)
    fields["model_call"] = True  # the same call as a model call: a GenAI span and points
    spans, points = tracer.feed(envelope("LlmCall", fields, ts=1764100000200000000, host="h",
                                         identity={"agent": "claude", "task": "4100",
                                                   "session": SESSION},
                                         process={"pid": 4100}, provider="Anthropic"))
    assert spans[0].attributes["gen_ai.operation.name"] == "chat" and points


def test_live_input_heartbeats_then_sigterm_flushes(run_file: Path, tmp_path: Path) -> None:
    """A stream that stays open: heartbeats on time, the liveness file, and on SIGTERM the
    open spans end, everything is flushed and the last heartbeat says so."""
    beat_file = tmp_path / "obs-otel.heartbeat"
    with grpc_receiver() as (endpoint, got):
        p = subprocess.Popen(tool_cmd("obs-otel", "--endpoint", endpoint, "--heartbeat-interval",
                                      "0.3", "--heartbeat-file", str(beat_file), "-"),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(run_file.read_bytes()[:4000])  # a few events; the rest never comes
        p.stdin.flush()
        first = orjson.loads(p.stdout.readline())["event"]["CollectorHeartbeat"]
        assert first["tool"] == "obs-otel" and beat_file.exists()
        p.terminate()
        out, err = p.communicate(timeout=60)
        p.stdin.close()
        spans = got.spans()
    last = orjson.loads(out.splitlines()[-1])["event"]["CollectorHeartbeat"]
    assert p.returncode == 0, err
    assert last["counts"]["spans"] == last["counts"]["spans_exported"] == len(spans) > 0
    assert any(attrs(s.attributes).get("obs.incomplete") for s in spans)  # the agent's root


def test_standard_variables_choose_endpoint_protocol_and_service(run_file: Path) -> None:
    """No obs options: OTEL_EXPORTER_OTLP_ENDPOINT/_PROTOCOL and OTEL_SERVICE_NAME decide."""
    with http_receiver() as (endpoint, got):
        rc, _, err = obs_otel(str(run_file), env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL":
            "http/protobuf", "OTEL_SERVICE_NAME": "agents-node-1"})
        resources = [attrs(rs.resource.attributes) for r in got.traces for rs in r.resource_spans]
    assert rc == 0, err
    assert resources and all(r["service.name"] == "agents-node-1" for r in resources)
