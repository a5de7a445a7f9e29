import os

from libobs.events import envelope
from libobs.net.apijoin import API_FIELDS, ApiJoin
from libobs.net.transcripts import Tail, TranscriptFact, Transcripts
from libobs.tls.attach import LlmFact

MS = 1_000_000


def call(pid, ts):
    return envelope("LlmCall", {"pid": pid, "sni": "api.openai.com"}, ts=ts, host="h")


def fact(pid, request_ts, model="gpt-4o", p=10, c=2, is_request=False, path=None):
    return LlmFact(pid, pid, is_request, request_ts + 50 * MS, request_ts, "OpenAi",
                   "api.openai.com", {"model": model, "prompt_tokens": p, "completion_tokens": c,
                                      "stream": False, "path": path})


def test_fact_before_call_joins_at_once():
    j = ApiJoin()
    j.add_fact(fact(7, 1000 * MS))
    [ev] = j.add_call(call(7, 1000 * MS + 30_000), now_ns=0)
    c = ev["event"]["LlmCall"]
    assert (c["model"], c["prompt_tokens"], c["completion_tokens"]) == ("gpt-4o", 10, 2)


def test_nearest_fact_of_the_same_pid_wins():
    j = ApiJoin()
    j.add_fact(fact(7, 1000 * MS, model="a"))
    j.add_fact(fact(7, 2000 * MS, model="b"))
    j.add_fact(fact(8, 2000 * MS, model="other-pid"))
    [ev] = j.add_call(call(7, 2000 * MS + 5), now_ns=0)
    assert ev["event"]["LlmCall"]["model"] == "b"
    [ev] = j.add_call(call(7, 1000 * MS + 5), now_ns=0)
    assert ev["event"]["LlmCall"]["model"] == "a"


def test_request_facts_do_not_join():
    j = ApiJoin()
    j.add_fact(fact(7, 1000 * MS, is_request=True))
    assert j.add_call(call(7, 1000 * MS), now_ns=0) == []


def test_late_fact_joins_within_grace_else_nulls():
    j = ApiJoin(grace_ns=100 * MS)
    assert j.add_call(call(7, 1000 * MS), now_ns=0) == []
    assert j.add_call(call(9, 5000 * MS), now_ns=0) == []
    j.add_fact(fact(7, 1000 * MS + 1))
    out = j.tick(now_ns=10 * MS)
    assert [e["event"]["LlmCall"]["pid"] for e in out] == [7]
    assert out[0]["event"]["LlmCall"]["model"] == "gpt-4o"
    [late] = j.tick(now_ns=200 * MS)
    assert all(late["event"]["LlmCall"][k] is None for k in API_FIELDS)


def test_fact_outside_tolerance_is_not_used():
    j = ApiJoin(tolerance_ns=10 * MS, grace_ns=0)
    j.add_fact(fact(7, 1000 * MS))
    assert j.add_call(call(7, 1100 * MS), now_ns=0) == []
    [ev] = j.tick(now_ns=1)
    assert ev["event"]["LlmCall"]["model"] is None


def test_other_events_pass_through_and_memory_is_bounded():
    j = ApiJoin(max_facts=100, keep_ns=1000 * MS)
    other = envelope("Egress", {"pid": 1}, ts=0, host="h")
    assert j.add_call(other, now_ns=0) == [other]
    for i in range(10_000):
        j.add_fact(fact(i % 7, i * 10 * MS))
    assert j.n_facts <= 100 and sum(len(v) for v in j.facts.values()) == j.n_facts


def test_a_request_that_is_no_model_call_marks_its_own_call():
    """Claude Code's GET for settings, concurrent with a model call of the same process: each
    call gets its own fact, the GET's marked, neither takes the other's tokens."""
    j = ApiJoin()
    j.add_fact(LlmFact(7, 7, True, 1000 * MS, 1000 * MS, None, "api.anthropic.com",
                       {"method": "GET", "path": "/api/claude_code/settings"}, model_call=False))
    j.add_fact(fact(7, 1002 * MS, path="/v1/messages"))
    [get] = j.add_call(call(7, 1000 * MS + 20_000), now_ns=0)
    [post] = j.add_call(call(7, 1002 * MS + 20_000), now_ns=0)
    g, p = get["event"]["LlmCall"], post["event"]["LlmCall"]
    assert (g["model_call"], g["request"], g["model"], g["prompt_tokens"]) == (
        False, "GET /api/claude_code/settings", None, None)
    assert (p["model_call"], p["request"], p["model"]) == (True, "POST /v1/messages", "gpt-4o")
    assert g["tls_unreadable"] is None and p["tls_unreadable"] is None


def test_a_call_without_facts_says_which_stack_hides_them():
    seen = []

    def unreadable_of(pid, since):
        seen.append(pid)
        return "rustls in /opt/codex" if pid == 7 else None
    j = ApiJoin(grace_ns=0, unreadable_of=unreadable_of)
    assert j.add_call(call(7, 1000 * MS), now_ns=0) == []
    assert j.add_call(call(9, 1000 * MS), now_ns=0) == []
    assert seen == [7, 9]  # asked when the call arrives, while its process is likely alive
    out = {e["event"]["LlmCall"]["pid"]: e["event"]["LlmCall"] for e in j.tick(now_ns=1)}
    assert out[7]["tls_unreadable"] == "rustls in /opt/codex" and out[7]["model"] is None
    assert out[9]["tls_unreadable"] is None and out[9]["model_call"] is None


