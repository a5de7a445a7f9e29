"""libobs.guard.enforce without a kernel: keys, rule ids, map plans, record decoding, and the
Enforcer's map contents as deny-files, lookups and DNS answers change."""

from __future__ import annotations

import ipaddress
import os
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libobs.events import Clock
from libobs.guard import egress, enforce
from libobs.guard.denyfile import DenyFileError, DenyFileWatcher, parse_egress
from libobs.guard.policy import ProviderPolicy
from libobs.kernel import bpflink
from libobs.kernel.records import HDR
from libobs.net.dns import DnsAnswer
from tests.support.providers import small_rules

ip = ipaddress.ip_address
R = egress.Rule


# ---- keys and names ------------------------------------------------------------------------
def test_keys_v4_v6_and_v4_mapped():
    assert egress.key_of(ip("127.0.0.61")) == (4, bytes([127, 0, 0, 61]) + bytes(12))
    assert egress.key_of(ip("::ffff:127.0.0.61")) == egress.key_of(ip("127.0.0.61"))
    assert egress.key_of(ip("::1")) == (6, bytes(15) + b"\x01")
    assert len(egress.key_bytes(egress.key_of(ip("::1")))) == egress.KEY.size == 20
    for a in ("10.1.2.3", "2001:db8::7"):
        assert egress.key_ip(egress.key_of(ip(a))) == ip(a)


def test_target_text():
    assert egress.target(egress.key_of(ip("127.0.0.1")), 443) == "127.0.0.1:443"
    assert egress.target(egress.key_of(ip("::1")), 53) == "[::1]:53"


def test_wire_name():
    key = egress.wire_name("api.openai.com")
    assert key == b"\x03api\x06openai\x03com\x00".ljust(128, b"\0")
    assert egress.wire_name("a" * 64 + ".com") is None
    assert egress.wire_name(".".join(["abcdefghi"] * 13)) is None  # 130 bytes on the wire
    assert egress.wire_name(".".join(["abcdefghi"] * 12)) is not None


@given(st.text(max_size=300))
def test_wire_name_and_nameservers_are_total(text):
    key = egress.wire_name(text)
    assert key is None or len(key) == egress.NAME_LEN
    assert all(ip(str(a)) == a for a in enforce.nameservers(text))


def test_rule_ids_are_stable_and_never_reused():
    ids = egress.RuleIds()
    a, b = ids.id(R("10.0.0.1")), ids.id(R("provider:OpenAi not allowed", "OpenAi"))
    assert ids.id(R("10.0.0.1")) == a and a != b and egress.RULE_UNCLASSIFIED not in (a, b)
    assert ids.rule(b) == R("provider:OpenAi not allowed", "OpenAi")
    assert ids.rule(egress.RULE_UNCLASSIFIED).text == "policy:deny-unclassified"
    assert ids.rule(999).text == "rule #999 (unknown)"


# ---- plans ---------------------------------------------------------------------------------
def test_plan_precedence():
    k = egress.key_of
    deny, allow = egress.plan_maps(
        lines=[(ip("1.1.1.1"), R("1.1.1.1")), (ip("1.1.1.1"), R("dup"))],
        unapproved=[(ip("1.1.1.1"), R("p:X")), (ip("2.2.2.2"), R("p:X")),
                    (ip("3.3.3.3"), R("p:X"))],
        approved=[(ip("3.3.3.3"), R("p:A"))],  # shared with an unapproved one: not denied
        servers=[(ip("9.9.9.9"), R("dns"))], allow_mode=False)
    assert deny == {k(ip("1.1.1.1")): egress.Entry(R("1.1.1.1")),
                    k(ip("2.2.2.2")): egress.Entry(R("p:X"))}
    assert allow == {k(ip("3.3.3.3")): egress.Entry(R("p:A"))}
    _, allow = egress.plan_maps([], [], [(ip("3.3.3.3"), R("p:A"))],
                                 [(ip("9.9.9.9"), R("dns"))], allow_mode=True)
    assert allow[k(ip("9.9.9.9"))] == egress.Entry(R("dns"), 53)


