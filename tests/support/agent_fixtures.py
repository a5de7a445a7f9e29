"""Fixtures of what the real agents send: captured by the stand-in, made small and safe.

`python -m tests.support.agent_fixtures` runs each installed agent once against the stand-in
with --capture and writes tests/fixtures/agents/<agent>.json. Sanitising keeps every request's
structure (paths with query strings, header names and order, JSON keys, model, stream, tool
names, message roles) and shrinks long strings (system prompts, tool descriptions), so the
bodies stay valid JSON a decoder can read; credentials were already redacted by the server,
and the run's temporary paths are replaced. `wire()` rebuilds the bytes a TLS library saw.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "agents"
MAX_STR = 120
_TMP = re.compile(r"/tmp/obs-(claude|codex|gemini)-[a-z0-9_]+")
KEEP = ("method", "path", "version", "model_call", "api", "stream", "tool_call", "websocket",
        "client_port", "request_model", "model", "prompt_tokens", "completion_tokens",
        "cache_read_tokens", "cache_creation_tokens")


def shrink(v: Any) -> Any:
    """Long strings cut to MAX_STR characters (marked), everything else kept."""
    if isinstance(v, str):
        v = _TMP.sub(r"/tmp/obs-\1-RUN", v)
        return v if len(v) <= MAX_STR else v[:MAX_STR] + f"…[{len(v)} chars]"
    if isinstance(v, list):
        return [shrink(x) for x in v]
    if isinstance(v, dict):
        return {k: shrink(x) for k, x in v.items()}
    return v


def sanitize(cap: dict[str, Any]) -> dict[str, Any]:
    """One captured exchange → its fixture form."""
    raw = base64.b64decode(cap["body_b64"])
    try:
        body: Any = shrink(json.loads(raw))
    except ValueError:
        body = raw.decode("utf-8", "replace")[:MAX_STR] if raw else None
    headers = [(k, _TMP.sub(r"/tmp/obs-\1-RUN", v)) for k, v in cap["headers"]]
    response = [base64.b64decode(x).decode("utf-8") for x in cap["response_b64"]]
    return {**{k: cap.get(k) for k in KEEP}, "original_req_body": cap["req_body"],
            "headers": headers, "body": body, "response": response}


def wire(ex: dict[str, Any]) -> tuple[bytes, list[bytes]]:
    """(request bytes, response pieces as the server wrote them) of a fixture exchange;
    Content-Length follows the sanitised body."""
    body = (json.dumps(ex["body"]).encode() if isinstance(ex["body"], (dict, list))
            else (ex["body"] or "").encode())
    lines = [f"{ex['method']} {ex['path']} {ex['version']}"]
    for k, v in ex["headers"]:
        if k.lower() == "content-length":
            v = str(len(body))
        lines.append(f"{k}: {v}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + body, [p.encode() for p in ex["response"]]


def capture(agent: str) -> dict[str, Any]:
    from tests.support.agents import installed, run_agent

    version, exe = installed()[agent]
    with tempfile.TemporaryDirectory() as tmp:
        run = run_agent(agent, exe, capture=Path(tmp))
        caps = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("*.json"))]
    return {"agent": agent, "version": version, "status": run.status,
            "exchanges": [sanitize(c) for c in sorted(caps, key=lambda c: c["t_req"])]}


def main() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for agent in sys.argv[1:] or ("claude", "codex", "gemini"):
        fx = capture(agent)
        (FIXTURES / f"{agent}.json").write_text(json.dumps(fx, indent=1, ensure_ascii=False) + "\n")
        print(agent, fx["version"], len(fx["exchanges"]), "exchanges")


if __name__ == "__main__":
    main()
