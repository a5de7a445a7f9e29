"""docs/events.md and the code that emits events, kept in step in both directions.

Every kind is produced by its real decoder from synthetic kernel records (laid out from
bpf/<signal>.h), in each mode that adds fields (obs-llm --api, obs-merge's joins, obs-enforce
next to obs-fileguard), and obs-merge runs as a subprocess over all of it for its joins and its
--summary object. Every event must match the doc (no undocumented field, no documented field
missing, JSON types as documented), and together they must witness the whole doc: each field
emitted with a value, each nullable field null at least once, each mode-only field absent at
least once. The fixtures are checked too.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from libobs import cgroup
from libobs.events import KINDS, NS, Clock
from libobs.exec.decode import (
    K_EXEC,
    K_EXIT,
    K_FILE_DELETE,
    K_FILE_OPEN,
    K_SECURITY,
    SEC_LISTEN,
    SEC_PTRACE,
    SEC_SETUID,
    ExecDecoder,
)
from libobs.guard import egress
from libobs.guard.cache import Cache
from libobs.guard.denyfile import parse_paths
from libobs.guard.fanotify import FAN_OPEN_EXEC_PERM, Event
from libobs.guard.fileguard import Enricher, Guard
from libobs.guard.marks import MASK, observe, plan
from libobs.identity import Identities
from libobs.kernel import layout
from libobs.kernel.records import HDR, PATH_SLOT
from libobs.merge.input import decode as decode_line
from libobs.merge.merger import Merge
from libobs.merge.sessions import Sessions
from libobs.merge.summary import Summary
from libobs.net.apijoin import ApiJoin, JoinedDecoder
from libobs.net.decode import K_DATA, K_DNS, K_HELLO, K_SEND, K_STATE, NetDecoder
from libobs.net.llmcalls import LlmCallDecoder
from libobs.net.transcripts import TranscriptFact, Transcripts
from libobs.providers import load_rules
from libobs.tls.attach import SslApi
from libobs.tls.decode import SslDecoder
from libobs.tool.heartbeat import heartbeat_event
from libobs.tool.sink import dumps
from tests.support.contract import Contract, Seen, load, parse
from tests.support.tools import REPO, tool_cmd
from tests.unit.test_llmjoin_wire import h2_connection
from tests.unit.test_netevents import (
    APP_HEAD,
    FIN_HEAD,
    HELLO_HEAD,
    connect_rec,
    dns_answer,
    dns_query,
    payload_rec,
    tcp_rec,
)
from tests.unit.test_parse_tls import real_hello
from tests.unit.test_sslevents import (
    READ,
    READ_EX,
    WRITE_EX,
    anthropic_request,
    json_response,
    sse_response,
)
from tests.unit.test_sslevents import record as ssl_record

MS = 1_000_000
T0 = 1_764_100_000 * NS        # wall clock of monotonic 0 for every decoder here
CLOCK = Clock(T0)
RULES = load_rules()
AGENT = 4242                   # makes LLM calls (tests.unit.test_netevents.PID)
TOOL = 4300                    # a tool the agent runs
POD_TOOL = 4400                # a tool in a Kubernetes pod (container id and pod UID known)
API_ONLY = 4500                # LLM API traffic seen by obs-ssl alone
GHOST = 4999                   # gone before obs-fileguard could read /proc
POD_CGROUP = ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
              "1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-" + "ab" * 32 + ".scope")
FIXTURES = REPO / "tests" / "fixtures"
CONTRACT = load()


def as_json(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a consumer reads: each event through the tools' own serialiser."""
    return [orjson.loads(dumps(ev)) for ev in events]


# ---- records laid out from bpf/<signal>.h -----------------------------------------------------

EXEC_H = layout.read("exec.h")


def record(struct_name: str, kind: int, pid: int, ts: int, *, ppid: int = AGENT,
           cgroup_id: int = 7, comm: bytes = b"tool", **fields: Any) -> bytes:
    """A whole exec.h record: the header, then each named member at its offset."""
    lay = EXEC_H[struct_name]
    buf = bytearray(lay.size)
    HDR.pack_into(buf, 0, kind, pid, pid, ppid, 1000, 0, pid, 0, ts, cgroup_id, 0, comm)
    for name, value in fields.items():
        f = lay.field(name)
        struct.pack_into("<" + f.code, buf, f.offset, value)
    return bytes(buf)