def test_plan_names():
    w = egress.wire_name
    names = egress.plan_names([("api.openai.com", R("line"))],
                               [("api.openai.com", R("p:O"), False),
                                ("api.mistral.ai", R("p:M"), False),
                                ("api.anthropic.com", R("p:A"), True)], allow_mode=False)
    assert names == {w("api.openai.com"): (R("line"), False),
                     w("api.mistral.ai"): (R("p:M"), False)}
    names = egress.plan_names([], [("api.anthropic.com", R("p:A"), True)], allow_mode=True)
    assert names == {w("api.anthropic.com"): (R("p:A"), True)}


def test_diff():
    up, dele = egress.diff({b"a": b"1", b"b": b"2"}, {b"a": b"1", b"b": b"3", b"c": b"4"})
    assert up == {b"b": b"3", b"c": b"4"} and dele == []
    assert egress.diff({b"a": b"1"}, {}) == ({}, [b"a"])


# ---- records -------------------------------------------------------------------------------
class NoIdentities:
    def of(self, h):
        return {"agent": None, "task": str(h.pid), "session": None}, {"pid": h.pid}


def header(kind: int, pid: int = 0, length: int = 0) -> bytes:
    return HDR.pack(kind, pid, pid, 1, 0, length, pid, 0, 1000, 42, 5, b"agent")


def decoder(ids=None, seen=None):
    return egress.Decoder(Clock(0), "h", ids or egress.RuleIds(),
                           (seen if seen is not None else []).append,
                           NoIdentities())  # type: ignore[arg-type]


def test_denied_record_to_event():
    ids = egress.RuleIds()
    rid = ids.id(R("provider:OpenAi not allowed", "OpenAi"))
    raw = header(egress.K_DENIED, 1841) + egress.DENIED.pack(
        6, ip("::1").packed, rid, 443, 2, 6) + bytes(4)
    [ev] = decoder(ids)(raw)
    assert ev["provider"] == "OpenAi" and ev["ts"] == 1000
    assert ev["event"] == {"Denied": {
        "pid": 1841, "action": "egress", "target": "[::1]:443",
        "rule": "provider:OpenAi not allowed", "guard": "obs-enforce", "protocol": "tcp"}}


def test_dns_record_goes_to_on_dns():
    import dnslib

    q = dnslib.DNSRecord.question("api.mistral.ai")
    reply = q.reply()
    reply.add_answer(dnslib.RR("api.mistral.ai", dnslib.QTYPE.A, rdata=dnslib.A("10.0.0.7")))
    payload = reply.pack()
    raw = header(egress.K_GUARD_DNS, length=len(payload)) + egress.DNS_HEAD.pack(
        4, ip("127.0.0.53").packed + bytes(12), 0) + payload
    seen: list[egress.DnsReply] = []
    assert list(decoder(seen=seen)(raw)) == []
    assert seen == [egress.DnsReply(ip("127.0.0.53"),
                                     DnsAnswer(reply.header.id, "api.mistral.ai", "A",
                                               ["10.0.0.7"]))]


@given(st.binary(max_size=400), st.sampled_from([egress.K_DENIED, egress.K_GUARD_DNS, 7]))
def test_decoder_is_total(body, kind):
    for raw in (body, header(kind, 1, len(body)) + body):
        list(decoder()(raw))


# ---- inputs --------------------------------------------------------------------------------
def test_nameservers():
    text = "# c\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver junk\nsearch x\n"
    assert enforce.nameservers(text) == [ip("10.0.0.2"), ip("fe80::1")]