# ---- the transcript source (libobs.net.transcripts): where the wire cannot be read ----------

def timed_call(pid, ts, latency_ms):
    ev = call(pid, ts)
    ev["event"]["LlmCall"]["latency"] = {"secs": latency_ms // 1000,
                                         "nanos": latency_ms % 1000 * MS}
    return ev


def usage(pid, ts, p):
    return TranscriptFact(pid, ts, {"model": "gpt-5-codex", "prompt_tokens": p,
                                    "completion_tokens": 2, "cache_read_tokens": 1,
                                    "cache_creation_tokens": None})


def transcript_join(tmp_path, pids=()):
    """An ApiJoin whose transcript source follows a real (empty) file for each pid."""
    t = Transcripts(proc=str(tmp_path / "no-proc"))
    for pid in pids:
        f = tmp_path / f"t{pid}"
        f.write_bytes(b"")
        t.tails[(pid, 1)] = Tail.at_end(os.open(f, os.O_RDONLY), "codex")
    return ApiJoin(grace_ns=100 * MS, transcripts=t, transcript_wait_ns=1000 * MS), t


def test_a_call_without_wire_facts_takes_its_transcript_usage_after_the_grace(tmp_path):
    j, t = transcript_join(tmp_path)
    t.add(usage(7, 1300 * MS, p=4601))
    assert j.add_call(timed_call(7, 1000 * MS, 300), now_ns=0) == []
    assert j.tick(now_ns=50 * MS) == []  # the wire may still speak
    [ev] = j.tick(now_ns=100 * MS)
    c = ev["event"]["LlmCall"]
    assert (c["usage_source"], c["model"], c["prompt_tokens"]) == ("transcript", "gpt-5-codex",
                                                                   4601)
    assert j.heartbeat() == {"transcripts": {"joined": 1}}


def test_the_wire_wins_over_the_transcript(tmp_path):
    j, t = transcript_join(tmp_path, pids=[7])
    t.add(usage(7, 1300 * MS, p=4601))
    j.add_fact(fact(7, 1000 * MS))
    [ev] = j.add_call(timed_call(7, 1000 * MS + 5, 300), now_ns=0)
    assert ev["event"]["LlmCall"]["usage_source"] == "wire"
    assert ev["event"]["LlmCall"]["prompt_tokens"] == 10


def test_a_usage_line_belongs_to_the_last_call_started_before_it(tmp_path):
    """A short request (Codex's WebSocket upgrade attempts) before the model call does not
    take the model call's usage, whether that call is reported or still in progress."""
    for running in (False, True):
        j, t = transcript_join(tmp_path)
        t.add(usage(7, 1400 * MS, p=4601))
        j.add_call(timed_call(7, 1000 * MS, 5), now_ns=0)  # the GET
        if running:
            j.running = {7: [1100 * MS]}
        else:
            j.add_call(timed_call(7, 1100 * MS, 300), now_ns=0)
        out = j.tick(now_ns=10**10)
        got = {e["event"]["LlmCall"]["latency"]["nanos"] // MS:
               e["event"]["LlmCall"]["prompt_tokens"] for e in out}
        assert got == ({5: None} if running else {5: None, 300: 4601})


def test_a_usage_line_before_the_call_or_long_after_it_is_not_its(tmp_path):
    j, t = transcript_join(tmp_path)
    t.add(usage(7, 900 * MS, p=1))           # the previous call's
    t.add(usage(7, 1300 * MS + 1001 * MS, p=2))  # later than the call's end + the wait
    t.add(usage(8, 1200 * MS, p=3))          # another process's
    j.add_call(timed_call(7, 1000 * MS, 300), now_ns=0)
    [ev] = j.tick(now_ns=10**10)
    assert ev["event"]["LlmCall"]["prompt_tokens"] is None
    assert ev["event"]["LlmCall"]["usage_source"] is None


def test_a_call_of_a_process_with_a_transcript_waits_for_its_line_then_counts_late(tmp_path):
    j, t = transcript_join(tmp_path, pids=[7, 9])
    j.add_call(timed_call(7, 1000 * MS, 300), now_ns=0)
    j.add_call(timed_call(9, 1000 * MS, 300), now_ns=0)
    assert j.tick(now_ns=500 * MS) == []     # past the wire's grace, within the wait
    t.add(usage(7, 1250 * MS, p=4601))       # the line comes
    [ev] = j.tick(now_ns=600 * MS)
    assert ev["event"]["LlmCall"]["prompt_tokens"] == 4601
    assert j.tick(now_ns=999 * MS) == []
    [ev] = j.tick(now_ns=1000 * MS)          # pid 9's never came: bounded, counted
    assert ev["event"]["LlmCall"]["usage_source"] is None
    assert j.heartbeat()["transcripts"] == {"joined": 1, "late": 1}


def test_without_a_transcript_source_nothing_changes_but_the_field():
    j = ApiJoin(grace_ns=0)
    j.add_call(timed_call(7, 1000 * MS, 300), now_ns=0)
    [ev] = j.tick(now_ns=1)
    assert ev["event"]["LlmCall"]["usage_source"] is None and j.heartbeat() == {}


def test_unanswered_http2_streams_are_said_once_and_counted_on():
    j = ApiJoin()
    assert j.heartbeat() == {} and j.news() == []
    j.unanswered = 1  # a claimed stream expired (the wire tests make them for real)
    [line] = j.news()
    assert "h2_unanswered" in line
    j.unanswered = 3
    assert j.news() == [] and j.heartbeat() == {"h2_unanswered": 3}
