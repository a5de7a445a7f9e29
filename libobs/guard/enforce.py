"""obs-enforce in user space: deciding what goes into the kernel's maps (the map layouts,
rule ids and records themselves are in libobs/guard/egress.py), and keeping them current.

The kernel side (bpf/enforce.bpf.c) looks destinations up in two hashes keyed by
(family, address): ``deny`` (refuse, naming a rule id) and ``allow`` (approved providers'
addresses: with --deny-unclassified the only non-loopback destinations that pass, otherwise
only a guard against denying them). Two more feed its DNS learning: ``names`` (listed
hostnames in wire format) and ``servers`` (trusted DNS servers). This module decides all
four from the policies (libobs.guard.policy), keeps rule ids stable so a refusal maps back to the
deny-file line or policy that caused it, and decodes the kernel's records into ``Denied``
events and DNS answers (libobs.net.dns).

Where the map contents come from, in order of precedence:

1. deny-file: literal addresses, hostnames resolved (A+AAAA) on each reload, and addresses a
   DNS answer read inside the cgroup gave for a listed hostname. Always denied.
2. providers (--allow-provider): every known provider hostname is resolved up front and again
   every ``REFRESH_S``; DNS answers read inside the cgroup add more. An address of an approved
   provider is never denied for belonging to an unapproved one too (a shared CDN address):
   IP-level enforcement cannot tell them apart, and breaking the approved provider is worse.
3. allow mode (--deny-unclassified): approved providers' addresses, and the trusted DNS
   servers on port 53. Loopback always passes (local services are not egress).

DNS answers are learned twice. The kernel adds the A/AAAA answers to a question that is
exactly a listed name (the ``names`` map) before the socket receives the reply, so the
connect() that follows the lookup already meets them; user space then parses every reply
(suffixes, CNAME chains) and reconciles the maps. Only answers from a trusted DNS server may
add to the allow map: anything in the cgroup could otherwise answer itself
"api.anthropic.com is 203.0.113.9" and open a hole. Any port-53 answer may add denials: a
forged one can only make the cage stricter.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from libobs.guard.denyfile import (
    DenyFileError,
    DenyFileWatcher,
    EgressRule,
    Update,
    line_errors_text,
    parse_egress,
)
from libobs.guard.egress import (
    GUARD,
    NAME_VAL,
    TABLES,
    TRUSTED,
    VAL,
    DnsReply,
    Entry,
    Rule,
    RuleIds,
    diff,
    key_bytes,
    key_of,
    plan_maps,
    plan_names,
)
from libobs.guard.policy import DenyListPolicy, IPAddress, ProviderPolicy, ProviderRules, Resolver
from libobs.guard.policy import resolve as resolve_host
from libobs.kernel import bpflink

REFRESH_S = 300.0        # re-resolve every hostname this often (addresses move)
MAX_LEARNED = 16384      # DNS-learned addresses kept per kind (LRU)

# ---- inputs: DNS servers -------------------------------------------------------
def nameservers(text: str) -> list[IPAddress]:
    """The ``nameserver`` addresses of a resolv.conf (a %zone suffix is dropped)."""
    out: list[IPAddress] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                out.append(ipaddress.ip_address(parts[1].split("%")[0]))
            except ValueError:
                continue
    return out


# ---- resolution off the main loop ----------------------------------------------------------
Resolved = list[IPAddress] | str  # addresses, or why not


class ResolverPool:
    """getaddrinfo on daemon threads: a slow DNS server never stalls the loop, and a hung
    lookup never delays exit."""

    def __init__(self, resolve: Resolver = resolve_host, workers: int = 8):
        self._resolve = resolve
        self._todo: queue.Queue[str] = queue.Queue()
        self._done: queue.Queue[tuple[str, Resolved]] = queue.Queue()
        self._pending: set[str] = set()
        for i in range(workers):
            threading.Thread(target=self._work, name=f"obs-resolve-{i}", daemon=True).start()

    def _work(self) -> None:
        while True:
            name = self._todo.get()
            try:
                result: Resolved = list(self._resolve(name))
            except (OSError, UnicodeError) as e:
                result = str(e) or type(e).__name__
            self._done.put((name, result))

    def submit(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self._pending:
                self._pending.add(name)
                self._todo.put(name)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def collect(self, timeout: float = 0.0) -> list[tuple[str, Resolved]]:
        """Finished lookups; waits up to ``timeout`` for all pending ones."""
        deadline = time.monotonic() + timeout
        out: list[tuple[str, Resolved]] = []
        while self._pending:
            try:
                wait = max(0.0, deadline - time.monotonic())
                item = self._done.get(timeout=wait) if wait else self._done.get_nowait()
            except queue.Empty:
                break
            self._pending.discard(item[0])
            out.append(item)
        return out


class Lookups(Protocol):
    """What the Enforcer needs of a ResolverPool (tests pass a synchronous one)."""

    def submit(self, names: Iterable[str]) -> None: ...

    def collect(self, timeout: float = 0.0) -> list[tuple[str, Resolved]]: ...


class MapWriter(Protocol):
    def update(self, table: str, key: bytes, value: bytes) -> None: ...

    def delete(self, table: str, key: bytes) -> None: ...


class Enforcer:
    """Keeps the kernel's maps equal to what the policies say as inputs change: deny-file
    reloads, finished lookups, DNS answers read inside the cgroup."""

    def __init__(self, *, watcher: DenyFileWatcher[EgressRule] | None,
                 providers: ProviderPolicy | None, rules: ProviderRules,
                 servers: list[IPAddress], pool: Lookups,
                 report: Callable[[str], None], max_learned: int = MAX_LEARNED):
        self.watcher, self.providers, self.rules = watcher, providers, rules
        self.servers, self.pool, self.report = servers, pool, report
        self.allow_mode = bool(providers and providers.deny_unclassified)
        self.ids = RuleIds()
        self.max_learned = max_learned
        self.denylist = DenyListPolicy(guard=GUARD)
        self._egress: list[EgressRule] = []
        self._resolved: dict[str, list[IPAddress]] = {}   # last good lookup per hostname
        self._host_rules: dict[str, tuple[bool, Rule] | None] = {}
        self._learned_lines: OrderedDict[IPAddress, Rule] = OrderedDict()
        # (address, provider hostname) seen in DNS answers -> whether a trusted server said so
        self._learned_hosts: OrderedDict[tuple[IPAddress, str], bool] = OrderedDict()
        self._current: dict[str, dict[bytes, bytes]] = {t: {} for t in TABLES}
        self._full: set[str] = set()
        self._next_refresh = 0.0
        self.dirty = True

    # -- inputs
    def provider_hostnames(self) -> list[str]:
        if self.providers is None:
            return []
        approved = [h for p in sorted(self.providers.allowed) for h in self.rules.hostnames(p)]
        return list(dict.fromkeys(approved + self.providers.unapproved_hostnames()))

    def start(self, wait: float) -> None:
        """First deny-file read (DenyFileError if unusable) and up-front lookups, waiting up to
        ``wait`` seconds so the guard is complete from the first connection."""
        if self.watcher is not None:
            update = self.watcher.poll()
            if update is not None and update.error:
                raise DenyFileError(update.error)
            if update is not None:
                self._reload(update)
        self.pool.submit(self._hostnames())
        self._take(self.pool.collect(wait))
        self._next_refresh = time.monotonic() + REFRESH_S
        names = self.provider_hostnames()
        if names:
            found = [h for h in names if self._resolved.get(h)]
            self.report(f"resolved {len(found)} of {len(names)} provider hostnames up front; "
                        "the rest are learned from DNS answers read in the cgroup")

    def tick(self, now: float) -> None:
        if self.watcher is not None:
            update = self.watcher.poll()
            if update is not None:
                self._reload(update)
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH_S
            self.pool.submit(self._hostnames())
        self._take(self.pool.collect())

    def _hostnames(self) -> list[str]:
        names = [str(r.value) for r in self._egress if r.kind == "host"]
        return list(dict.fromkeys(names + self.provider_hostnames()))

    def _reload(self, update: Update[EgressRule]) -> None:
        if update.error:
            self.report(f"{update.error}; keeping the previous policy")
            return
        for line in line_errors_text(self._path, update.errors):
            self.report(line)
        self._egress = update.rules
        self._learned_lines.clear()  # learned for the old lines; re-learned for the new ones
        self._rebuild_denylist()
        self.pool.submit(str(r.value) for r in update.rules if r.kind == "host")

    @property
    def _path(self) -> str:
        return self.watcher.path if self.watcher else "deny-file"

    def _rebuild_denylist(self) -> None:
        def cached(host: str) -> list[IPAddress]:
            if host not in self._resolved:
                raise OSError("not resolved yet")
            return self._resolved[host]

        self.denylist = DenyListPolicy(self._egress, resolver=cached, guard=GUARD)
        self.dirty = True

    def _take(self, results: list[tuple[str, Resolved]]) -> None:
        lines = {str(r.value): r for r in self._egress if r.kind == "host"}
        changed = False
        for host, result in results:
            if isinstance(result, str):
                if host in lines:
                    kept = len(self._resolved.get(host, []))
                    self.report(f"{self._path}:{lines[host].lineno}: cannot resolve {host}: "
                                f"{result} (keeping {kept} earlier address(es))")
                continue
            if self._resolved.get(host) != result:
                self._resolved[host] = result
                changed = True
        if changed:
            self._rebuild_denylist()

    def on_dns(self, reply: DnsReply) -> None:
        """Learn from a DNS answer read inside the cgroup (see the module docstring)."""
        ips, names = [], [reply.answer.query]
        for a in reply.answer.answers:
            try:
                ips.append(ipaddress.ip_address(a))
            except ValueError:
                names.append(a)  # a CNAME target: the chain may name a provider
        if not ips:
            return
        for ip in ips:
            # The kernel may have added these itself: have the next sync check them.
            for table in ("deny", "allow"):
                self._current[table].setdefault(key_bytes(key_of(ip)), b"")
            for name in names:
                v = self.denylist.egress(ip, 0, name)
                if not v.allow and v.rule is not None:
                    _lru_put(self._learned_lines, ip, Rule(v.rule), self.max_learned)
                    break
        self.dirty = True
        host = next((n for n in names if self._host_rule(n)), None)
        if host is None:
            return
        trusted = key_of(reply.server) in {key_of(s) for s in self.servers}
        for ip in ips:
            before = self._learned_hosts.get((ip, host), False)
            _lru_put(self._learned_hosts, (ip, host), before or trusted, self.max_learned)

    # -- output
    def _host_rule(self, host: str) -> tuple[bool, Rule] | None:
        """(approved, rule) for a provider's hostname; None if it is no provider's."""
        if self.providers is None:
            return None
        if host not in self._host_rules:
            provider = self.rules.classify(host)
            hit = None
            if provider is not None:
                v = self.providers.egress(_ANY, 0, host)  # with a host, the address is unused
                hit = v.allow, Rule(v.rule or f"provider:{provider}", provider)
            self._host_rules[host] = hit
        return self._host_rules[host]

    def _provider_addresses(self) -> tuple[list[tuple[IPAddress, Rule]],
                                           list[tuple[IPAddress, Rule]]]:
        """(unapproved, approved) addresses with the rule that names them. Up-front lookups
        are trusted; an answer read inside the cgroup only if a trusted server sent it:
        untrusted answers may add denials, never allowances."""
        unapproved: list[tuple[IPAddress, Rule]] = []
        approved: list[tuple[IPAddress, Rule]] = []
        pairs = [(ip, h, True) for h in self.provider_hostnames()
                 for ip in self._resolved.get(h, [])]
        pairs += [(ip, h, trusted) for (ip, h), trusted in self._learned_hosts.items()]
        for ip, host, trusted in pairs:
            hit = self._host_rule(host)
            if hit is None:
                continue
            ok, rule = hit
            if not ok:
                unapproved.append((ip, rule))
            elif trusted:
                approved.append((ip, rule))
        return unapproved, approved

    def desired(self) -> dict[str, dict[bytes, bytes]]:
        """Every map's contents, packed as the kernel reads them."""
        lines = [(ip, Rule(line)) for ip, line in sorted(self.denylist.ip_rules(), key=_order)]
        lines += list(self._learned_lines.items())
        unapproved, approved = self._provider_addresses()
        servers = [(ip, Rule("policy:dns-server")) for ip in self.servers]
        deny, allow = plan_maps(lines, unapproved, approved, servers, self.allow_mode)
        hosts = [(str(r.value), Rule(r.line)) for r in self._egress if r.kind == "host"]
        providers = [(h, hit[1], hit[0]) for h in self.provider_hostnames()
                     if (hit := self._host_rule(h)) is not None]
        names = plan_names(hosts, providers, self.allow_mode)
        return {
            "deny": {key_bytes(k): self._val(e) for k, e in deny.items()},
            "allow": {key_bytes(k): self._val(e) for k, e in allow.items()},
            "names": {k: NAME_VAL.pack(self.ids.id(r), ok) for k, (r, ok) in names.items()},
            "servers": {key_bytes(key_of(ip)): TRUSTED for ip in self.servers},
        }

    def _val(self, e: Entry) -> bytes:
        return VAL.pack(self.ids.id(e.rule), e.port, 0)

    def sync(self, maps: MapWriter) -> None:
        """Write what changed: new and changed entries first, then deletions, so an address
        that stays listed is never briefly absent."""
        if not self.dirty:
            return
        self.dirty = False
        for table, want in self.desired().items():
            current = self._current[table]
            upserts, deletes = diff(current, want)
            for k, v in upserts.items():
                try:
                    maps.update(table, k, v)
                except Exception as e:  # map full: the rest of the policy still applies
                    if table not in self._full:
                        self.report(f"cannot add to the {table} map (full?): {e}")
                    self._full.add(table)
                    continue
                current[k] = v
            for k in deletes:
                maps.delete(table, k)
                del current[k]


