"""Added latency of an *allowed* connect() while obs-enforce guards the caller's cgroup.

Two cgroups in the same run: one guarded by a single obs-enforce (a 1000-address deny-file
plus --allow-provider Anthropic, so every map it uses is populated), one not. Rounds
alternate between them (ABBA) so a noisy machine shifts both alike. Each round is one client
process that joins its cgroup and times N/ROUNDS connect() calls to a local listener (closed
with RST: no TIME_WAIT piles up). Client and listener are pinned to different CPUs: unpinned,
where the scheduler puts them moves a round's median by more than the guard costs. Each side's
median over its rounds' medians is compared; the ratio is printed, never asserted.
OBS_BENCH_ENFORCE_N sets N, the connects per side (default 20000).
Run as root: ``.venv/bin/python tests/bench/bench_enforce.py``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.tools import tool_cmd  # noqa: E402

CGROUP2 = Path("/sys/fs/cgroup/unified")
N = int(os.environ.get("OBS_BENCH_ENFORCE_N", 20000))  # connects per side, over all rounds
ROUNDS = 10

CLIENT = r"""
import json, os, socket, struct, sys, time
cg, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(os.path.join(cg, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})  # the listener has the other CPU
linger = struct.pack("ii", 1, 0)
clock = time.perf_counter_ns
out = []
for _ in range(n):
    s = socket.socket()
    t0 = clock()
    s.connect((host, port))
    out.append(clock() - t0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.close()
out.sort()
print(json.dumps({"median": out[len(out) // 2], "p99": out[len(out) * 99 // 100]}))
"""


def serve(sock: socket.socket, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        conn.close()


def one_round(cg: Path, addr: tuple[str, int]) -> dict[str, int]:
    n = str(N // ROUNDS)
    p = subprocess.run([sys.executable, "-c", CLIENT, str(cg), addr[0], str(addr[1]), n],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def main() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[0]})  # the accepting side; clients take the last CPU
    tag = uuid.uuid4().hex[:8]
    guarded, bare = CGROUP2 / f"obs-bench-{tag}-g", CGROUP2 / f"obs-bench-{tag}-b"
    work = Path(tempfile.mkdtemp(prefix="obs-bench-enforce-"))
    work.chmod(0o755)
    deny = work / "deny.txt"
    deny.write_text("".join(f"{ipaddress.IPv4Address(0x0A000000 + i)}\n" for i in range(1000)))
    deny.chmod(0o644)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    addr = listener.getsockname()
    stop = threading.Event()
    threading.Thread(target=serve, args=(listener, stop), daemon=True).start()
    guarded.mkdir()
    bare.mkdir()
    hb = work / "hb.json"
    tool = subprocess.Popen(tool_cmd("obs-enforce", str(guarded), str(deny), "--allow-provider",
                                     "Anthropic", "--format", "json", "--heartbeat-file",
                                     str(hb)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not hb.exists():
            if tool.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"obs-enforce did not start: {tool.communicate()[1]!r}")
            time.sleep(0.05)
        results: dict[str, list[dict[str, int]]] = {"without guard": [], "with guard": []}
        sides = [("without guard", bare), ("with guard", guarded)]
        for i in range(ROUNDS):
            for name, cg in sides[:: 1 if i % 2 else -1]:  # ABBA: neither side always first
                results[name].append(one_round(cg, addr))
    finally:
        tool.terminate()
        tool.wait(timeout=30)
        stop.set()
        listener.close()
        for cg in (guarded, bare):
            for _ in range(50):
                try:
                    cg.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
    mid = {k: statistics.median(r["median"] for r in v) for k, v in results.items()}
    p99 = {k: statistics.median(r["p99"] for r in v) for k, v in results.items()}
    print(f"connect() to a local listener, {N} per side in {ROUNDS} alternating rounds "
          "(median over rounds of each round's median and p99):")
    for name in results:
        print(f"  {name:<14} median {mid[name] / 1000:7.2f} us   p99 {p99[name] / 1000:7.2f} us")
    ratio = mid["with guard"] / mid["without guard"]
    print(f"  ratio (with / without guard, median): {ratio:.3f}")
    for name, rounds in results.items():
        print(f"  {name} medians by round (us): "
              + " ".join(f"{r['median'] / 1000:.2f}" for r in rounds))


if __name__ == "__main__":
    main()
