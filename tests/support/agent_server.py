"""A local TLS stand-in of the three providers for the real agents (Claude Code, Codex, Gemini).

Runs as its own process, normally inside the agent's network namespace, on port 443 of
provider_server.HOSTS' addresses (the agents reach it by the providers' own hostnames through a
hosts file). Beyond provider_server's JSON/SSE bodies it plays one agent turn:

- a model request whose tools include a shell tool and whose conversation holds no tool result
  is answered with a call of that tool (in the provider's format) running `--command`;
- every other model request is answered with plain text.

Each answered request waits `--delay` ms before its first byte and is logged (one JSON line,
written before the next request on that connection can start) with the server's own clock:
monotonic ns of request end (`t_req`), of the first response write's start and return
(`t_first`, `t_first_done`) and of the last one's (`t_last_start`, `t_last`: the client's kernel
receives each write's bytes between the two, however late a loaded server reads its clock),
method, path, HTTP version, body sizes, the client's port, whether it was a model call and,
for model calls, the model and usage served (each model call gets distinct token counts).
Non-model requests (settings, limits, count_tokens, WebSocket upgrades) get small answers and
are logged too. `--capture DIR` keeps every exchange's raw bytes for fixtures.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support import provider_server as ps

SHELL_TOOLS = ("Bash", "shell", "shell_command", "exec_command", "local_shell",
               "run_shell_command")
SECRET_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "cookie", "proxy-authorization")


# ---- what to answer (pure) ---------------------------------------------------------------------

def _tools(api: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """[{name, schema}] of the tools a request offers, in every API's spelling."""
    out = []
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        for decl in tool.get("functionDeclarations") or [tool]:
            fn = decl.get("function") if isinstance(decl.get("function"), dict) else decl
            name = fn.get("name") or ("local_shell" if fn.get("type") == "local_shell" else None)
            schema = (fn.get("input_schema") or fn.get("parameters")
                      or fn.get("parametersJsonSchema") or {})
            if name:
                out.append({"name": name, "schema": schema})
    return out


def _has_tool_result(api: str, body: dict[str, Any]) -> bool:
    text = json.dumps(body.get("messages") or body.get("input") or body.get("contents") or [])
    return any(k in text for k in ('"tool_result"', '"function_call_output"',
                                   '"functionResponse"', '"custom_tool_call_output"',
                                   '"local_shell_call_output"'))


def tool_call(api: str, body: dict[str, Any], command: str) -> tuple[str, dict[str, Any]] | None:
    """(tool name, arguments) to ask for, or None when this request should get text."""
    if _has_tool_result(api, body):
        return None
    tools = {t["name"]: t["schema"] for t in _tools(api, body)}
    name = next((n for n in SHELL_TOOLS if n in tools), None)
    if name is None:
        return None
    props = tools[name].get("properties") or {}
    key = next((k for k in ("command", "cmd") if k in props), "command")
    if (props.get(key) or {}).get("type") == "array" or name == "local_shell":
        return name, {key: ["bash", "-lc", command]}
    args: dict[str, Any] = {key: command}
    if name == "Bash":
        args["description"] = "Run the test's command"
    return name, args


def served(api: str, stream: bool, n: int) -> dict[str, Any]:
    """Model and usage for the n-th model call (distinct per call, so each can be told apart)."""
    e = dict(ps.EXPECTED[(api, stream)])
    for k in ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens"):
        if e[k] is not None:
            e[k] += 10 * n
    return e


def _sse(events: list[tuple[str | None, dict[str, Any]]]) -> list[bytes]:
    return [((f"event: {name}\n" if name else "") + f"data: {json.dumps(d)}\n\n").encode()
            for name, d in events]


def anthropic_reply(e: dict[str, Any], call: tuple[str, dict[str, Any]] | None,
                    stream: bool) -> tuple[str, list[bytes]]:
    usage = ps._usage("anthropic", e)
    block = ({"type": "tool_use", "id": "toolu_01obs", "name": call[0], "input": call[1]}
             if call else {"type": "text", "text": "Done."})
    stop = "tool_use" if call else "end_turn"
    msg = {"id": "msg_obs", "type": "message", "role": "assistant", "model": e["model"],
           "stop_reason": stop, "stop_sequence": None}
    if not stream:
        return "application/json", [json.dumps(dict(msg, content=[block], usage=usage)).encode()]
    start = dict(msg, content=[], stop_reason=None, usage=dict(usage, output_tokens=1))
    empty = dict(block, input={}) if call else dict(block, text="")
    delta = ({"type": "input_json_delta", "partial_json": json.dumps(call[1])} if call
             else {"type": "text_delta", "text": "Done."})
    return "text/event-stream", _sse([
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": empty}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop},
                           "usage": {"output_tokens": e["completion_tokens"]}}),
        ("message_stop", {"type": "message_stop"})])