_ANY = ipaddress.IPv4Address(0)


def _order(item: tuple[IPAddress, str]) -> tuple[int, int]:
    return item[0].version, int(item[0])


def _lru_put(cache: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


def denyfile_watcher(path: Path) -> DenyFileWatcher[EgressRule]:
    return DenyFileWatcher(path, parse_egress, interval=0.5)


# ---- the kernel side: maps, programs, links ------------------------------------------------
class BccMaps:
    """MapWriter over a loaded program's hashes."""

    def __init__(self, bpf: Any):
        self.bpf = bpf

    def update(self, table: str, key: bytes, value: bytes) -> None:
        t = self.bpf[table.encode()]
        t[t.Key.from_buffer_copy(key)] = t.Leaf.from_buffer_copy(value)

    def delete(self, table: str, key: bytes) -> None:
        t = self.bpf[table.encode()]
        with contextlib.suppress(KeyError):
            del t[t.Key.from_buffer_copy(key)]


GUARD_PROGRAMS = (
    ("connect4", "enforce_connect4", bpflink.CGROUP_INET4_CONNECT),
    ("connect6", "enforce_connect6", bpflink.CGROUP_INET6_CONNECT),
    ("sendmsg4", "enforce_sendmsg4", bpflink.CGROUP_UDP4_SENDMSG),
    ("sendmsg6", "enforce_sendmsg6", bpflink.CGROUP_UDP6_SENDMSG),
)


def pin_dir(cgroup: Path) -> Path:
    """Where --pin keeps the links: one directory per cgroup id (its inode number)."""
    return bpflink.BPFFS / "obs" / str(os.stat(cgroup).st_ino)


def attach(bpf: Any, cgroup: Path, pins: Path | None) -> list[bpflink.Link]:
    """Load and attach the four guards and the DNS reader to ``cgroup`` through links.
    With ``pins``, the guards' links are pinned there (or atomically updated if they are);
    the DNS reader is never pinned: nobody would read its records."""
    from bcc import BPF

    links: list[bpflink.Link] = []
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name, func, attach_type in GUARD_PROGRAMS:
            fn = bpf.load_func(func, BPF.CGROUP_SOCK_ADDR, None, attach_type)
            pin = pins / name if pins is not None else None
            links.append(bpflink.attach(name, fn.fd, fd, attach_type, pin))
        fn = bpf.load_func("enforce_dns", BPF.CGROUP_SKB, None, bpflink.CGROUP_INET_INGRESS)
        links.append(bpflink.attach("dns", fn.fd, fd, bpflink.CGROUP_INET_INGRESS))
    except BaseException:
        for link in links:
            link.close()
        raise
    finally:
        os.close(fd)
    return links
