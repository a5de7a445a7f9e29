#!/usr/bin/env python3
"""obs-ssl: TLS plaintext (SslContent) and LLM API facts (LlmApi) from uprobes on OpenSSL,
GnuTLS, NSS and Go's crypto/tls."""

from __future__ import annotations

from typing import Annotated

import typer

from libobs.events import Clock, hostname
from libobs.tls import attach
from libobs.tls.decode import SslDecoder
from libobs.tool import options, start
from libobs.tool.loop import Event, Loop

TOOL = "obs-ssl"
EXAMPLES = """Examples:

\b
  sudo obs-ssl                          # plaintext and LLM API facts of every TLS user
  sudo obs-ssl --api-only | jq -c 'select(.event.LlmApi)'   # model and tokens only
  sudo obs-ssl --comm python3 --no-redact                   # keep credentials (careful)
  sudo obs-ssl --lib /opt/app/lib/libssl.so.3               # a private OpenSSL build too
  sudo obs-ssl --lib ./my-go-agent --rescan 0               # a Go program, before it starts
  sudo obs-ssl --pid 1841 --duration 60 > agent.ndjson
"""

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
def main(
    lib: options.TlsLibOpt = None,
    content: Annotated[bool, typer.Option(
        "--content/--no-content", envvar="OBS_CONTENT",
        help="Emit SslContent (the plaintext of every call).")] = True,
    api_only: Annotated[bool, typer.Option(
        "--api-only", envvar="OBS_API_ONLY",
        help="Only LlmApi events, no SslContent.")] = False,
    redact: Annotated[bool, typer.Option(
        "--redact/--no-redact", envvar="OBS_REDACT",
        help="Replace credentials (Authorization, x-api-key, sk-... keys) in SslContent.")] = True,
    max_capture: Annotated[int, typer.Option(
        "--max-capture", envvar="OBS_MAX_CAPTURE", min=64, max=16384,
        help="KiB captured per SSL call, a power of two; longer calls set truncated.")] = 1024,
    exported_only: Annotated[bool, typer.Option(
        "--exported-only", envvar="OBS_EXPORTED_ONLY",
        help="Probe only the exported SSL_* functions, never the internal function they "
             "share (costlier per call where the exported ones start with an instruction "
             "uprobes must single-step).")] = False,
    rescan: options.RescanOpt = 10.0,
    pid: options.PidOpt = None, comm: options.CommOpt = None, cgroup: options.CgroupOpt = None,
    fmt: options.FormatOpt = None, heartbeat_interval: options.HeartbeatOpt = 60.0,
    heartbeat_file: options.HeartbeatFileOpt = None, duration: options.DurationOpt = None,
    ring_size: options.RingOpt = 64,
) -> None:
    """Trace the plaintext of TLS connections made through OpenSSL (SSL_read/SSL_write and
    their _ex forms), GnuTLS, NSS (NSPR's PR_Read/PR_Write/PR_Recv/PR_Send) and Go's
    crypto/tls, and report LLM API requests and responses (LlmApi) with model and
    token counts, as NDJSON events."""
    content = content and not api_only
    options.checked(TOOL, lambda: options.power_of_two(max_capture, "--max-capture", "KiB"))
    options.checked(TOOL, lambda: attach.check_libs(lib or []))
    common = start.Common(pid, comm, cgroup, fmt, heartbeat_interval, heartbeat_file, duration,
                          ring_size)
    features = ["llm-api"] + (["content"] if content else []) + (["redact"] if redact else [])
    job = start.prepare(TOOL, common, features, ["sched:sched_process_exec"])
    ssl = attach.attach(TOOL, job, lib or [], exported_only=exported_only,
                        defines={"MAX_CAPTURE": max_capture << 10})
    decoder = SslDecoder(Clock.now(), hostname(), ssl.libs, content=content, api=True,
                         redact_content=redact, lines=job.cfg.fmt == "json")
    rescanner = attach.Rescanner(TOOL, ssl, rescan)

    def tick(now: float) -> list[Event]:
        rescanner(now)
        return decoder.tick(now)

    raise typer.Exit(Loop(job.cfg, [ssl.program], decoder, tick=tick,
                          attached=ssl.probe_names, unreadable=lambda: ssl.unreadable,
                          extra=decoder.order.heartbeat, news=decoder.order.news).run())


def run() -> None:
    options.main(app, TOOL)


if __name__ == "__main__":
    run()