def responses_reply(e: dict[str, Any], call: tuple[str, dict[str, Any]] | None,
                    stream: bool) -> tuple[str, list[bytes]]:
    if call and call[0] == "local_shell":
        item = {"type": "local_shell_call", "id": "lsh_obs", "call_id": "call_obs",
                "status": "completed", "action": {"type": "exec", "command": call[1]["command"]}}
    elif call:
        item = {"type": "function_call", "id": "fc_obs", "call_id": "call_obs", "name": call[0],
                "arguments": json.dumps(call[1]), "status": "completed"}
    else:
        item = {"type": "message", "id": "msg_obs", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "Done.", "annotations": []}]}
    resp = {"id": "resp_obs", "object": "response", "model": e["model"], "created_at": 0}
    done = dict(resp, status="completed", output=[item], usage=ps._usage("openai-responses", e))
    if not stream:
        return "application/json", [json.dumps(done).encode()]
    events: list[tuple[str | None, dict[str, Any]]] = [
        ("response.created", {"type": "response.created", "sequence_number": 0,
                              "response": dict(resp, status="in_progress", output=[])}),
        ("response.output_item.added", {"type": "response.output_item.added",
                                        "sequence_number": 1, "output_index": 0, "item": item})]
    if not call:
        events.append(("response.output_text.delta", {
            "type": "response.output_text.delta", "sequence_number": 2, "item_id": "msg_obs",
            "output_index": 0, "content_index": 0, "delta": "Done."}))
    events += [("response.output_item.done", {"type": "response.output_item.done",
                                              "sequence_number": 3, "output_index": 0,
                                              "item": item}),
               ("response.completed", {"type": "response.completed", "sequence_number": 4,
                                       "response": done})]
    return "text/event-stream", _sse(events)


def gemini_reply(e: dict[str, Any], call: tuple[str, dict[str, Any]] | None,
                 stream: bool) -> tuple[str, list[bytes]]:
    part = {"functionCall": {"name": call[0], "args": call[1]}} if call else {"text": "Done."}
    obj = {"candidates": [{"content": {"role": "model", "parts": [part]},
                           "finishReason": "STOP", "index": 0}],
           "usageMetadata": ps._usage("gemini", e), "modelVersion": e["model"]}
    if not stream:
        return "application/json", [json.dumps(obj).encode()]
    return "text/event-stream", _sse([(None, obj)])


REPLY = {"anthropic": anthropic_reply, "openai-responses": responses_reply,
         "gemini": gemini_reply}


def _path_model(route: str) -> str | None:
    """Gemini names the model in the path: /v1beta/models/<model>:<verb>."""
    tail = route.rpartition("/models/")[2]
    return tail.split(":", 1)[0] or None


def redact_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, "REDACTED" if k.lower() in SECRET_HEADERS else v) for k, v in headers]


