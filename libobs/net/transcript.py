"""Token usage from the transcripts agents write about themselves (pure parsers).

Two formats, one line at a time:

    Codex CLI    $CODEX_HOME/sessions/YYYY/MM/DD/rollout-*.jsonl
                 {"timestamp": "…Z", "type": T, "payload": {…}} where T is
                 turn_context        payload.model: the model the turn is configured with
                 token_usage_record  payload.usage: one model response's usage (newer releases,
                                     written as the response completes)
                 event_msg           payload.type == "token_count": info.last_token_usage (every
                                     release; after the tool the response asked for has run)
    Claude Code  ~/.claude/projects/<project>/<session>.jsonl
                 {"type": "assistant", "timestamp": "…Z", "requestId", "message": {"id", "model",
                 "usage"}}, one line per content block of a message, each with its usage:
                 a repeat of the line before (same id and request id) is the same message.

A rollout holds both a token_usage_record and a token_count for one response: once a file has
shown a token_usage_record, its token_counts are skipped (CodexState); a token_count whose
running total did not grow is a repeat (Codex also sends one on rate-limit news).

The model is what the agent was configured with (Codex) or what the transcript says the message
came from (Claude Code) — not what a server named on the wire. Codex writes
cache_write_input_tokens 0 when the API said nothing (OpenAI's Responses API never does): a 0
there is read as unknown (null), a non-zero count is kept.

Nothing here raises: any bytes give a Usage, None (a line that carries no usage) or Bad (a line
that should have, or is not JSON at all), so a caller can count what it could not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

CODEX = "codex"
CLAUDE = "claude"
# Cheap pre-filter: only lines naming one of these are parsed as JSON (a rollout is mostly
# messages and tool output, which are long and carry no usage).
_CODEX_KEYS = (b'"turn_context"', b'"token_usage_record"', b'"token_count"')
_CLAUDE_KEYS = (b'"usage"',)


@dataclass(frozen=True)
class Usage:
    ts: int                   # wall ns the agent stamped on the line
    fields: dict[str, Any]    # model, prompt_tokens, completion_tokens, cache_*_tokens
    key: str | None = None    # Claude Code: the message id (its lines repeat one usage)


@dataclass(frozen=True)
class Bad:
    reason: str


@dataclass
class CodexState:
    """What one rollout file's earlier lines tell about its later ones."""
    model: str | None = None
    records: bool = False                  # has shown a token_usage_record
    last_total: tuple[int, ...] | None = None


@dataclass
class ClaudeState:
    last: tuple[Any, ...] | None = None  # the last usage line's message (see claude_line)


Result = Usage | Bad | None


def wall_ns(stamp: Any) -> int | None:
    """"2026-12-02T06:34:41.535Z" (RFC 3339, any offset) → ns since the epoch, else None."""
    if not isinstance(stamp, str) or not 10 <= len(stamp) <= 40:
        return None
    try:
        t = datetime.fromisoformat(stamp.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        return None
    try:
        return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000
    except (OverflowError, OSError, ValueError):
        return None


def _count(d: Any, key: str) -> int | None:
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 else None


def _json(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return Bad("not JSON")


def _codex_usage(u: Any, model: str | None) -> dict[str, Any] | None:
    if not isinstance(u, dict) or _count(u, "input_tokens") is None:
        return None
    write = _count(u, "cache_write_input_tokens")
    return {"model": model, "prompt_tokens": _count(u, "input_tokens"),
            "completion_tokens": _count(u, "output_tokens"),
            "cache_read_tokens": _count(u, "cached_input_tokens"),
            "cache_creation_tokens": write or None}


def codex_line(line: bytes, state: CodexState) -> Result:
    """One line of a Codex rollout; updates `state` (model, which usage lines count)."""
    if not any(k in line for k in _CODEX_KEYS):
        return None
    obj = _json(line)
    if isinstance(obj, Bad):
        return obj
    if not isinstance(obj, dict) or not isinstance(obj.get("payload"), dict):
        return Bad("no payload")
    kind, p = obj.get("type"), obj["payload"]
    if kind == "turn_context":
        model = p.get("model")
        state.model = model if isinstance(model, str) and model else None
        return None
    if kind == "token_usage_record":
        usage, state.records = p.get("usage"), True
    elif kind == "event_msg" and p.get("type") == "token_count":
        info = p.get("info")
        if state.records or not isinstance(info, dict):
            return None  # covered by token_usage_records, or rate-limit news only
        total = info.get("total_token_usage")
        key = tuple(_count(total, k) or 0 for k in ("input_tokens", "output_tokens",
                                                     "cached_input_tokens"))
        if key == state.last_total:
            return None  # a repeat: no model call since the last one
        state.last_total, usage = key, info.get("last_token_usage")
    else:
        return None  # a message quoting one of the key words
    ts = wall_ns(obj.get("timestamp"))
    fields = _codex_usage(usage, state.model)
    if ts is None or fields is None:
        return Bad("usage line without a timestamp or input_tokens")
    return Usage(ts, fields)


def claude_line(line: bytes, state: ClaudeState) -> Result:
    """One line of a Claude Code project transcript; a message's usage is given once."""
    if not any(k in line for k in _CLAUDE_KEYS):
        return None
    obj = _json(line)
    if isinstance(obj, Bad):
        return obj
    if not isinstance(obj, dict) or obj.get("type") != "assistant":
        return None
    msg = obj.get("message")
    if not isinstance(msg, dict) or not isinstance(msg.get("usage"), dict):
        return Bad("assistant line without message.usage")
    u, mid, model = msg["usage"], msg.get("id"), msg.get("model")
    if not isinstance(mid, str) or model == "<synthetic>":
        return None  # written by Claude Code itself (errors, interruptions), not a model
    ts = wall_ns(obj.get("timestamp"))
    fields = {"model": model if isinstance(model, str) and model else None,
              "prompt_tokens": _count(u, "input_tokens"),
              "completion_tokens": _count(u, "output_tokens"),
              "cache_read_tokens": _count(u, "cache_read_input_tokens"),
              "cache_creation_tokens": _count(u, "cache_creation_input_tokens")}
    # A message's content blocks follow one another, each line with the message's id and
    # usage; the API's request id tells messages apart (a server without one: the usage).
    rid = obj.get("requestId")
    key = (mid, rid) if isinstance(rid, str) else (mid, *fields.values())
    if key == state.last:
        return None
    state.last = key
    if ts is None or fields["prompt_tokens"] is None:
        return Bad("usage line without a timestamp or input_tokens")
    return Usage(ts, fields, mid)


def parse_line(kind: str, line: bytes, state: Any) -> Result:
    return codex_line(line, state) if kind == CODEX else claude_line(line, state)


def new_state(kind: str) -> CodexState | ClaudeState:
    return CodexState() if kind == CODEX else ClaudeState()