def slots(path: str) -> tuple[bytes, int]:
    """A path as the kernel walks it: leaf-first PATH_SLOT-byte names, and how many."""
    names = [n.encode() for n in reversed(path.strip("/").split("/"))]
    return b"".join(n.ljust(PATH_SLOT, b"\0") for n in names), len(names)


def exec_events() -> list[dict[str, Any]]:
    dec = ExecDecoder(CLOCK, "host-1", Identities())
    cwd, ncwd = slots("/home/dev/proj")
    argv = b"git\0clone\0https://example.com/x.git\0"
    opened, nopen = slots("/home/dev/proj/out.txt")
    base, nbase = slots("/home/dev/proj")

    def exec_rec(pid: int, ts: int, **kw: Any) -> bytes:
        return record("exec_rec", K_EXEC, pid, ts, filename_len=12, cwd_slots=ncwd,
                      argv_len=len(argv), argv_truncated=0, cwd_complete=1,
                      filename=b"/usr/bin/git", cwd=cwd, argv=argv, **kw)

    raws = [
        exec_rec(TOOL, 1 * MS),
        record("file_rec", K_FILE_OPEN, TOOL, 2 * MS, flags=0o1101, slots=nopen, complete=1,
               path=opened),
        record("file_rec", K_FILE_DELETE, TOOL, 3 * MS, dfd=-100, slots=nbase, name_len=7,
               complete=1, name=b"old.txt", path=base),
        record("sec_rec", K_SECURITY, TOOL, 4 * MS, action=SEC_SETUID, ret=-1, a0=0),
        record("sec_rec", K_SECURITY, TOOL, 5 * MS, action=SEC_PTRACE, ret=0, a0=0x10, a1=1),
        record("sec_rec", K_SECURITY, TOOL, 6 * MS, action=SEC_LISTEN, ret=0, a0=3, family=2,
               port=8765, addr=bytes([127, 0, 0, 1]).ljust(16, b"\0")),
        record("exit_rec", K_EXIT, TOOL, 7 * MS, exit_code=1 << 8, start_ns=1 * MS),
        exec_rec(POD_TOOL, 8 * MS, cgroup_id=99),
        record("exit_rec", K_EXIT, POD_TOOL, 9 * MS, cgroup_id=99, exit_code=9,
               start_ns=8 * MS),                                    # SIGKILL
        record("exit_rec", K_EXIT, TOOL + 1, 10 * MS, exit_code=0x80 | 11, start_ns=0),
    ]
    return [ev for raw in raws for ev in dec(raw)]


def net_events() -> list[dict[str, Any]]:
    dec = NetDecoder(CLOCK, "host-1", RULES, identities=Identities())
    raws = [
        payload_rec(K_DNS, 1 * MS, 0, dns_query(7, "api.openai.com")),
        payload_rec(K_DNS, 2 * MS, 0, dns_answer(7, "api.openai.com", "127.0.0.9"), out=False),
        payload_rec(K_DNS, 3 * MS, 0, dns_query(8, "api.openai.com", 28)),  # never answered
        connect_rec(10 * MS, 1, "127.0.0.9", 443),
        payload_rec(K_HELLO, 11 * MS, 1, real_hello("api.openai.com"), tcp=True,
                    addr="127.0.0.9", port=443),
        connect_rec(12 * MS, 2, "::1", 8080),                          # no write: sni null
        connect_rec(13 * MS, 3, "127.0.0.53", 53, tcp=False),
    ]
    return [ev for raw in raws for ev in dec(raw)] + list(dec.tick(float("inf")))


