"""libobs's LLM API decoders on what the real agents sent (tests/fixtures/agents, captured by
tests/support/agent_fixtures.py): Claude Code's /v1/messages?beta=true with its settings and
limits GETs, Codex's Responses SSE, Gemini CLI's streamGenerateContent SSE on keep-alive.
The bytes go through ApiTracker as a TLS library would hand them over: the request in 16 KiB
writes (as Bun and Node write them), the response one server write per read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from libobs.kernel.records import hdr as parse_hdr
from libobs.tls.decode import ApiTracker, SslCall
from tests.support.agent_fixtures import FIXTURES, wire
from tests.unit.test_sslevents import READ_EX, WRITE_EX, record

AGENTS = ("claude", "codex", "gemini")
TOKENS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens")


def load(agent: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{agent}.json").read_text())


def calls(data: list[bytes], is_read: bool, ssl: int, off: int, ts: int) -> list[SslCall]:
    out = []
    for piece in data:
        h = parse_hdr(record(b"", ts=ts, fn=0))
        out.append(SslCall(h, ssl, off, len(piece), READ_EX if is_read else WRITE_EX, 0, piece))
        off += len(piece)
    return out


def replay(fx: dict[str, Any]) -> list[Any]:
    """Every exchange on its captured connection (client port), in order; the facts."""
    tracker, offs, facts = ApiTracker(), {}, []
    for i, ex in enumerate(fx["exchanges"]):
        ssl = ex["client_port"]
        w, r = offs.get(ssl, (0, 0))
        req, resp = wire(ex)
        pieces = [req[j:j + 16384] for j in range(0, len(req), 16384)]
        for c in calls(pieces, False, ssl, w, 1000 * i) + calls(resp, True, ssl, r, 1000 * i + 1):
            facts += tracker.feed(c, now=0.0)
        offs[ssl] = (w + len(req), r + sum(map(len, resp)))
    return facts


@pytest.mark.parametrize("agent", AGENTS)
def test_fixture_is_what_the_agent_sent(agent: str) -> None:
    fx = load(agent)
    models = [e for e in fx["exchanges"] if e["model_call"]]
    assert fx["status"] == 0
    assert len(models) == 2, "one turn asking for the shell tool, one answering after it"
    assert models[0]["tool_call"] and not models[1]["tool_call"]
    assert all(e["version"] == "HTTP/1.1" for e in fx["exchanges"])
    assert not any(e["websocket"] for e in fx["exchanges"])
    for e in fx["exchanges"]:  # credentials never reach a fixture
        for k, v in e["headers"]:
            if k.lower() in ("authorization", "x-api-key", "x-goog-api-key"):
                assert v == "REDACTED"


@pytest.mark.parametrize("agent", AGENTS)
def test_decoders_read_model_and_exact_tokens(agent: str) -> None:
    fx = load(agent)
    facts = replay(fx)
    models = [e for e in fx["exchanges"] if e["model_call"]]
    requests = [f.fields for f in facts if f.is_request and f.model_call]
    responses = [f.fields for f in facts if not f.is_request]
    # one request and one response fact per model call; GETs for settings/limits give a
    # request fact of their own, marked as no model call (obs-llm --api keeps them apart)
    assert len(requests) == len(responses) == len(models)
    others = [(f.fields["method"], f.fields["path"]) for f in facts if not f.model_call]
    assert others == [(e["method"], e["path"].split("?")[0]) for e in fx["exchanges"]
                      if not e["model_call"]]
    for ex, req, resp in zip(models, requests, responses, strict=True):
        assert req["model"] == ex["request_model"]
        assert req["path"] == ex["path"].split("?")[0]
        assert req["stream"] is ex["stream"]
        assert resp["model"] == ex["model"]
        assert {k: resp[k] for k in TOKENS} == {k: ex[k] for k in TOKENS}


def test_claude_code_asks_for_settings_and_limits_outside_the_messages_api() -> None:
    gets = [e["path"] for e in load("claude")["exchanges"] if e["method"] == "GET"]
    assert gets and all(p.startswith("/api/claude_code/") for p in gets)


def test_fixtures_are_small() -> None:
    assert all(p.stat().st_size < 64 << 10 for p in Path(FIXTURES).glob("*.json"))
