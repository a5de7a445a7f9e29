"""What obs sees of each real agent, measured: `python -m tests.support.agent_table [--nagle]
[--readme]` prints one markdown table row per agent — what the agent sent (from the stand-in's
log) next to what obs-llm --api reported — and one line per request with obs's numbers beside
the server's; `--readme` (what `nox -s agents_table` runs) also puts the README's per-agent
table (issue 13 item 5), measured by the same run."""

from __future__ import annotations

import sys
from typing import Any

from tests.support import readme
from tests.support.agent_obs import (
    Observed,
    compare,
    latency_right,
    observe,
    shared_calls,
    ttft_right,
    usage_exact,
)
from tests.support.agents import AGENTS, STACK_OF, installed

README_HEAD = ("| agent | TLS stack | requests it sent | LlmCalls | TTFT and latency within 10 ms "
               "of the server | model + exact tokens | usage from |\n|---|---|---|---|---|---|---|")


def summary(agent: str, version: str, o: Observed) -> str:
    rows = compare(o.run.log, o.calls, o.offset_ns)
    models = [r for r in rows if r["model_call"]]
    others = [r for r in rows if not r["model_call"]]
    conns = len({r["client_port"] for r in o.run.log})
    sent = (f"{len(models)} model requests ({', '.join(sorted({r['path'] for r in models}))}, "
            f"~{sum(r['req_body'] for r in models) // max(1, len(models)) // 1000} KB), "
            f"{len(others)} others ({', '.join(sorted({r['method'] + ' ' + r['path'] for r in others})) or '-'}), "
            f"{conns} connection(s)")
    ttft = ", ".join(f"{r['obs_ttft_ms']:.1f}/{r['server_ttft_ms']:.1f}" for r in models
                     if r.get("obs_ttft_ms") is not None)
    read = sum(1 for r in models if usage_exact(r))
    sources = sorted({str(r.get("obs_usage_source")) for r in models})
    seen = (f"{len(o.calls)} LlmCalls for {len(rows)} requests"
            f"{f', {len(shared_calls(rows))} merged' if shared_calls(rows) else ''}; "
            f"TTFT obs/server ms: {ttft}; model+tokens exact on {read}/{len(models)} "
            f"(usage_source {'/'.join(sources)})")
    return f"| {agent} {version} | {sent} | {seen} |"


def readme_row(agent: str, version: str, o: Observed) -> str:
    """The README's row: each column a count measured in this run, not a verdict typed in."""
    rows = compare(o.run.log, o.calls, o.offset_ns)
    models = [r for r in rows if r["model_call"]]
    timed = sum(1 for r in models if ttft_right(r) and latency_right(r))
    exact = sum(1 for r in models if usage_exact(r))
    sources = sorted({str(c.get("usage_source")) for c in o.calls
                      if c.get("usage_source") is not None})
    merged = len(shared_calls(rows))
    return (f"| {agent} {version} | {STACK_OF[agent]} | {len(models)} model + "
            f"{len(rows) - len(models)} other | {len(o.calls)}{f' ({merged} merged)' if merged else ''} "
            f"| {timed}/{len(models)} | {exact}/{len(models)} | {', '.join(sources) or '—'} |")


def detail(o: Observed) -> list[str]:
    out = []
    for r in compare(o.run.log, o.calls, o.offset_ns):
        fields: dict[str, Any] = {k: r.get(k) for k in (
            "method", "path", "req_body", "call", "server_ttft_ms", "server_ttft_max_ms",
            "obs_ttft_ms", "server_latency_ms", "obs_latency_ms", "obs_req_bytes", "obs_model",
            "obs_usage_source")}
        out.append("    " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in fields.items()))
    return out


def main() -> None:
    nagle = "--nagle" in sys.argv
    have = installed()
    table = [README_HEAD]
    print(f"server: {'Nagle on' if nagle else 'TCP_NODELAY'}, 250 ms before each model answer")
    print("| agent | what it sent | what obs reported |\n|---|---|---|")
    details = []
    for agent in AGENTS:
        if agent not in have:
            continue
        version, exe = have[agent]
        o = observe(agent, exe, nagle=nagle)
        print(summary(agent, version, o), flush=True)
        table.append(readme_row(agent, version, o))
        details += [f"{agent}:", *detail(o)]
    print("\n".join(details))
    print("\n".join(table))
    if "--readme" in sys.argv:
        readme.write("agents-nagle" if nagle else "agents", "\n".join(table))


if __name__ == "__main__":
    main()
