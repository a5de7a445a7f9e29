"""obs-ssl against the real kernel: real TLS clients (curl, CPython's ssl, Node's fetch) talking
to a local server in each LLM provider's wire format; exact models and token counts."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from libobs.tls import libraries
from tests.support import provider_server as ps
from tests.support.tools import Running, running

pytestmark = pytest.mark.kernel
TOKENS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_creation_tokens")
# Every client runs under this comm (through a symlink of that name) and the module's obs-ssl
# filters on it: its output stays small whatever else the host is doing over TLS.
COMM = "obs-ssl-client"
SYSTEM_LIBSSL_NAME = "libssl.so"
_CLIENT_DIR = Path(tempfile.mkdtemp(prefix="obs-ssl-clients-"))

PY_CLIENT = r"""
import http.client, json, ssl, sys
host, port, ca, requests = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
conn = http.client.HTTPSConnection(host, port, context=ssl.create_default_context(cafile=ca))
for method, path, headers, body in requests:   # all on one keep-alive connection
    conn.request(method, path, body=body.encode() if body else None, headers=headers)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200, resp.status
"""

NODE_CLIENT = r"""
(async () => {
  const [url, headers, body] = process.argv.slice(1);
  const r = await fetch(url, {method: 'POST', headers: JSON.parse(headers), body});
  await r.arrayBuffer();
  process.exit(r.status === 200 ? 0 : 3);
})().catch((e) => { console.error(e); process.exit(2); });
"""


def node_path() -> str | None:
    found = shutil.which("node")
    return os.path.realpath(found) if found else None


def node_skip_reason() -> str | None:
    node = node_path()
    if node is None:
        return "node is not installed"
    if not {"SSL_read", "SSL_write"} <= libraries.file_exports(node):
        return (f"{node} does not export OpenSSL's SSL_read/SSL_write (built against a shared "
                "or another TLS library): it has nothing to put uprobes on")
    return None


@pytest.fixture(scope="module")
def server():
    with ps.serving() as s:
        yield s


@pytest.fixture(scope="module")
def obs(server):
    with running("obs-ssl", "--heartbeat-interval", "1", "--comm", COMM) as r:
        yield r
    assert r.status == 0, r.stderr()


def as_client(program: str) -> str:
    """A path that runs `program` with the comm COMM."""
    target = Path(shutil.which(program) or program).resolve()
    link = _CLIENT_DIR / target.name / COMM
    if not link.exists():
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(target)
    return str(link)


def run(cmd: list[str], env: dict[str, str] | None = None, client: bool = True) -> int:
    """Run a client to completion (under the comm COMM unless client=False); its pid."""
    if client:
        cmd = [as_client(cmd[0]), *cmd[1:]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"{cmd[0]} failed: {err.decode(errors='replace')}"
    return proc.pid


def headers_for(api: str, encoding: str) -> dict[str, str]:
    return {**ps.request_headers(api), "Content-Type": "application/json",
            "Accept-Encoding": encoding}


def python_client(server: ps.Server, host: str, requests: list[list[Any]]) -> int:
    return run([sys.executable, "-c", PY_CLIENT, host, str(server.port(host)), str(server.ca),
                json.dumps(requests)])


def run_client(client: str, server: ps.Server, api: str, stream: bool, encoding: str) -> int:
    host, path = ps.HOST_OF[api], ps.request_path(api, stream)
    headers = headers_for(api, encoding)
    body = ps.request_body(api, stream).decode()
    if client == "curl":
        cmd = ["curl", "-sS", "--fail", "--cacert", str(server.ca), "-o", "/dev/null",
               "-X", "POST", server.url(host, path), "--data-binary", body]
        for k, v in headers.items():
            cmd += ["-H", f"{k}: {v}"]
        return run(cmd)
    if client == "python":
        return python_client(server, host, [["POST", path, headers, body]])
    reason = node_skip_reason()
    if reason:
        pytest.skip(reason)
    node = node_path()
    assert node
    return run([node, "-e", NODE_CLIENT, server.url(host, path), json.dumps(headers), body],
               env={"NODE_EXTRA_CA_CERTS": str(server.ca)})


def api_events(obs: Running, pid: int, count: int = 2) -> list[dict[str, Any]]:
    return obs.wait_events("LlmApi", lambda f: f["pid"] == pid, count=count)


def expected_request(api: str, stream: bool) -> dict[str, Any]:
    return {"is_request": True, "model": ps.REQUEST_MODEL[api], "stream": stream,
            "path": ps.request_path(api, stream).split("?")[0],
            **dict.fromkeys(TOKENS)}


def expected_response(api: str, stream: bool) -> dict[str, Any]:
    return {"is_request": False, "stream": stream,
            "path": ps.request_path(api, stream).split("?")[0], **ps.EXPECTED[(api, stream)]}


def strip(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("pid", "_env")}


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("api", ps.APIS)
@pytest.mark.parametrize("client", ["curl", "python", "node"])
def test_llm_api_facts(obs, server, client, api, stream, encoding):
    pid = run_client(client, server, api, stream, encoding)
    req, resp = api_events(obs, pid)
    assert strip(req) == expected_request(api, stream)
    assert strip(resp) == expected_response(api, stream)
    for ev in (req, resp):
        assert ev["_env"]["provider"] == ps.PROVIDER_OF[api]
        assert ev["_env"]["identity"]["task"] == str(pid)
    assert req["_env"]["ts"] <= resp["_env"]["ts"]
    # nothing more for this client: one request, one response
    assert len([f for f in obs.of_kind("LlmApi") if f["pid"] == pid]) == 2


def test_keep_alive_many_exchanges_one_connection(obs, server):
    calls = [("openai-chat", False), ("openai-chat", True), ("openai-responses", True),
             ("openai-responses", False)]
    requests = [["POST", ps.request_path(api, stream), headers_for(api, "gzip"),
                 ps.request_body(api, stream).decode()] for api, stream in calls]
    pid = python_client(server, "api.openai.com", requests)
    events = api_events(obs, pid, count=2 * len(calls))
    assert len(events) == 2 * len(calls)
    for (api, stream), (req, resp) in zip(calls, zip(events[::2], events[1::2], strict=True), strict=True):
        assert strip(req) == expected_request(api, stream)
        assert strip(resp) == expected_response(api, stream)


def test_gemini_json_array_stream(obs, server):
    path = f"/v1beta/models/{ps.REQUEST_MODEL['gemini']}:streamGenerateContent"
    pid = python_client(server, ps.HOST_OF["gemini"],
                        [["POST", path, headers_for("gemini", "identity"),
                          ps.request_body("gemini", True).decode()]])
    req, resp = api_events(obs, pid)
    assert req["stream"] is True and req["model"] == ps.REQUEST_MODEL["gemini"]
    assert strip(resp) == {**expected_response("gemini", True), "path": path}


def test_large_response_content_complete_and_in_order(obs, server):
    size = 100 * 1024
    pid = python_client(server, "api.openai.com", [["GET", f"/big?size={size}", {}, ""]])
    body = ps.big_body(size)

    def complete(f: dict[str, Any]) -> bool:
        return f["pid"] == pid and f["is_read"]

    def joined() -> str:
        return "".join(f["content"] for f in obs.of_kind("SslContent") if complete(f))

    from tests.support.tools import wait_for
    wait_for(lambda: body.decode() in joined(), timeout=30, what="the whole 100 KiB body")
    reads = [f for f in obs.of_kind("SslContent") if complete(f)]
    assert len(reads) >= 7  # 16 KiB TLS records: many SSL_read calls, many records
    assert not any(f["truncated"] for f in reads)
    assert sum(f["len"] for f in reads) == len(joined().encode())
    head, _, rest = joined().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200") and rest == body.decode()
    assert all(f["lib"] == reads[0]["lib"] and "libssl" in f["lib"] for f in reads)


def test_credentials_redacted(obs, server):
    anthropic = headers_for("anthropic", "identity")
    openai = headers_for("openai-chat", "identity")
    pid_a = python_client(server, ps.HOST_OF["anthropic"], [[
        "POST", "/v1/messages", anthropic, ps.request_body("anthropic", False).decode()]])
    pid_o = run(["curl", "-sS", "--fail", "--cacert", str(server.ca), "-o", "/dev/null",
                 "-H", f"Authorization: {openai['Authorization']}", "-H", "x-api-key: sk-ant-"
                 + "D" * 30, server.url("api.openai.com", "/v1/chat/completions"),
                 "--data-binary", ps.request_body("openai-chat", False).decode()])
    for pid in (pid_a, pid_o):
        api_events(obs, pid)
    writes = {pid: "".join(f["content"] for f in obs.of_kind("SslContent")
                           if f["pid"] == pid and not f["is_read"]) for pid in (pid_a, pid_o)}
    assert "x-api-key: [REDACTED]" in writes[pid_a]
    assert anthropic["x-api-key"] not in writes[pid_a]
    assert "Authorization: Bearer [REDACTED]" in writes[pid_o]
    assert "x-api-key: [REDACTED]" in writes[pid_o]
    for secret in (openai["Authorization"].split()[1], "sk-ant-" + "D" * 30):
        assert secret not in writes[pid_o]
    assert '"model": "gpt-4o"' in writes[pid_o]  # the rest is kept


def test_heartbeat_and_stderr_name_the_libraries(obs):
    hb = obs.wait_events("CollectorHeartbeat")[-1]
    probes = hb["attached_probes"]
    libssl_paths = {p.split(":")[1] for p in probes if "libssl.so" in p}
    assert libssl_paths, probes
    lib = sorted(libssl_paths)[0]
    expected = {f"{kind}:{lib}:{p.label}" for p in libraries.file_probe_points(lib)
                for kind in ("uprobe", "uretprobe")}
    assert len(expected) >= 4 and expected <= set(probes)
    covered = {fn for p in libraries.file_probe_points(lib) for fn in p.covers}
    assert covered == set(libraries.SSL_FUNCTIONS)
    assert "attached to" in obs.stderr() and lib in obs.stderr()
    node = node_path()
    if node_skip_reason() is None:
        assert f"uprobe:{node}:SSL_write" in probes
    assert hb["dropped"] == 0
    assert set(hb["enabled_features"]) >= {"llm-api", "content", "redact"}


def test_no_redact_and_api_only(server, tmp_path):
    curl = tmp_path / "obsnoredact"  # a comm of its own, to filter on
    curl.symlink_to(shutil.which("curl") or "/usr/bin/curl")
    key = "sk-ant-" + "E" * 30
    with running("obs-ssl", "--no-redact", "--comm", "obsnoredact") as raw, \
            running("obs-ssl", "--api-only", "--comm", "obsnoredact") as api_only:
        pid = run([str(curl), "-sS", "--fail", "--cacert", str(server.ca), "-o", "/dev/null",
                   "-H", f"x-api-key: {key}", server.url("api.anthropic.com", "/v1/messages"),
                   "--data-binary", ps.request_body("anthropic", False).decode()], client=False)
        raw.wait_events("LlmApi", lambda f: f["pid"] == pid, count=2)
        api_only.wait_events("LlmApi", lambda f: f["pid"] == pid, count=2)
    writes = [f["content"] for f in raw.of_kind("SslContent") if not f["is_read"]]
    assert any(f"x-api-key: {key}" in w for w in writes)
    assert api_only.of_kind("SslContent") == []
    assert {f["pid"] for f in raw.of_kind("LlmApi")} == {pid}  # the comm filter held


def test_pid_filter_follows_the_children(server, tmp_path):
    """--pid watches the process and what it forks after obs started (bpf/common.h's fork
    probe): a shell's curl child is read, a curl outside that tree is not."""
    curl = [shutil.which("curl") or "/usr/bin/curl", "-sS", "--fail", "--cacert",
            str(server.ca), "-o", "/dev/null",
            server.url("api.anthropic.com", "/v1/messages"),
            "--data-binary", ps.request_body("anthropic", False).decode()]
    go = tmp_path / "go"
    script = f"while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.05; done; {shlex.join(curl)}; true"
    parent = subprocess.Popen(["sh", "-c", script])
    try:
        with running("obs-ssl", "--api-only", "--pid", str(parent.pid)) as obs:
            outside = run(curl, client=False)
            go.touch()
            assert parent.wait(timeout=60) == 0
            facts = obs.wait_events("LlmApi", lambda f: f["pid"] not in (parent.pid, outside),
                                    count=2)
    finally:
        parent.kill()
    assert len({f["pid"] for f in facts}) == 1
    assert outside not in {f["pid"] for f in obs.of_kind("LlmApi")}


