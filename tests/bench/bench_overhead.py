"""Overhead: wall time of an agent-like workload with every observer running vs none, in the
same run, alternating (none, all, none, all, …) so drift hits both sides alike.

The workload (a separate Python process, as an agent would be): OBS_BENCH_ITER iterations of
one LLM call over TLS to a local endpoint (api.anthropic.com mapped to 127.0.0.93, 50 ms to
first byte, streamed in 5 chunks), three tool subprocesses and ten file writes.
OBS_BENCH_OBSERVERS=obs-net,obs-llm measures a subset.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path

from harness import Tool, save, table

from tests.support.hosts import mapped
from tests.support.tls_server import tls_server

ITER = int(os.environ.get("OBS_BENCH_ITER", 40))
ROUNDS = int(os.environ.get("OBS_BENCH_ROUNDS", 4))
OBSERVERS = {"obs-exec": ["--files"], "obs-net": [], "obs-llm": [], "obs-ssl": []}
AGENT = textwrap.dedent("""
    import http.client, ssl, subprocess, sys, time, pathlib
    port, cafile, n, tmp = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), pathlib.Path(sys.argv[4])
    ctx = ssl.create_default_context(cafile=cafile)
    t0 = time.monotonic()
    for i in range(n):
        c = http.client.HTTPSConnection("api.anthropic.com", port, context=ctx)
        c.request("POST", "/v1/messages?delay=50&chunks=5&interval=5&size=4000", body=b"{}",
                  headers={"content-type": "application/json"})
        c.getresponse().read()
        c.close()
        subprocess.run(["/bin/ls", str(tmp)], stdout=subprocess.DEVNULL)
        subprocess.run(["sh", "-c", "echo tool > /dev/null"])
        subprocess.run(["/bin/true"])
        for j in range(10):
            (tmp / f"w{j}.txt").write_text("x" * 1000)
    print(time.monotonic() - t0)
""")


def run_agent(port: int, cafile: Path) -> float:
    tmp = tempfile.mkdtemp(prefix="obs-agent-")
    out = subprocess.run([sys.executable, "-c", AGENT, str(port), str(cafile), str(ITER), tmp],
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip())


def main() -> None:
    only = os.environ.get("OBS_BENCH_OBSERVERS")  # e.g. "obs-net,obs-llm": a subset
    present = {t: a for t, a in OBSERVERS.items() if not only or t in only.split(",")}
    base: list[float] = []
    observed: list[float] = []
    with mapped({"api.anthropic.com": "127.0.0.93"}), \
            tls_server(["api.anthropic.com"], addr="127.0.0.93") as srv:
        run_agent(srv.port, srv.cafile)  # warm caches
        for _ in range(ROUNDS):
            base.append(run_agent(srv.port, srv.cafile))
            with ExitStack() as stack:
                tools = [Tool(t, *a) for t, a in present.items()]
                for t in tools:
                    stack.callback(t.cleanup)
                    stack.callback(t.stop)
                time.sleep(0.5)
                observed.append(run_agent(srv.port, srv.cafile))
            print(f"round: none {base[-1]:.3f}s  all {observed[-1]:.3f}s", flush=True)
    mb, mo = statistics.median(base), statistics.median(observed)
    ratio = mo / mb
    print(table([["none", f"{mb:.3f}"], ["all observers", f"{mo:.3f}"]],
                ["observers", "median wall s"]))
    print(f"slowdown with {', '.join(present)}: {100 * (ratio - 1):+.2f}% (ratio {ratio:.4f})")
    save("overhead" + (f"-{'-'.join(present)}" if only else ""), {"iterations": ITER, "rounds": ROUNDS, "observers": list(present),
                      "baseline_s": base, "observed_s": observed, "ratio": ratio})


if __name__ == "__main__":
    main()