def test_link_errors_are_one_line_oserrors():
    with pytest.raises(bpflink.LinkError) as e:
        bpflink.link_create(2**31 - 1, 2**31 - 1, bpflink.CGROUP_INET4_CONNECT)  # no such fds
    assert "BPF_LINK_CREATE" in str(e.value) and "\n" not in str(e.value)


# ---- the Enforcer --------------------------------------------------------------------------
class SyncPool:
    """ResolverPool stand-in: lookups finish when collected."""

    def __init__(self, table: dict[str, list[str]]):
        self.table = table
        self.todo: list[str] = []
        self.submitted: list[str] = []

    def submit(self, names):
        for n in names:
            self.todo.append(n)
            self.submitted.append(n)

    def collect(self, timeout=0.0):
        out = []
        for n in dict.fromkeys(self.todo):
            out.append((n, [ip(a) for a in self.table[n]] if n in self.table else "no such host"))
        self.todo.clear()
        return out


class Maps:
    """MapWriter into dicts; ``insert`` plays the kernel adding an entry on its own."""

    def __init__(self):
        self.t: dict[str, dict[bytes, bytes]] = {t: {} for t in egress.TABLES}

    def update(self, table, key, value):
        self.t[table][key] = value

    def delete(self, table, key):
        self.t[table].pop(key, None)

    def rules(self, ids, table="deny") -> dict[str, str]:
        out = {}
        for k, v in self.t[table].items():
            family, addr = egress.KEY.unpack(k)
            rid, port, _ = egress.VAL.unpack(v)
            out[str(egress.key_ip((family, addr)))] = ids.rule(rid).text + (
                f" :{port}" if port else "")
        return out


RULES = small_rules({"Anthropic": ["api.anthropic.com", "anthropic.com"],
                     "OpenAi": ["api.openai.com", "openai.com"], "Mistral": ["mistral.ai"]})


def make(tmp_path, text=None, allow=(), deny_unclassified=False, hosts=None, servers=()):
    watcher = None
    if text is not None:
        f = tmp_path / "deny.txt"
        f.write_text(text)
        f.chmod(0o644)
        watcher = DenyFileWatcher(f, parse_egress, interval=0, trusted_uid=os.getuid())
    providers = ProviderPolicy(allow, deny_unclassified, RULES) if allow else None
    reports: list[str] = []
    e = enforce.Enforcer(watcher=watcher, providers=providers, rules=RULES,
                         servers=[ip(s) for s in servers], pool=SyncPool(hosts or {}),
                         report=reports.append)
    return e, Maps(), reports


def test_denyfile_lines_and_hostnames_become_rules(tmp_path):
    e, maps, reports = make(tmp_path, "10.0.0.1\nbad line\nblocked.test  # why\n::1\n",
                            hosts={"blocked.test": ["10.0.0.2", "::2"]})
    e.start(0)
    e.sync(maps)
    assert maps.rules(e.ids) == {"10.0.0.1": "10.0.0.1", "10.0.0.2": "blocked.test  # why",
                                 "::2": "blocked.test  # why", "::1": "::1"}
    assert reports == [f"{tmp_path}/deny.txt:2: expected one address or hostname per line, "
                       "line skipped: 'bad line'"]
    assert maps.t["names"] == {egress.wire_name("blocked.test"): egress.NAME_VAL.pack(
        e.ids.id(R("blocked.test  # why")), False)}
    assert maps.t["allow"] == {}