def llm_records(sk: int, t0: int, hello: bytes) -> list[bytes]:
    """One TLS connection with one request/response exchange, as bpf/net.bpf.c reports it."""
    return [
        connect_rec(t0, sk, "127.0.0.1", 443),
        payload_rec(K_HELLO, t0 + 1, sk, hello, tcp=True, addr="127.0.0.1", port=443),
        tcp_rec(K_SEND, t0 + 2, sk, 517, seq=1517, head=HELLO_HEAD),
        tcp_rec(K_DATA, t0 + MS, sk, 900, seq=5000, ack=1517),
        tcp_rec(K_SEND, t0 + 2 * MS, sk, 80, seq=1597, head=FIN_HEAD),
        tcp_rec(K_SEND, t0 + 3 * MS, sk, 200, seq=1797, head=APP_HEAD, ts_start=t0 + 3 * MS - 5),
        tcp_rec(K_DATA, t0 + 300 * MS, sk, 1000, seq=5900, ack=1797),
        tcp_rec(K_DATA, t0 + 400 * MS, sk, 500, seq=6900, ack=1797),
        tcp_rec(K_STATE, t0 + 500 * MS, sk, 4, seq=1),
    ]


def llm_events() -> list[dict[str, Any]]:
    """obs-llm, and obs-llm --all-tls with a ClientHello that names no server."""
    out = []
    for all_tls, hello in ((False, real_hello("api.anthropic.com")), (True, real_hello("127.0.0.1"))):
        dec = LlmCallDecoder(CLOCK, "host-1", RULES, lambda sk: None, all_tls=all_tls,
                             identities=Identities())
        out += [ev for raw in llm_records(0x10, 20 * MS, hello) for ev in dec(raw)]
    return out


def ssl_events() -> list[dict[str, Any]]:
    """obs-ssl: content and LlmApi of the agent's call above (its response inside that call's
    span, for obs-merge's join), one request naming no model, and a process with no LlmCall."""
    dec = SslDecoder(CLOCK, "host-1", ["/lib/libssl.so.3"], identities=Identities())
    chat = (b'POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n'
            b'Content-Length: 16\r\n\r\n{"messages": []}')
    resp = json_response({"model": "claude-x", "usage": {"input_tokens": 3, "output_tokens": 4}})
    raws = [
        ssl_record(anthropic_request(False), ts=23 * MS, fn=WRITE_EX, pid=AGENT),
        ssl_record(resp[0], ts=300 * MS, fn=READ, pid=AGENT),
        ssl_record(chat, ts=30 * MS, fn=WRITE_EX, pid=API_ONLY, ssl=2),
        ssl_record(anthropic_request(True), ts=31 * MS, fn=WRITE_EX, pid=API_ONLY, ssl=3),
        ssl_record(b"x" * 10, ts=32 * MS, fn=READ_EX, pid=API_ONLY, ssl=4, total=5000,
                   captured=10),
    ]
    off = 0
    for i, piece in enumerate(sse_response()):  # with cache token counts
        raws.append(ssl_record(piece, ts=33 * MS + i, fn=READ_EX, off=off, pid=API_ONLY, ssl=3))
        off += len(piece)
    return [ev for raw in raws for ev in dec(raw)] + dec.tick(float("inf"))


