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

from collections.abc import Callable
from typing import Any

NS = 1_000_000_000
MAX_TS = 1 << 63  # ns since the epoch as an i64: year 2262
MAX_SECS = MAX_TS // NS  # a duration fits in i64 nanoseconds
MAX_DEPTH = 64  # well-formed events nest about 4 deep; orjson writes at most 254

Check = Callable[[Any], bool]


def _str(v: Any) -> bool:
    return type(v) is str


def _int(v: Any) -> bool:
    return type(v) is int  # not bool, not a float (which an integer beyond 64 bits becomes)


def _bool(v: Any) -> bool:
    return type(v) is bool


def _int_or_str(v: Any) -> bool:
    return type(v) is int or type(v) is str


def _number(v: Any) -> bool:
    return type(v) is int or type(v) is float


def _list(v: Any) -> bool:
    return type(v) is list


def _object(v: Any) -> bool:
    return type(v) is dict


def _strs(v: Any) -> bool:
    return type(v) is list and all(type(x) is str for x in v)


def _duration(v: Any) -> bool:
    if type(v) is not dict:
        return False
    secs, nanos = v.get("secs"), v.get("nanos")
    return (type(secs) is int and 0 <= secs <= MAX_SECS
            and type(nanos) is int and 0 <= nanos < NS)


_WHAT: dict[Check, str] = {_str: "a string", _int: "an integer", _bool: "a boolean", _int_or_str:
         "an integer or a string", _number: "a number", _list: "a list", _object: "an object",
         _strs: "a list of strings", _duration: "a duration {secs, nanos}"}

IDENTITY: dict[str, Check] = {"agent": _str, "task": _str, "session": _str}
PROCESS: dict[str, Check] = {
    "pid": _int, "ppid": _int, "comm": _str, "uid": _int, "cgroup_id": _int,
    "container_id": _str, "pod_uid": _str, "cgroup": _str, "netns": _int_or_str}
_PID = {"pid": _int}
FIELDS: dict[str, dict[str, Check]] = {
    "ToolExec": {**_PID, "ppid": _int, "uid": _int, "comm": _str, "filename": _str,
                 "argv": _strs, "argv_truncated": _bool, "cwd": _str},
    "ProcessExit": {**_PID, "ppid": _int, "comm": _str, "exit_code": _int, "signal": _int,
                    "core_dumped": _bool, "duration": _duration},
    "SecurityAction": {**_PID, "kind": _str, "detail": _str},
    "FileAccess": {**_PID, "path": _str, "write": _bool, "flags": _int_or_str},
    "FileDelete": {**_PID, "path": _str},
    "Egress": {**_PID, "peer": _str, "port": _int, "family": _str, "sni": _str, "proto": _str,
               "hostname": _str, "netns": _int_or_str},
    "Dns": {**_PID, "query": _str, "qtype": _int_or_str, "server": _str, "answers": _strs,
            "proto": _str, "netns": _int_or_str},
    "LlmCall": {**_PID, "sni": _str, "peer": _str, "port": _int, "req_bytes": _int,
                "resp_bytes": _int, "latency": _duration, "ttft": _duration, "model": _str,
                "prompt_tokens": _int, "completion_tokens": _int, "exchange": _int},
    "SslContent": {**_PID, "tid": _int, "is_read": _bool, "content": _str, "len": _int,
                   "truncated": _bool, "lib": _str},
    "LlmApi": {**_PID, "is_request": _bool, "model": _str, "prompt_tokens": _int,
               "completion_tokens": _int, "cache_read_tokens": _int,
               "cache_creation_tokens": _int, "stream": _bool, "path": _str},
    "Denied": {**_PID, "action": _str, "target": _str, "rule": _str, "guard": _str,
               "protocol": _str},
    "CollectorHeartbeat": {
        "collector_id": _str, "tool": _str, "version": _str, "node_name": _str,
        "attached_probes": _strs, "enabled_features": _strs, "interval_secs": _number,
        "counts": _object, "dropped": _int, "output_dropped": _int},
}


def _fields(obj: dict[str, Any], checks: dict[str, Check], where: str) -> str | None:
    for key, ok in checks.items():
        value = obj.get(key)
        if value is not None and not ok(value):
            return f"{where}{key} is {_name(value)}, not {_WHAT[ok]}"
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
        if value is not None and type(value) is not str:
            return f"{key} is {_name(value)}, not a string"
    for key, checks in (("identity", IDENTITY), ("process", PROCESS)):
        value = ev.get(key)
        if value is None:
            continue
        if type(value) is not dict:
            return f"{key} is {_name(value)}, not an object"
        why = _fields(value, checks, f"{key}.")
        if why:
            return why
    body = ev["event"][kind]
    if type(body) is not dict:
        return f"{kind[:64]} fields are {_name(body)}, not an object"
    fields = FIELDS.get(kind)
    return _fields(body, fields, f"{kind}.") if fields else None