# ---- the server --------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "agent-stand-in"
    server: Stand

    def setup(self) -> None:
        super().setup()
        if not self.server.nagle:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sent: list[bytes] = []
        self.t_first = self.t_first_done = self.t_last_start = 0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _write(self, data: bytes) -> None:
        self.t_last_start = time.monotonic_ns()
        if not self.t_first:
            self.t_first = self.t_last_start
        self.wfile.write(data)
        if not self.t_first_done:
            self.t_first_done = time.monotonic_ns()
        self.sent.append(data)

    def _answer(self, status: int, ctype: str, pieces: list[bytes], delay: bool) -> None:
        if delay:
            time.sleep(self.server.delay_ms / 1000)
        head = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n"
                f"Content-Type: {ctype}\r\n").encode()
        if len(pieces) == 1 or self.command == "HEAD":  # HEAD: the length, never a body
            head += b"Content-Length: %d\r\n\r\n" % len(pieces[0])
            self._write(head + (b"" if self.command == "HEAD" else pieces[0]))
            return
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        self._write(head + b"%x\r\n%s\r\n" % (len(pieces[0]), pieces[0]))
        for p in pieces[1:-1]:
            self._write(b"%x\r\n%s\r\n" % (len(p), p))
        # The last event and the body's end in one write: Codex drops the connection once it
        # has its last event, so a terminator written apart (16 ms later on a loaded machine)
        # would be a "last write" the client never waited for.
        self._write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(pieces[-1]), pieces[-1]))

    def _handle(self) -> None:
        self.sent, self.t_head = [], time.monotonic_ns()
        self.t_first = self.t_first_done = self.t_last_start = 0
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        t_req = time.monotonic_ns()
        route = urlsplit(self.path).path
        found = ps.api_of(self.path) if self.command == "POST" else None
        facts: dict[str, Any] = {}
        if route.endswith("/count_tokens") or route.endswith(":countTokens"):
            self._answer(200, "application/json", [b'{"input_tokens": 1234, "totalTokens": 1234}'],
                         False)
        elif found is None or found[0] not in REPLY:
            self._answer(404, "application/json", [b'{"error": {"message": "not here"}}'], False)
        else:
            api, stream = found
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {}
            stream = stream and "alt=sse" in self.path or bool(body.get("stream"))
            call = tool_call(api, body, self.server.command)
            with self.server.lock:
                n = next(self.server.counter)
            e = served(api, stream, n)
            facts = {"api": api, "stream": stream, "tool_call": call[0] if call else None,
                     "request_model": body.get("model") or _path_model(route), **e}
            ctype, pieces = REPLY[api](e, call, stream)
            self._answer(200, ctype, pieces, True)
        self.server.record(self, raw, t_req, facts)

    # older Claude Code releases probe the API host with `HEAD /` first
    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


class Stand(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: str, ctx: ssl.SSLContext, log: Any, args: argparse.Namespace,
                 counter: Any, lock: threading.Lock) -> None:
        super().__init__((addr, args.port), Handler)
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.log, self.lock, self.counter = log, lock, counter
        self.delay_ms, self.nagle, self.command = args.delay, args.nagle, args.command
        self.capture: Path | None = args.capture
        self.seq = itertools.count()

    def record(self, h: Handler, raw: bytes, t_req: int, facts: dict[str, Any]) -> None:
        line = {"t_head": h.t_head, "t_req": t_req, "t_first": h.t_first,
                "t_first_done": h.t_first_done, "t_last_start": h.t_last_start,
                "t_last": time.monotonic_ns(),
                "wall": time.time_ns(), "method": h.command, "path": h.path,
                "version": h.request_version, "host": h.headers.get("Host"),
                "client_port": h.client_address[1], "req_body": len(raw),
                "resp_body": sum(map(len, h.sent)), "model_call": bool(facts),
                "websocket": "websocket" in (h.headers.get("Upgrade") or "").lower(), **facts}
        with self.lock:
            self.log.write(json.dumps(line) + "\n")
            self.log.flush()
            if self.capture:
                i = next(self.seq)
                cap = {"method": h.command, "path": h.path, "version": h.request_version,
                       "headers": redact_headers(list(h.headers.items())),
                       "body_b64": base64.b64encode(raw).decode(),
                       "response_b64": [base64.b64encode(x).decode() for x in h.sent], **line}
                (self.capture / f"{i:03d}.json").write_text(json.dumps(cap, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cert", type=Path, required=True)
    ap.add_argument("--key", type=Path, required=True)
    ap.add_argument("--log", type=Path, required=True)
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--delay", type=int, default=250, help="ms before each model answer")
    ap.add_argument("--nagle", action="store_true", help="leave Nagle on (no TCP_NODELAY)")
    ap.add_argument("--command", default="echo obs-agent-tool")
    ap.add_argument("--capture", type=Path)
    a = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.set_alpn_protocols(["http/1.1"])
    lock, counter = threading.Lock(), itertools.count()
    with open(a.log, "a") as log:
        for addr in dict.fromkeys(ps.HOSTS.values()):
            srv = Stand(addr, ctx, log, a, counter, lock)
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        print("ready", flush=True)
        sys.stdin.read()  # until the parent closes our stdin


if __name__ == "__main__":
    main()