def llm_api_events() -> list[dict[str, Any]]:
    """obs-llm --api: a call whose response the TLS probes read, one they never saw (its
    process's executable holds a TLS stack obs cannot read), one whose usage came from the
    agent's transcript, a settings GET (no model call), and an HTTP/2 connection's streams."""
    transcripts = Transcripts(proc="/nonexistent")  # the fact is given, not found
    dec = JoinedDecoder(
        LlmCallDecoder(CLOCK, "host-1", RULES, lambda sk: None, identities=Identities()),
        SslApi(CLOCK), ApiJoin(transcripts=transcripts),
        unreadable_of=lambda pid, since: "rustls in /opt/codex")
    transcripts.add(TranscriptFact(AGENT, CLOCK.wall(9000 * MS + 350 * MS), {
        "model": "gpt-5-codex", "prompt_tokens": 4601, "completion_tokens": 467,
        "cache_read_tokens": 49, "cache_creation_tokens": None}))
    t0 = 1000 * MS
    net = llm_records(0x20, t0, real_hello("api.anthropic.com"))
    ssl = [ssl_record(anthropic_request(True), ts=t0 + 3 * MS, fn=WRITE_EX, pid=AGENT, ssl=5)]
    off = 0
    for i, piece in enumerate(sse_response()):
        ssl.append(ssl_record(piece, ts=t0 + 300 * MS + i, fn=READ_EX, off=off, pid=AGENT,
                              ssl=5))
        off += len(piece)
    raws = net[:-1] + ssl + net[-1:] + llm_records(0x21, 5000 * MS, real_hello("api.openai.com"))
    raws += llm_records(0x22, 9000 * MS, real_hello("api.openai.com"))
    t1 = 12000 * MS  # an agent's settings GET: a call marked model_call false
    get = llm_records(0x23, t1, real_hello("api.anthropic.com"))
    raws += get[:-1] + [
        ssl_record(b"GET /api/claude_code/settings HTTP/1.1\r\nHost: api.anthropic.com\r\n\r\n",
                   ts=t1 + 3 * MS, fn=WRITE_EX, pid=AGENT, ssl=6),
        ssl_record(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", ts=t1 + 300 * MS,
                   fn=READ_EX, off=0, pid=AGENT, ssl=6)] + get[-1:]
    h2, _ = h2_connection({1: 200, 3: 100}, t0=8000 * MS)  # two HTTP/2 streams
    raws += [raw for _, raw in sorted(h2, key=lambda r: r[0])]
    return [ev for raw in raws for ev in dec(raw)] + dec.tick(float("inf"))


def enforce_events() -> list[dict[str, Any]]:
    ids = egress.RuleIds()
    dec = egress.Decoder(CLOCK, "host-1", ids, lambda reply: None, Identities())
    out: list[dict[str, Any]] = []
    for family, addr, rule, port, proto in (
            (4, bytes([203, 0, 113, 5]), egress.Rule("203.0.113.5"), 443, 6),
            (6, bytes(15) + b"\1", egress.Rule("provider:OpenAi not allowed", "OpenAi"), 53, 17)):
        head = HDR.pack(egress.K_DENIED, TOOL, TOOL, AGENT, 1000, 0, TOOL, 0, 40 * MS, 7, 0,
                        b"curl")
        out += dec(head + egress.DENIED.pack(family, addr.ljust(16, b"\0"),
                                                     ids.id(rule), port, 2, proto) + bytes(4))
    return out


class Outbox:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def event(self, ev: dict[str, Any]) -> None:
        self.events.append(ev)

    def error(self, msg: str) -> None:
        raise AssertionError(msg)