STEPPED_CLIENT = r"""
import http.client, json, ssl, sys
host, port, ca, requests = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
conn = http.client.HTTPSConnection(host, port, context=ssl.create_default_context(cafile=ca))
for method, path, headers, body in requests:   # one keep-alive connection, a step per line
    sys.stdin.readline()
    conn.request(method, path, body=body.encode() if body else None, headers=headers)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200, resp.status
    print("done", flush=True)
"""


def test_ring_buffer_overflow_is_counted_and_the_connection_recovers(server, tmp_path):
    """A reader that stops (SIGSTOP) while 8 MB arrive through a 1 MiB ring buffer: records
    are lost, counted, and the next exchange on the same connection is reported exactly."""
    import signal
    import time

    host = ps.HOST_OF["openai-chat"]
    requests = [["GET", f"/big?size={8 << 20}", {}, ""],
                ["POST", ps.request_path("openai-chat", True), headers_for("openai-chat", "gzip"),
                 ps.request_body("openai-chat", True).decode()]]
    with running("obs-ssl", "--api-only", "--ring-size", "1", "--heartbeat-interval", "0.5",
                 "--comm", "obsburst") as obs:
        client = tmp_path / "obsburst"
        client.symlink_to(sys.executable)
        proc = subprocess.Popen([str(client), "-c", STEPPED_CLIENT, host, str(server.port(host)),
                                 str(server.ca), json.dumps(requests)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdin and proc.stdout
        obs.proc.send_signal(signal.SIGSTOP)
        try:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "done\n"
        finally:
            obs.proc.send_signal(signal.SIGCONT)
        time.sleep(0.5)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "done\n"
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        req, resp = obs.wait_events("LlmApi", lambda f: f["pid"] == proc.pid, count=2)
        hb = obs.wait_events("CollectorHeartbeat", lambda f: f["dropped"] > 0)[-1]
    assert strip(req) == expected_request("openai-chat", True)
    assert strip(resp) == expected_response("openai-chat", True)
    assert hb["dropped"] > 0
    assert "dropped" in obs.stderr()


def test_rescan_finds_a_private_libssl_loaded_later(server, tmp_path):
    private = tmp_path / "lib"
    private.mkdir()
    shutil.copy2("/lib/x86_64-linux-gnu/libssl.so.3", private / "libssl.so.3")
    host = ps.HOST_OF["anthropic"]
    requests = [["POST", "/v1/messages", headers_for("anthropic", "identity"),
                 ps.request_body("anthropic", False).decode()]]
    with running("obs-ssl", "--rescan", "0.3", "--comm", "obsrescan") as obs:
        assert str(private) not in obs.stderr()
        client = tmp_path / "obsrescan"
        client.symlink_to(sys.executable)
        proc = subprocess.Popen([str(client), "-c", STEPPED_CLIENT, host, str(server.port(host)),
                                 str(server.ca), json.dumps(requests)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "LD_LIBRARY_PATH": str(private)})
        assert proc.stdin and proc.stdout
        from tests.support.tools import wait_for
        wait_for(lambda: f"attached to {private}/libssl.so.3" in obs.stderr(), timeout=20,
                 what="the rescan to attach to the private libssl")
        proc.stdin.write("go\n")
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        req, resp = obs.wait_events("LlmApi", lambda f: f["pid"] == proc.pid, count=2)
    assert strip(resp) == expected_response("anthropic", False)
    libs = {f["lib"] for f in obs.of_kind("SslContent") if f["pid"] == proc.pid}
    assert libs == {f"{private}/libssl.so.3"}


def test_twice_cold_then_warm_from_the_start_up_cache(server, tmp_path):
    """The second start loads the compiled program and the TLS library judgements from the
    start-up cache (counted in the heartbeat) and reads the same plaintext."""
    cache = tmp_path / "cache"
    api = ps.APIS[0]
    stderr = []
    for want in ((0, 1), (1, 0)):
        with running("obs-ssl", "--heartbeat-interval", "0.5", "--comm", COMM,
                     env={"OBS_CACHE_DIR": str(cache)}) as r:
            pid = run_client("curl", server, api, False, "identity")
            req, resp = api_events(r, pid)
            assert strip(req) == expected_request(api, False)
            assert strip(resp) == expected_response(api, False)
            [hb] = r.wait_events("CollectorHeartbeat")
            assert (hb["programs_cached"], hb["programs_compiled"]) == want
            assert any(SYSTEM_LIBSSL_NAME in p for p in hb["attached_probes"])
        assert r.status == 0, r.stderr()
        stderr.append(r.stderr())
        assert len(list((cache / "tls").glob("*.json"))) == 1
    # the system library found and named both times, the second from the judgements kept
    assert all(SYSTEM_LIBSSL_NAME in e and "(OpenSSL" in e for e in stderr), stderr


def _uprobe_multi_links(pid: int) -> int:
    """bpf links of that type among the process's file descriptors."""
    n = 0
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            n += "link_type:\tuprobe_multi" in info.read_text()
        except OSError:
            continue
    return n


def test_uprobe_multi_links_and_perf_events_read_the_same_side_by_side(server):
    """obs-ssl puts its probes on through uprobe_multi links (one per program and library,
    detached at once on exit), or, with OBS_UPROBE_MULTI=0 as on kernels before 6.6, a perf
    event each. Run at once on the same library (the kernel refuses a second probe at an
    address with another ref_ctr_offset: neither sets one), both read the same request, with
    the same probes named."""
    api = ps.APIS[0]
    env = {"OBS_UPROBE_MULTI": "0"}
    with running("obs-ssl", "--heartbeat-interval", "0.5", "--comm", COMM) as multi, \
            running("obs-ssl", "--heartbeat-interval", "0.5", "--comm", COMM, env=env) as perf:
        assert _uprobe_multi_links(multi.proc.pid) > 0
        assert _uprobe_multi_links(perf.proc.pid) == 0
        pid = run_client("curl", server, api, False, "identity")
        probes = []
        for r in (multi, perf):
            req, resp = api_events(r, pid)
            assert strip(req) == expected_request(api, False)
            assert strip(resp) == expected_response(api, False)
            hb = r.wait_events("CollectorHeartbeat")[0]
            probes.append(sorted(p for p in hb["attached_probes"] if SYSTEM_LIBSSL_NAME in p
                                 and p.split(":")[1].startswith(("/lib/", "/usr/lib/"))))
            assert "cannot attach" not in r.stderr(), r.stderr()
    assert multi.status == perf.status == 0, multi.stderr() + perf.stderr()
    assert probes[0] and probes[0] == probes[1]


def test_record_layout_matches_the_c_struct():
    """libobs.tls.decode reads struct ssl_rec at fixed offsets: check them against what clang
    compiled (a map with the struct as its value gives bcc's ctypes mirror of it)."""
    import ctypes

    from bcc import BPF

    from libobs.kernel import program as probes
    from libobs.tls.decode import DATA, REC

    text = probes.source_text("ssl.bpf.c") + "\nBPF_ARRAY(layout_check, struct ssl_rec, 1);\n"
    b = BPF(text=text.encode(), cflags=probes.cflags(probes.base_defines(1 << 20)))
    try:
        leaf = b[b"layout_check"].Leaf
        offsets = {name: getattr(leaf, name).offset for name, *_ in leaf._fields_}
        assert ctypes.sizeof(leaf) == DATA
    finally:
        b.cleanup()
    names = ["ssl", "off", "total", "captured", "chunk", "fn", "lib", "read_failed"]
    expected, at = {}, 72
    for name, size in zip(names, [8, 8, 4, 4, 2, 1, 1, 1], strict=True):
        expected[name] = at
        at += size
    assert {n: offsets[n] for n in names} == expected
    assert REC.size == DATA - 72
