"""Joins only the merged view can make: LlmCall ← LlmApi, Egress ← Dns."""

from __future__ import annotations

from typing import Any

import pytest

from libobs.events import duration, envelope
from libobs.merge.merger import JOIN_SLACK_NS, Joiner, Merge
from libobs.merge.sessions import Sessions

NS = 1_000_000_000
T0 = 1_764_100_000 * NS


def llmcall(ts: int, pid: int = 10, latency: int = 3 * NS, **extra: Any) -> dict[str, Any]:
    fields = {"pid": pid, "sni": "api.anthropic.com", "peer": "160.79.104.10", "port": 443,
              "req_bytes": 100, "resp_bytes": 200, "latency": duration(latency),
              "ttft": duration(NS // 2), **extra}
    return envelope("LlmCall", fields, ts=ts, host="h", provider="Anthropic")


def llmapi(ts: int, pid: int = 10, model: str | None = "claude-x", prompt: int | None = 11,
           completion: int | None = 22, request: bool = False) -> dict[str, Any]:
    fields = {"pid": pid, "is_request": request, "model": model, "prompt_tokens": prompt,
              "completion_tokens": completion, "stream": False}
    return envelope("LlmApi", fields, ts=ts, host="h", provider="Anthropic")


def dns(ts: int, query: str, answers: list[str], host: str = "h",
        netns: int | None = None) -> dict[str, Any]:
    process = {"pid": 7, "netns": netns} if netns is not None else None
    return envelope("Dns", {"pid": 7, "query": query, "qtype": "A", "server": "127.0.0.53",
                            "answers": answers}, ts=ts, host=host, process=process)


def egress(ts: int, peer: str, host: str = "h", netns: int | None = None) -> dict[str, Any]:
    process = {"pid": 7, "netns": netns} if netns is not None else None
    return envelope("Egress", {"pid": 7, "peer": peer, "port": 443, "family": "ipv4"},
                    ts=ts, host=host, process=process)


def run(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    m = Merge(Sessions(), [0], window_ns=2 * NS)
    for e in events:
        m.push(e, 0, 0)
    return [e for e, _ in m.drain()]


def fields(e: dict[str, Any]) -> dict[str, Any]:
    return next(iter(e["event"].values()))


def calls(out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [fields(e) for e in out if "LlmCall" in e["event"]]


def test_llmcall_gets_model_and_tokens_from_the_response_in_its_span() -> None:
    # obs-llm stamps the call at its request's start; obs-ssl stamps the response at its end.
    out = run([llmapi(T0 + 1 * NS, request=True, prompt=None, completion=None),
               llmcall(T0 + 1 * NS, latency=3 * NS), llmapi(T0 + 4 * NS + 1000)])
    (call,) = calls(out)
    assert (call["model"], call["prompt_tokens"], call["completion_tokens"]) == ("claude-x", 11, 22)


def test_join_needs_the_same_pid() -> None:
    (call,) = calls(run([llmcall(T0, latency=3 * NS), llmapi(T0 + 3 * NS, pid=11)]))
    assert "model" not in call


@pytest.mark.parametrize(("offset", "joined"), [
    (-JOIN_SLACK_NS - 1, False),  # before the request: an earlier exchange's
    (-JOIN_SLACK_NS, True),
    (0, True),
    (3 * NS, True),  # the end: where responses are
    (3 * NS + JOIN_SLACK_NS, True),
    (3 * NS + JOIN_SLACK_NS + 1, False),  # after the end: a later exchange's
])
def test_join_needs_the_response_inside_the_calls_span(offset: int, joined: bool) -> None:
    (call,) = calls(run([llmcall(T0 + 10 * NS, latency=3 * NS), llmapi(T0 + 10 * NS + offset)]))
    assert ("model" in call) is joined


def test_keep_alive_exchanges_each_get_their_own_response() -> None:
    out = run([llmcall(T0 + 1 * NS, latency=2 * NS), llmapi(T0 + 3 * NS, prompt=1),
               llmcall(T0 + 4 * NS, latency=2 * NS), llmapi(T0 + 6 * NS, prompt=2)])
    assert [c["prompt_tokens"] for c in calls(out)] == [1, 2]


def test_the_response_closest_to_the_calls_end_wins_and_joins_once() -> None:
    out = run([llmcall(T0, latency=4 * NS), llmcall(T0 + 1, latency=4 * NS),
               llmapi(T0 + 1 * NS, prompt=1), llmapi(T0 + 4 * NS, prompt=2)])
    assert [c.get("prompt_tokens") for c in calls(out)] == [2, 1]
    out = run([llmcall(T0, latency=4 * NS), llmcall(T0 + 1, latency=4 * NS),
               llmapi(T0 + 4 * NS, prompt=2)])
    assert [c.get("prompt_tokens") for c in calls(out)] == [2, None]


def test_existing_fields_are_kept_and_absent_ones_filled() -> None:
    out = run([llmcall(T0, model="from-call", completion_tokens=None),
               llmapi(T0 + 3 * NS, model="from-api", prompt=5, completion=None)])
    (call,) = calls(out)
    assert call["model"] == "from-call" and call["prompt_tokens"] == 5
    assert call["completion_tokens"] is None


def test_a_late_call_still_finds_its_response() -> None:
    # A 30 s call is emitted by obs-llm after it ended: far behind the window, so it is passed
    # on at once as late; its response was indexed when it arrived.
    m = Merge(Sessions(), [0, 1], window_ns=2 * NS)
    m.push(llmapi(T0 + 30 * NS), 1, 0)
    m.push(llmapi(T0 + 40 * NS, prompt=99), 1, 0)
    m.push(llmcall(T0 + 33 * NS, latency=NS), 0, 0)  # keeps source 0 ahead of the call
    assert [e["ts"] for e, _ in m.release(0)] == [T0 + 30 * NS]
    (late,) = m.push(llmcall(T0, latency=30 * NS), 0, 0)
    assert m.counts["late"] == 1 and fields(late[0])["prompt_tokens"] == 11


def test_egress_gets_the_hostname_that_resolved_to_its_peer() -> None:
    out = run([dns(T0, "api.openai.com.", ["cname.example.net", "162.159.140.245"]),
               egress(T0 + NS, "162.159.140.245")])
    eg = out[-1]
    assert fields(eg)["hostname"] == "api.openai.com"
    assert eg["provider"] == "OpenAi"  # classified from the hostname when it was null


def test_egress_hostname_needs_a_dns_answer_before_it() -> None:
    out = run([egress(T0, "1.2.3.4"), dns(T0 + NS, "late.example.com", ["1.2.3.4"])])
    assert "hostname" not in fields(out[0])


def test_egress_hostname_takes_the_latest_answer() -> None:
    out = run([dns(T0, "old.example.com", ["1.2.3.4"]), dns(T0 + NS, "new.example.com", ["1.2.3.4"]),
               egress(T0 + 2 * NS, "1.2.3.4")])
    assert fields(out[-1])["hostname"] == "new.example.com"


def test_egress_hostname_needs_the_same_host_and_netns() -> None:
    out = run([dns(T0, "a.example.com", ["1.2.3.4"], host="other"),
               dns(T0, "b.example.com", ["5.6.7.8"], netns=4026531840),
               egress(T0 + NS, "1.2.3.4"), egress(T0 + NS, "5.6.7.8", netns=4026532000),
               egress(T0 + NS, "5.6.7.8", netns=4026531840)])
    hostnames = [fields(e).get("hostname") for e in out if "Egress" in e["event"]]
    assert hostnames == [None, None, "b.example.com"]


def test_ipv6_and_v4_mapped_peers_match_their_answers() -> None:
    out = run([dns(T0, "v6.example.com", ["2a04:4e42::223"]),
               dns(T0, "v4.example.com", ["192.0.2.7"]),
               egress(T0 + NS, "2a04:4e42:0:0:0:0:0:223"), egress(T0 + NS, "::ffff:192.0.2.7")])
    assert [fields(e).get("hostname") for e in out[2:]] == ["v6.example.com", "v4.example.com"]


def test_existing_hostname_and_provider_are_kept() -> None:
    eg = egress(T0 + NS, "1.2.3.4")
    fields(eg)["hostname"] = "given.example.com"
    eg["provider"] = "Mistral"
    out = run([dns(T0, "api.openai.com", ["1.2.3.4"]), eg])
    assert fields(out[-1])["hostname"] == "given.example.com" and out[-1]["provider"] == "Mistral"


def test_malformed_join_inputs_are_ignored() -> None:
    j = Joiner()
    bad_dns = envelope("Dns", {"pid": 1, "query": 5, "answers": "1.2.3.4"}, ts=T0, host="h")
    j.observe(bad_dns, "Dns", fields(bad_dns))
    weird = envelope("Dns", {"pid": 1, "query": "x.example", "answers": [None, 3, "not-ip"]},
                     ts=T0, host="h")
    j.observe(weird, "Dns", fields(weird))
    assert not j.dns
    call = llmcall(T0, latency=0)
    fields(call)["latency"] = "soon"
    api = llmapi(T0 + JOIN_SLACK_NS)
    j.observe(api, "LlmApi", fields(api))
    j.enrich(call, "LlmCall", fields(call))  # unreadable latency: the span is [ts, ts] + slack
    assert fields(call)["model"] == "claude-x"


def test_join_indexes_stay_bounded() -> None:
    j = Joiner()
    for i in range(200):
        e = llmapi(T0 + i, pid=5)
        j.observe(e, "LlmApi", fields(e))
    assert len(j.api[5]) <= 64
    j.evict(T0 + 3600 * NS)
    assert not j.api


def test_a_call_with_its_own_tokens_is_still_joined_and_marked() -> None:
    """obs-llm --api already put the tokens on the call: nothing is copied, but the call gets
    api_ts (its response's ts) so consumers count the request once; cache counts are copied
    when the call lacks them."""
    own = run([llmcall(T0, model="claude-x", prompt_tokens=5, completion_tokens=6),
               llmapi(T0 + 2 * NS)])
    (call,) = calls(own)
    assert (call["prompt_tokens"], call["completion_tokens"], call["api_ts"]) == (
        5, 6, T0 + 2 * NS)
    api = llmapi(T0 + 2 * NS)
    fields(api)["cache_read_tokens"] = 7
    (joined,) = calls(run([llmcall(T0), api]))
    assert (joined["prompt_tokens"], joined["cache_read_tokens"]) == (11, 7)


def test_usage_source_follows_what_filled_the_call() -> None:
    """obs-llm --api's usage_source: a call it left null and obs-merge fills from obs-ssl's
    wire says `wire`; a transcript's numbers are kept, and so is what it says."""
    nulls = {"model": None, "prompt_tokens": None, "completion_tokens": None}
    out = run([llmcall(T0, usage_source=None, **nulls), llmapi(T0 + 3 * NS),
               llmcall(T0 + 10 * NS, pid=12, usage_source="transcript", model="gpt-5-codex",
                       prompt_tokens=5, completion_tokens=6),
               llmapi(T0 + 13 * NS, pid=12)])
    got = {c["pid"]: (c["usage_source"], c["model"], c["prompt_tokens"]) for c in calls(out)}
    assert got == {10: ("wire", "claude-x", 11), 12: ("transcript", "gpt-5-codex", 5)}
