"""The shape of a well-formed obs event, checked once, when a line is decoded.

Everything downstream (reorder, dedup, joins, the process tree, the summary, the human sink)
takes the contract's types for granted: a `host` used as a dict key, a `comm` sorted among
other comms, a duration turned into milliseconds. So a line that is JSON but not a
well-formed event (a list where the contract has a string, `{"secs": 1e308}`, a float pid,
nesting deeper than any encoder takes back) is refused here with a reason, and reported and
skipped by the caller instead of breaking the stream later.

Null or absent is always accepted for a field (producers write null for what they cannot
know); fields the contract does not name pass through unchecked, since the sinks render any
JSON value. orjson already refuses NaN, infinities and lone surrogates, and turns integers
beyond 64 bits into floats, which the integer checks below refuse.
"""

from __future__ import annotations

from typing import Any

from libobs.events import NS

MAX_TS = 1 << 63  # ns since the epoch as an i64: year 2262
MAX_SECS = MAX_TS // NS  # a duration fits in i64 nanoseconds
MAX_DEPTH = 64  # well-formed events nest about 4 deep; orjson writes at most 254

class Want(frozenset[type]):
    """The types a field may have (null always), and how to say so. A set, so the common case
    is one `type(v) in want` per field: this runs for every line of every source."""

    what: str

    def __new__(cls, what: str, *types: type) -> Want:
        self = super().__new__(cls, (*types, type(None)))
        self.what = what
        return self


_STR = Want("a string", str)
_INT = Want("an integer", int)  # not bool, not a float (which an integer beyond 64 bits becomes)
_BOOL = Want("a boolean", bool)
_INT_OR_STR = Want("an integer or a string", int, str)
_NUMBER = Want("a number", int, float)
_OBJECT = Want("an object", dict)
_STRS = Want("a list of strings")  # checked item by item
_DURATION = Want("a duration {secs, nanos}")  # checked field by field


def _duration(v: Any) -> bool:
    if type(v) is not dict:
        return False
    secs, nanos = v.get("secs"), v.get("nanos")
    return (type(secs) is int and 0 <= secs <= MAX_SECS
            and type(nanos) is int and 0 <= nanos < NS)


IDENTITY: dict[str, Want] = {"agent": _STR, "task": _STR, "session": _STR}
assert set(IDENTITY.values()) == {_STR}  # problem() checks identity in one pass for that
PROCESS: dict[str, Want] = {
    "pid": _INT, "ppid": _INT, "comm": _STR, "uid": _INT, "cgroup_id": _INT,
    "container_id": _STR, "pod_uid": _STR, "cgroup": _STR, "netns": _INT_OR_STR}
_PID = {"pid": _INT}
FIELDS: dict[str, dict[str, Want]] = {
    "ToolExec": {**_PID, "ppid": _INT, "uid": _INT, "comm": _STR, "filename": _STR,
                 "argv": _STRS, "argv_truncated": _BOOL, "cwd": _STR},
    "ProcessExit": {**_PID, "ppid": _INT, "comm": _STR, "exit_code": _INT, "signal": _INT,
                    "core_dumped": _BOOL, "duration": _DURATION},
    "SecurityAction": {**_PID, "kind": _STR, "detail": _STR},
    "FileAccess": {**_PID, "path": _STR, "write": _BOOL, "flags": _INT_OR_STR},
    "FileDelete": {**_PID, "path": _STR},
    "Egress": {**_PID, "peer": _STR, "port": _INT, "family": _STR, "sni": _STR, "proto": _STR,
               "hostname": _STR, "netns": _INT_OR_STR},
    "Dns": {**_PID, "query": _STR, "qtype": _INT_OR_STR, "server": _STR, "answers": _STRS,
            "proto": _STR, "netns": _INT_OR_STR},
    "LlmCall": {**_PID, "sni": _STR, "peer": _STR, "port": _INT, "req_bytes": _INT,
                "resp_bytes": _INT, "latency": _DURATION, "ttft": _DURATION, "model": _STR,
                "prompt_tokens": _INT, "completion_tokens": _INT, "exchange": _INT},
    "SslContent": {**_PID, "tid": _INT, "is_read": _BOOL, "content": _STR, "len": _INT,
                   "truncated": _BOOL, "lib": _STR},
    "LlmApi": {**_PID, "is_request": _BOOL, "model": _STR, "prompt_tokens": _INT,
               "completion_tokens": _INT, "cache_read_tokens": _INT,
               "cache_creation_tokens": _INT, "stream": _BOOL, "path": _STR},
    "Denied": {**_PID, "action": _STR, "target": _STR, "rule": _STR, "guard": _STR,
               "protocol": _STR},
    "CollectorHeartbeat": {
        "collector_id": _STR, "tool": _STR, "version": _STR, "node_name": _STR,
        "attached_probes": _STRS, "enabled_features": _STRS, "interval_secs": _NUMBER,
        "counts": _OBJECT, "dropped": _INT, "output_dropped": _INT, "unreadable": _INT,
        "programs_cached": _INT, "programs_compiled": _INT},
}


def _fields(obj: dict[str, Any], wants: dict[str, Want], where: str) -> str | None:
    for key, value in obj.items():
        want = wants.get(key)
        if want is None or type(value) in want:
            continue
        if want is _STRS and type(value) is list and all(type(x) is str for x in value):
            continue
        if want is _DURATION and _duration(value):
            continue
        return f"{where}{key} is {_name(value)}, not {want.what}"
    return None


def _name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def depth(v: Any) -> int:
    """How deeply lists and objects nest in `v` (a scalar is 0)."""
    todo, deepest = [(v, 1)], 0
    while todo:
        item, d = todo.pop()
        children = item.values() if type(item) is dict else item if type(item) is list else None
        if children is None:
            continue
        deepest = max(deepest, d)
        todo.extend((c, d + 1) for c in children if type(c) in (dict, list))
    return deepest


def problem(ev: dict[str, Any], kind: str) -> str | None:
    """Why `ev` (a JSON object whose single event kind is `kind`) is not a well-formed obs
    event, or None. The caller has checked `ts` and found the kind."""
    ts = ev["ts"]
    if not 0 <= ts < MAX_TS:
        return f"ts {ts} is out of range"
    for key in ("host", "provider"):
        value = ev.get(key)
        if type(value) not in _STR:
            return f"{key} is {_name(value)}, not a string"
    for key, wants in (("identity", IDENTITY), ("process", PROCESS)):
        value = ev.get(key)
        if value is None:
            continue
        if type(value) is not dict:
            return f"{key} is {_name(value)}, not an object"
        if wants is IDENTITY and _STR.issuperset(map(type, value.values())):
            continue  # every identity field is a string or null: one pass in C says so
        why = _fields(value, wants, f"{key}.")
        if why:
            return why
    body = ev["event"][kind]
    if type(body) is not dict:
        return f"{kind[:64]} fields are {_name(body)}, not an object"
    fields = FIELDS.get(kind)
    return _fields(body, fields, f"{kind}.") if fields else None