class DirsGroup:
    """The cache's fanotify group, without a kernel: the contract only needs its counters."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def ignore_children(self, dir_fd: int, mask: int) -> None:
        pass

    def flush_inode_marks(self) -> None:
        pass


FILEGUARD_STATS: dict[str, int] = {}


def fileguard_events(tmp: Path) -> list[dict[str, Any]]:
    """A real denial through Guard.answer (the opener: this test's parent process, as
    /proc shows it), and one for a process /proc no longer has; the guard's heartbeat
    counters go to FILEGUARD_STATS."""
    secret = tmp / "secret"
    secret.write_text("s")
    rules, errors = parse_paths(f"{secret}\n")
    assert errors == []
    r, w = os.pipe()
    box = Outbox()
    dirs = DirsGroup(w)
    guard = Guard(w, box, Enricher("host-1", None), None, me=os.getpid(),
                  cache=Cache(dirs, MASK, 8))
    try:
        guard.set_rules(plan(rules, observe(rule.path for rule in rules)).rules)
        guard.answer([Event(mask=FAN_OPEN_EXEC_PERM, fd=os.open(secret, os.O_RDONLY),
                            pid=os.getppid())])
        fine = tmp / "pub" / "fine"
        fine.parent.mkdir()
        fine.write_text("f")
        guard.answer([Event(mask=FAN_OPEN_EXEC_PERM, fd=os.open(fine, os.O_RDONLY),
                            pid=os.getppid()) for _ in range(2)], dirs.fd)  # then cached
        assert guard.counters.cached == 1
        FILEGUARD_STATS.update(guard.stats())
    finally:
        guard.close()
        os.close(r)
        os.close(w)
    gone = Enricher("host-1", None, proc=str(tmp / "no-proc")).denied(
        GHOST, "open", str(secret).encode(), rules[0], T0 + 50 * MS)
    return box.events + [gone]


UNREADABLE = [{"path": "/opt/codex", "stack": "rustls",
               "problem": "rustls linked in: obs has no probes for it"}]


def heartbeat_events(counts: Counter[str]) -> list[dict[str, Any]]:
    return [heartbeat_event(collector_id="obs-exec-host-1-1-abcdef01", tool="obs-exec",
                            attached=["tracepoint:sched:sched_process_exec"],
                            features=["exec", "files"], interval=60.0, counts=counts,
                            dropped=0, output_dropped=0, host="host-1"),
            heartbeat_event(collector_id="obs-ssl-host-1-2-abcdef02", tool="obs-ssl",
                            attached=["uprobe:/usr/lib/libssl.so.3:SSL_read"],
                            features=["llm-api"], interval=60.0, counts=Counter(),
                            dropped=0, output_dropped=0, host="host-1",
                            unreadable=UNREADABLE, programs=(1, 0),
                            extra={"order_overflows": 1}),
            heartbeat_event(collector_id="obs-llm-host-1-3-abcdef03", tool="obs-llm",
                            attached=["uprobe:/usr/lib/libssl.so.3:SSL_read"],
                            features=["llm", "api", "transcripts"], interval=60.0,
                            counts=Counter(), dropped=0, output_dropped=0, host="host-1",
                            unreadable=UNREADABLE, extra=ApiJoin(transcripts=Transcripts(counts={
                                "files": 1, "usage_lines": 2}), unanswered=1).heartbeat()),
            heartbeat_event(collector_id="obs-fileguard-host-1-4-abcdef04", tool="obs-fileguard",
                            attached=["fanotify:open_perm"], features=["open", "exec"],
                            interval=60.0, counts=Counter(), dropped=0, output_dropped=0,
                            host="host-1", extra=FILEGUARD_STATS)]


# ---- everything the code emits ---------------------------------------------------------------

@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """{source: events}, each as JSON; "obs-merge" is the real tool run over all the others,
    "obs-merge --summary" its summary object."""
    tmp = tmp_path_factory.mktemp("contract")

    def proc_cgroup(pid: int | str, proc: str = "/proc") -> str | None:
        return f"0::{POD_CGROUP}\n" if int(pid) == POD_TOOL else None

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cgroup, "read_proc_cgroup", proc_cgroup)  # /proc/<pid>/cgroup of a pod
        out = {"obs-exec --files": exec_events(), "obs-net": net_events(),
               "obs-llm": llm_events(), "obs-ssl": ssl_events(),
               "obs-llm --api": llm_api_events(), "obs-enforce": enforce_events()}
    out["obs-fileguard"] = fileguard_events(tmp)
    counts = Counter(next(iter(ev["event"])) for evs in out.values() for ev in evs)
    out["CollectorHeartbeat"] = heartbeat_events(counts)
    out = {src: as_json(evs) for src, evs in out.items()}

    stream = tmp / "all.ndjson"
    stream.write_bytes(b"".join(orjson.dumps(ev) + b"\n" for evs in out.values() for ev in evs))
    run = subprocess.run(tool_cmd("obs-merge", "--format", "json", "--summary", "--no-proc",
                                  "--agent", f"pid:{GHOST}", str(stream)),
                         capture_output=True, cwd=REPO, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr.decode()
    *merged, summary = [orjson.loads(line) for line in run.stdout.splitlines()]
    out["obs-merge"] = merged
    out["obs-merge --summary"] = [summary]
    return out


@pytest.fixture(scope="module")
def seen(emitted: dict[str, list[dict[str, Any]]]) -> Seen:
    seen = Seen()
    for source, events in emitted.items():
        for ev in events:
            if source == "obs-merge --summary":
                CONTRACT.check_summary(ev, seen)
            else:
                CONTRACT.check_event(ev, seen)
    return seen


def test_every_kind_in_the_code_has_a_table_and_no_other() -> None:
    assert set(CONTRACT.kinds) - set(KINDS) == set(), "docs/events.md documents kinds the code lacks"
    missing = set(KINDS) - set(CONTRACT.kinds)
    assert not missing, f"kinds in libobs.events.KINDS without a `### Kind` table in " \
                        f"docs/events.md: {sorted(missing)}"


@pytest.mark.parametrize("source", ["obs-exec --files", "obs-net", "obs-llm", "obs-ssl",
                                    "obs-llm --api", "obs-enforce", "obs-fileguard",
                                    "CollectorHeartbeat", "obs-merge", "obs-merge --summary"])
def test_emitted_events_match_the_doc(emitted: dict[str, list[dict[str, Any]]],
                                      source: str) -> None:
    assert emitted[source], f"{source} emitted nothing: the producer is broken"
    for ev in emitted[source]:
        if source == "obs-merge --summary":
            CONTRACT.check_summary(ev)
        else:
            CONTRACT.check_event(ev)


def test_merge_added_its_fields(emitted: dict[str, list[dict[str, Any]]]) -> None:
    """The joins happened (else the witnesses below would come from elsewhere)."""
    merged = emitted["obs-merge"]
    assert any(e["event"].get("Egress", {}).get("hostname") == "api.openai.com" for e in merged)
    plain = [e["event"]["LlmCall"] for e in merged if "LlmCall" in e["event"]
             and "cache_read_tokens" not in e["event"]["LlmCall"]]  # not from --api
    assert any(c.get("model") == "claude-x" and c.get("prompt_tokens") == 3 for c in plain)


def test_every_documented_field_is_emitted(seen: Seen) -> None:
    """Nothing documented that the code never emits: every field with a value, every `?`
    null somewhere, every mode-only field absent somewhere."""
    problems = []
    for section, table in CONTRACT.tables.items():
        for path, spec in table.items():
            key = (section, path)
            if not seen.valued[key]:
                problems.append(f"{section}.{path}: documented, but no code path emitted it "
                                f"with a value")
            if spec.nullable and not seen.null[key]:
                problems.append(f"{section}.{path}: documented as nullable, never null")
            if spec.optional and not seen.absent[key]:
                problems.append(f"{section}.{path}: documented as present only in some "
                                f"tools or modes, always present")
    assert not problems, "docs/events.md vs the code:\n" + "\n".join(problems)


# ---- the fixtures ------------------------------------------------------------------------------

FIXTURE_FILES = sorted(p.name for p in FIXTURES.glob("agent_*.ndjson"))  # bad_lines.ndjson is bad on purpose


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_fixture_events_match_the_doc(name: str) -> None:
    for lineno, line in enumerate((FIXTURES / name).read_bytes().splitlines(), 1):
        try:
            CONTRACT.check_event(orjson.loads(line))
        except AssertionError as e:
            raise AssertionError(f"tests/fixtures/{name}:{lineno}: {e}") from None


def test_fixtures_merged_and_summarised_match_the_doc() -> None:
    m = Merge(Sessions(), range(len(FIXTURE_FILES)))
    summary = Summary()
    out = []
    for sid, name in enumerate(FIXTURE_FILES):
        for line in (FIXTURES / name).read_bytes().splitlines():
            ev, problem = decode_line(line)
            assert problem is None and ev is not None
            out += m.push(ev, sid, 0)
        m.close(sid)
    out += m.drain()
    for ev, root in out:
        summary.add(ev, root)
        CONTRACT.check_event(as_json([ev])[0])
    CONTRACT.check_summary(as_json([summary.to_json(m.stats())])[0])


# ---- the checker itself ------------------------------------------------------------------------

def test_drift_is_named_by_kind_and_field(emitted: dict[str, list[dict[str, Any]]]) -> None:
    [ev] = [e for e in emitted["obs-enforce"] if e["event"]["Denied"]["protocol"] == "tcp"]
    CONTRACT.check_event(ev)
    added = orjson.loads(orjson.dumps(ev))
    added["event"]["Denied"]["cost_usd"] = 0.25
    with pytest.raises(AssertionError, match=r"Denied: field `cost_usd` is emitted but not "
                                             r"documented in docs/events.md"):
        CONTRACT.check_event(added)
    nested = orjson.loads(orjson.dumps(ev))
    nested["process"]["netns"] = 4026531840
    with pytest.raises(AssertionError, match=r"Denied: field `process.netns` is emitted but not"):
        CONTRACT.check_event(nested)
    gone = orjson.loads(orjson.dumps(ev))
    del gone["event"]["Denied"]["rule"]
    with pytest.raises(AssertionError, match=r"Denied: documented field `rule` is missing"):
        CONTRACT.check_event(gone)
    typed = orjson.loads(orjson.dumps(ev))
    typed["event"]["Denied"]["pid"] = "4300"
    with pytest.raises(AssertionError, match=r"Denied: `pid` is a string '4300', documented as "
                                             r"`int`"):
        CONTRACT.check_event(typed)
    nulled = orjson.loads(orjson.dumps(ev))
    nulled["ts"] = None
    with pytest.raises(AssertionError, match=r"Denied: `ts` is null but documented as `int`"):
        CONTRACT.check_event(nulled)
    unknown = {**ev, "event": {"GpuKernel": {"pid": 1}}}
    with pytest.raises(AssertionError, match=r"GpuKernel: a kind not documented"):
        CONTRACT.check_event(unknown)


def test_a_table_missing_a_field_fails_the_coverage(emitted: dict[str, list[dict[str, Any]]]
                                                    ) -> None:
    """Removing a row (here LlmCall.exchange) makes the real events fail, naming it."""
    text = Path(REPO / "docs" / "events.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `exchange` |"))
    smaller = Contract(parse(text.replace(row + "\n", "")))
    [call] = emitted["obs-llm"][:1]
    with pytest.raises(AssertionError, match=r"LlmCall: field `exchange` is emitted but not "
                                             r"documented"):
        smaller.check_event(call)


def test_parser_rejects_what_it_cannot_check() -> None:
    head = "### X\n| field | type | meaning |\n|---|---|---|\n"
    with pytest.raises(ValueError, match=r"X.a: unknown type 'integer'"):
        parse(head + "| `a` | `integer` | m |\n")
    with pytest.raises(ValueError, match=r"X.a.b: no `object` row for a"):
        parse(head + "| `a` | `int` | m |\n| `a.b` | `int` | m |\n")
    with pytest.raises(ValueError, match=r"X.a is listed twice"):
        parse(head + "| `a` | `int` | m |\n| `a` | `str` | m |\n")
    spec = parse(head + "| `a` | `[str]?` | (obs-x --y) m |\n")["X"]["a"]
    assert (spec.type, spec.nullable, spec.optional) == ("[str]", True, True)


def test_running_events_check_the_contract(tmp_path: Path) -> None:
    """Kernel tests read tools' output through Running.events(), which checks each event."""
    from tests.support.tools import Running

    out = tmp_path / "out.ndjson"
    good = {"ts": T0, "host": "h", "identity": {"agent": None, "task": None, "session": None},
            "provider": None, "event": {"FileDelete": {"pid": 1, "path": "/x"}},
            "process": {"pid": 1, "ppid": 0, "comm": "c", "uid": 0, "cgroup_id": 1,
                        "container_id": None, "pod_uid": None}}
    out.write_bytes(orjson.dumps(good) + b"\n")
    r = Running(subprocess.Popen([sys.executable, "-c", ""]), out, tmp_path / "err")
    r.proc.wait()
    assert r.events() == [good]
    bad = {**good, "event": {"FileDelete": {"pid": 1, "path": "/x", "inode": 7}}}
    with out.open("ab") as f:  # a tool appends; each line is checked once
        f.write(orjson.dumps(bad) + b"\n")
    with pytest.raises(AssertionError, match=r"FileDelete: field `inode` is emitted but not "
                                             r"documented"):
        r.events()
