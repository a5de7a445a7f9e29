#!/usr/bin/env python3
"""obs-ssl: TLS plaintext (SslContent) and LLM API facts (LlmApi) from OpenSSL uprobes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from libobs.events import Clock, hostname
from libobs.kernel import program
from libobs.tls import libraries
from libobs.tls.decode import SslDecoder
from libobs.tool import options as cli
from libobs.tool.loop import Loop, err

TOOL = "obs-ssl"
EXAMPLES = """Examples:

\b
  sudo obs-ssl                          # plaintext and LLM API facts of every OpenSSL user
  sudo obs-ssl --api-only | jq -c 'select(.event.LlmApi)'   # model and tokens only
  sudo obs-ssl --comm python3 --no-redact                   # keep credentials (careful)
  sudo obs-ssl --lib /opt/app/lib/libssl.so.3               # a private OpenSSL build too
  sudo obs-ssl --pid 1841 --duration 60 > agent.ndjson
"""

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
def main(
    lib: Annotated[list[Path] | None, typer.Option(
        "--lib", metavar="PATH", help="Also attach to this libssl or binary with OpenSSL built in "
                      "(repeatable). System libssl, node and libraries of running "
                      "processes are found without it.")] = None,
    content: Annotated[bool, typer.Option(
        "--content/--no-content", envvar="OBS_CONTENT",
        help="Emit SslContent (the plaintext of every call).")] = True,
    api_only: Annotated[bool, typer.Option(
        "--api-only", help="Only LlmApi events, no SslContent.")] = False,
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
    rescan: Annotated[float, typer.Option(
        "--rescan", envvar="OBS_RESCAN", min=0,
        help="Seconds between looks at /proc for newly loaded OpenSSL copies (0: never).")] = 10.0,
    pid: cli.PidOpt = None, comm: cli.CommOpt = None, cgroup: cli.CgroupOpt = None,
    fmt: cli.FormatOpt = None, heartbeat_interval: cli.HeartbeatOpt = 60.0,
    heartbeat_file: cli.HeartbeatFileOpt = None, duration: cli.DurationOpt = None,
    ring_size: cli.RingOpt = 64,
) -> None:
    """Trace the plaintext of TLS connections made through OpenSSL (SSL_read/SSL_write and
    their _ex forms) and report LLM API requests and responses (LlmApi) with model and
    token counts, as NDJSON events."""
    filters = cli.Filters(pid, comm, cgroup)
    content = content and not api_only
    extra = [str(p) for p in lib or []]
    try:
        filters.validate()
        if max_capture & (max_capture - 1):
            raise cli.UsageError("--max-capture must be a power of two (KiB)")
        for path in extra:
            if not libraries.file_exports(path):
                raise cli.UsageError(f"--lib {path}: not an ELF file exporting any of "
                                     f"{', '.join(libraries.SSL_FUNCTIONS)}")
        features = ["llm-api"] + (["content"] if content else []) + (["redact"] if redact else [])
        cfg = cli.loop_config(TOOL, fmt, heartbeat_interval, heartbeat_file, duration, features)
        ring = cli.ring_bytes(ring_size)
    except cli.UsageError as e:
        raise cli.usage_exit(TOOL, e) from None
    cli.preflight_or_exit(TOOL, ["sched:sched_process_fork"] if pid else [])
    problem = libraries.uprobes_missing()
    if problem:
        err(TOOL, problem)
        raise typer.Exit(1)

    defines = program.base_defines(ring) | filters.defines() | {"MAX_CAPTURE": max_capture << 10}
    ssl = libraries.SslProbes(defines, extra, exported_only)
    filters.apply(ssl.program.bpf)
    for problem in ssl.problems:
        err(TOOL, problem)
    if not ssl.libs:
        err(TOOL, "found no OpenSSL to attach to")
        ssl.program.close()
        raise typer.Exit(1)
    n = len(ssl.libs)
    err(TOOL, f"attached to {n} OpenSSL cop{'y' if n == 1 else 'ies'}: {ssl.describe()}")
    decoder = SslDecoder(Clock.now(), hostname(), ssl.libs, content=content, api=True,
                         redact_content=redact)
    next_scan = [0.0]

    def tick(now: float) -> list[dict[str, Any]]:
        if rescan and now != float("inf") and now >= next_scan[0]:
            if next_scan[0]:
                for note in ssl.rescan():
                    err(TOOL, note)
            next_scan[0] = now + rescan
        return decoder.tick(now)

    loop = Loop(cfg, [ssl.program], decoder, tick=tick, attached=ssl.probe_names)
    raise typer.Exit(loop.run())



def run() -> None:
    cli.main(app, TOOL)


if __name__ == "__main__":
    run()
