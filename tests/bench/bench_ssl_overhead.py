"""What attaching obs-ssl costs a TLS-heavy client (not collected by pytest: no test_ prefix).

A Python client (CPython's ssl) makes N HTTPS requests over one keep-alive connection to the
local provider server (tests/support/provider_server.py): chat completions, half JSON and
half SSE, about 15 SSL calls per request and under 0.3 ms a request — far more TLS calls per
second than any LLM client makes. Its wall time is measured untraced and with obs-ssl
attached (default: SslContent + LlmApi; --api-only; and the default at nice 10, as the
systemd unit runs it), alternating in rounds so drift on the machine hits every variant
alike; medians are compared, and obs-ssl's own CPU time per request is shown.

The server loads a private copy of libssl (LD_LIBRARY_PATH) and starts after obs-ssl has
attached (--rescan 0), so only the client is traced, as with a remote API. `--both-traced`
traces the server too (twice the records, on the same two cores).

    sudo .venv/bin/python tests/bench/bench_ssl_overhead.py [--requests N] [--rounds R]
        [--client python|go|gnutls|nss]

`--client` picks the TLS stack: go is tests/support/goclient (Go's crypto/tls, named with
--lib), gnutls and nss are libcurl-gnutls/-nss through tests/support/curl_ctypes.py; each
makes SSE chat completions on one connection.

Prints one line per variant, then `ratio <traced/untraced>` for the default mode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # nox runs benches as scripts
    sys.path.insert(0, str(REPO))

from tests.support import provider_server as ps  # noqa: E402
from tests.support.tools import running  # noqa: E402

SYSTEM_LIBSSL = Path("/lib/x86_64-linux-gnu/libssl.so.3")
CLIENT = r"""
import http.client, json, ssl, sys, time
ca, port, n, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
conn = http.client.HTTPSConnection("api.openai.com", port,
                                   context=ssl.create_default_context(cafile=ca))
conn.request("GET", "/big?size=64", headers={})  # connect and warm up outside the timing
conn.getresponse().read()
t0 = time.perf_counter()
for i in range(n):
    path, headers, body = requests[i % len(requests)]
    conn.request("POST", path, body=body.encode(), headers=headers)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200
print(time.perf_counter() - t0)
"""


def stack_client_seconds(server: ps.Server, n: int, client: str) -> float:
    from tests.support import gobuild

    headers = {**ps.request_headers("openai-chat"), "Content-Type": "application/json"}
    args = [str(server.ca), server.url("api.openai.com", ps.request_path("openai-chat", True)),
            json.dumps(headers), ps.request_body("openai-chat", True).decode(), str(n + 1)]
    if client == "go":
        cmd = [str(gobuild.build("goclient")), *args]
    else:
        cmd = [sys.executable, str(REPO / "tests" / "support" / "curl_ctypes.py"),
               f"/usr/lib/x86_64-linux-gnu/libcurl-{client}.so.4", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env={**os.environ, "GOCLIENT_TIME": "1", "CURL_CTYPES_TIME": "1"})
    return float(out.stdout.strip())


def client_seconds(server: ps.Server, n: int, client: str = "python") -> float:
    if client != "python":
        return stack_client_seconds(server, n, client)
    requests = []
    for stream in (False, True):
        headers = {**ps.request_headers("openai-chat"), "Content-Type": "application/json"}
        requests.append([ps.request_path("openai-chat", stream), headers,
                         ps.request_body("openai-chat", stream).decode()])
    out = subprocess.run([sys.executable, "-c", CLIENT, str(server.ca),
                          str(server.port("api.openai.com")), str(n), json.dumps(requests)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settled(out: Path, quiet: float = 0.5, limit: float = 60.0) -> None:
    """Wait until the tool's output has not grown for `quiet` seconds (its reads are held
    0.25 s for ordering; a loaded host can leave it seconds behind the client)."""
    deadline = time.monotonic() + limit
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = out.stat().st_size
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)


def one_round(args: tuple[str, ...] | None, lib_dir: Path | None, n: int, nice: int = 0,
              client: str = "python") -> tuple[float, float]:
    """(client seconds, obs-ssl CPU seconds) with obs-ssl (args) or without (None); the
    server starts after obs-ssl, so obs-ssl never sees its libssl copy."""
    cpu = 0.0
    with ExitStack() as stack:
        tool = None
        if args is not None:
            tool = stack.enter_context(running("obs-ssl", "--rescan", "0", *args))
            os.setpriority(os.PRIO_PROCESS, tool.proc.pid, nice)
        server = stack.enter_context(ps.serving(lib_dir))
        client_seconds(server, 20, client)  # warm up
        before = cpu_seconds(tool.proc.pid) if tool else 0.0
        seconds = client_seconds(server, n, client)
        if tool:
            settled(tool.out_path)  # on a loaded host it may still be behind the client
            cpu = cpu_seconds(tool.proc.pid) - before
    if tool is not None and (tool.status != 0 or "dropped" in tool.stderr()):
        print(f"obs-ssl {' '.join(args or ())}: status {tool.status}: {tool.stderr()}")
    return seconds, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description="obs-ssl overhead on a TLS-heavy client")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--both-traced", action="store_true",
                    help="let the server use the probed system libssl too")
    ap.add_argument("--client", choices=["python", "go", "gnutls", "nss"], default="python")
    a = ap.parse_args()
    extra: tuple[str, ...] = ()
    if a.client == "go":  # --rescan 0: named up front
        from tests.support import gobuild

        extra = ("--lib", str(gobuild.build("goclient")))
    # name: (obs-ssl arguments or None for untraced, nice value as the systemd unit sets it)
    variants: dict[str, tuple[tuple[str, ...] | None, int]] = {
        "untraced": (None, 0), "content": (extra, 0), "api-only": ((*extra, "--api-only"), 0),
        "nice10": (extra, 10)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="bench-ssl-") as tmp:
        lib_dir = None
        if not a.both_traced:
            lib_dir = Path(tmp)
            shutil.copy2(SYSTEM_LIBSSL, lib_dir / SYSTEM_LIBSSL.name)
        for _ in range(a.rounds):
            for name, (args, nice) in variants.items():
                seconds, tool_cpu = one_round(args, lib_dir, a.requests, nice, a.client)
                times[name].append(seconds)
                cpu[name].append(tool_cpu)
    base = statistics.median(times["untraced"])
    traced = "client and server" if a.both_traced else "client only"
    print(f"{a.rounds} rounds of {a.requests} requests ({a.client}), {traced} traced")
    for name, values in times.items():
        med = statistics.median(values)
        tool = statistics.median(cpu[name]) / a.requests * 1e6
        print(f"{name:9} median {med:.3f}s ({med / a.requests * 1e6:.0f} us/request, "
              f"obs-ssl CPU {tool:.0f} us/request; rounds "
              f"{' '.join(f'{v:.3f}' for v in values)}); ratio {med / base:.3f}, "
              f"best-round ratio {min(values) / min(times['untraced']):.3f}")
    print(f"ratio {statistics.median(times['content']) / base:.3f}")


if __name__ == "__main__":
    main()