def test_reload_replaces_rules_and_a_vanished_file_keeps_them(tmp_path):
    e, maps, reports = make(tmp_path, "10.0.0.1\n10.0.0.2\n")
    e.start(0)
    e.sync(maps)
    f = tmp_path / "deny.txt"
    f.write_text("10.0.0.2\n10.0.0.3\n")
    os.utime(f, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    e.tick(1.0)
    e.sync(maps)
    assert set(maps.rules(e.ids)) == {"10.0.0.2", "10.0.0.3"}
    f.unlink()
    e.tick(2.0)
    e.sync(maps)
    assert set(maps.rules(e.ids)) == {"10.0.0.2", "10.0.0.3"}
    assert "keeping the previous policy" in reports[-1]


def test_failed_lookup_keeps_earlier_addresses(tmp_path):
    e, maps, reports = make(tmp_path, "blocked.test\n", hosts={"blocked.test": ["10.0.0.2"]})
    e.start(0)
    e.pool.table.clear()  # type: ignore[attr-defined]
    e.tick(time.monotonic() + enforce.REFRESH_S + 1)
    e.sync(maps)
    assert maps.rules(e.ids) == {"10.0.0.2": "blocked.test"}
    assert "cannot resolve blocked.test: no such host (keeping 1 earlier address(es))" in \
        reports[-1]


def test_unreadable_denyfile_at_start_raises(tmp_path):
    e, _, _ = make(tmp_path, "10.0.0.1\n")
    (tmp_path / "deny.txt").chmod(0o666)
    with pytest.raises(DenyFileError):
        e.start(0)


PROVIDER_HOSTS = {"api.openai.com": ["10.1.0.1"], "openai.com": ["10.1.0.2", "10.9.9.9"],
                  "api.anthropic.com": ["10.2.0.1", "10.9.9.9"], "mistral.ai": ["10.3.0.1"]}


def test_unapproved_providers_resolved_up_front(tmp_path):
    e, maps, reports = make(tmp_path, allow=["Anthropic"], hosts=PROVIDER_HOSTS)
    e.start(0)
    e.sync(maps)
    assert maps.rules(e.ids) == {"10.1.0.1": "provider:OpenAi not allowed",
                                 "10.1.0.2": "provider:OpenAi not allowed",
                                 "10.3.0.1": "provider:Mistral not allowed"}
    # the shared address stays open, and approved addresses guard the kernel's learning
    assert maps.rules(e.ids, "allow") == {"10.2.0.1": "provider:Anthropic allowed",
                                          "10.9.9.9": "provider:Anthropic allowed"}
    assert reports == ["resolved 4 of 5 provider hostnames up front; the rest are learned "
                       "from DNS answers read in the cgroup"]
    rid = e.ids.id(R("provider:OpenAi not allowed", "OpenAi"))
    assert maps.t["names"][egress.wire_name("api.openai.com")] == egress.NAME_VAL.pack(rid, 0)
    assert egress.wire_name("api.anthropic.com") not in maps.t["names"]


def test_deny_unclassified_allow_map(tmp_path):
    e, maps, _ = make(tmp_path, allow=["Anthropic"], deny_unclassified=True,
                      hosts=PROVIDER_HOSTS, servers=["10.53.0.1"])
    e.start(0)
    e.sync(maps)
    assert maps.rules(e.ids, "allow") == {"10.2.0.1": "provider:Anthropic allowed",
                                          "10.9.9.9": "provider:Anthropic allowed",
                                          "10.53.0.1": "policy:dns-server :53"}
    assert maps.t["servers"] == {egress.key_bytes(egress.key_of(ip("10.53.0.1"))): b"\x01"}
    rid = e.ids.id(R("provider:Anthropic allowed", "Anthropic"))
    assert maps.t["names"][egress.wire_name("api.anthropic.com")] == \
        egress.NAME_VAL.pack(rid, 1)


def answer(server: str, query: str, *answers: str) -> egress.DnsReply:
    return egress.DnsReply(ip(server), DnsAnswer(1, query, "A", list(answers)))


def test_dns_answers_learned(tmp_path):
    e, maps, _ = make(tmp_path, "blocked.test\n", allow=["Anthropic"], deny_unclassified=True,
                      servers=["10.53.0.1"])
    e.start(0)
    e.sync(maps)
    e.on_dns(answer("10.99.0.1", "eu.mistral.ai", "10.3.0.9"))             # any server: deny
    e.on_dns(answer("10.99.0.1", "x.example", "cdn.openai.com", "10.1.0.9"))  # via CNAME
    e.on_dns(answer("10.99.0.1", "blocked.test", "10.4.0.1"))              # a deny-file name
    e.on_dns(answer("10.99.0.1", "api.anthropic.com", "10.2.0.8"))         # untrusted: no
    e.on_dns(answer("10.53.0.1", "api.anthropic.com", "10.2.0.9"))         # trusted: allow
    e.on_dns(answer("10.53.0.1", "example.org", "10.5.0.1"))               # unclassified
    e.sync(maps)
    assert maps.rules(e.ids) == {"10.3.0.9": "provider:Mistral not allowed",
                                 "10.1.0.9": "provider:OpenAi not allowed",
                                 "10.4.0.1": "blocked.test"}
    assert maps.rules(e.ids, "allow") == {"10.2.0.9": "provider:Anthropic allowed",
                                          "10.53.0.1": "policy:dns-server :53"}


def test_kernel_learned_entries_are_reconciled(tmp_path):
    e, maps, _ = make(tmp_path, allow=["Anthropic"], hosts={"api.anthropic.com": ["10.2.0.1"]})
    e.start(0)
    e.sync(maps)
    # The kernel denied an answer for an unapproved name that user space knows is approved
    # (a forged answer naming Anthropic's address): the next sync removes it.
    rogue = egress.key_bytes(egress.key_of(ip("10.2.0.1")))
    maps.t["deny"][rogue] = egress.VAL.pack(7, 0, 0)
    e.on_dns(answer("10.99.0.1", "api.openai.com", "10.2.0.1"))
    e.sync(maps)
    assert rogue not in maps.t["deny"]


def test_learned_addresses_are_bounded(tmp_path):
    e, maps, _ = make(tmp_path, allow=["Anthropic"])
    e.max_learned = 3
    e.start(0)
    for i in range(10):
        e.on_dns(answer("10.99.0.1", "api.openai.com", f"10.1.1.{i}"))
    e.sync(maps)
    assert sorted(maps.rules(e.ids)) == ["10.1.1.7", "10.1.1.8", "10.1.1.9"]


def test_sync_writes_only_changes():
    class Counting(Maps):
        writes = 0

        def update(self, table, key, value):
            Counting.writes += 1
            super().update(table, key, value)

    e = enforce.Enforcer(watcher=None, providers=None, rules=RULES, servers=[],
                         pool=SyncPool({}), report=print)
    maps = Counting()
    e.sync(maps)
    e.dirty = True
    e.sync(maps)
    assert Counting.writes == 0
    assert struct.calcsize("<IHH") == egress.VAL.size


def test_example_controller_appends_unapproved_peers(tmp_path):
    import subprocess
    import sys

    import orjson

    def egress(peer, provider):
        return orjson.dumps({"provider": provider, "event": {"Egress": {
            "pid": 1, "peer": peer, "port": 443, "family": "ipv4", "sni": None}}}).decode()

    deny = tmp_path / "deny.txt"
    events = [egress("10.1.0.1", "OpenAi"), egress("10.2.0.1", "Anthropic"),
              egress("10.9.0.1", None), egress("10.1.0.1", "OpenAi"),
              egress("2001:db8::1", "Mistral"),
              orjson.dumps({"provider": None, "event": {"Dns": {}}}).decode()]
    script = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "controller.py"
    subprocess.run([sys.executable, str(script), str(deny), "Anthropic"], check=True,
                   input="\n".join(events) + "\n", text=True, timeout=30)
    assert deny.read_text() == "10.1.0.1  # OpenAi\n2001:db8::1  # Mistral\n"
    assert deny.stat().st_mode & 0o777 == 0o644
    rules, errors = parse_egress(deny.read_text())
    assert [str(r.value) for r in rules] == ["10.1.0.1", "2001:db8::1"] and errors == []
