#!/usr/bin/env python3
"""obs-llm: one event per LLM API request — bytes, time to first byte, latency — from TCP."""

from __future__ import annotations

from typing import Annotated

import typer

from libobs.events import Clock, hostname
from libobs.kernel import program
from libobs.net.apijoin import JoinedDecoder
from libobs.net.decode import untracker
from libobs.net.llmcalls import LlmCallDecoder
from libobs.tls import attach
from libobs.tool import options as cli
from libobs.tool.loop import Loop, err

TOOL = "obs-llm"
EXAMPLES = """Examples:

\b
  sudo obs-llm | jq -c .                              # every call to a known LLM provider
  sudo obs-llm | jq -c '.event.LlmCall | {sni, ttft, latency}'
  sudo obs-llm --all-tls --comm python3               # every TLS request of python3 processes
  sudo obs-llm --pid 1841 --idle-flush 30             # an agent; long pauses inside responses
  sudo obs-llm --providers my-llms.toml               # extra hostname -> provider rules
  sudo obs-llm --api | jq -c '.event.LlmCall | {model, prompt_tokens, completion_tokens, ttft}'
"""
TRACEPOINTS = ["syscalls:sys_enter_connect", "syscalls:sys_exit_connect",
               "syscalls:sys_enter_close", "syscalls:sys_enter_write",
               "syscalls:sys_enter_writev", "syscalls:sys_enter_sendto",
               "syscalls:sys_enter_sendmsg", "syscalls:sys_enter_sendmmsg",
               "sock:inet_sock_set_state", "sock:sock_send_length", "tcp:tcp_probe"]

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
def main(
    all_tls: Annotated[bool, typer.Option(
        "--all-tls", envvar="OBS_ALL_TLS",
        help="Follow every TLS connection, not only those to classified LLM providers.")] = False,
    idle_flush: Annotated[float, typer.Option(
        "--idle-flush", envvar="OBS_IDLE_FLUSH", min=0.05, max=3600,
        help="Seconds without a response byte after which a request's exchange is reported "
             "(it is reported sooner when the next request starts or the connection "
             "ends).")] = 10.0,
    api: Annotated[bool, typer.Option(
        "--api", envvar="OBS_API",
        help="Also read TLS plaintext through OpenSSL uprobes (as obs-ssl does) and add the "
             "model and token counts to each LlmCall.")] = False,
    lib: Annotated[list[str] | None, typer.Option(
        "--lib", envvar="OBS_LIB",
        help="With --api: another OpenSSL library or binary to attach to (repeatable).")] = None,
    providers: cli.ProvidersOpt = None,
    pid: cli.PidOpt = None, comm: cli.CommOpt = None, cgroup: cli.CgroupOpt = None,
    fmt: cli.FormatOpt = None, heartbeat_interval: cli.HeartbeatOpt = 60.0,
    heartbeat_file: cli.HeartbeatFileOpt = None, duration: cli.DurationOpt = None,
    ring_size: cli.RingOpt = 16,
) -> None:
    """Report each HTTP request/response exchange on TLS connections to LLM providers
    (LlmCall): request and response bytes, time to first response byte (ttft) and latency,
    measured from packet arrival times, also on keep-alive connections."""
    filters = cli.Filters(pid, comm, cgroup)
    try:
        filters.validate()
        rules = cli.provider_rules(providers)
        features = ["llm"] + (["all-tls"] if all_tls else []) + (["api"] if api else [])
        cfg = cli.loop_config(TOOL, fmt, heartbeat_interval, heartbeat_file, duration, features)
        ring = cli.ring_bytes(ring_size)
    except cli.UsageError as e:
        raise cli.usage_exit(TOOL, e) from None
    cli.preflight_or_exit(TOOL, TRACEPOINTS)

    defines = program.base_defines(ring) | filters.defines() | {"SNI": True, "LLM": True}
    prog = program.Program("net.bpf.c", defines)
    filters.apply(prog.bpf)
    clock = Clock.now()
    decoder = LlmCallDecoder(clock, hostname(), rules, untracker(prog.table("sks")),
                             all_tls=all_tls, idle=idle_flush)
    if not api:
        raise typer.Exit(Loop(cfg, [prog], decoder, tick=decoder.tick).run())
    ssl = attach.load(program.base_defines(ring) | filters.defines(), lib or [])
    filters.apply(ssl.program.bpf)
    for line in [ssl.describe(), *ssl.problems]:
        err(TOOL, line)
    joined = JoinedDecoder(decoder, attach.SslApi(clock))
    raise typer.Exit(Loop(cfg, [prog, ssl.program], joined, tick=joined.tick,
                          attached=prog.attached() + ssl.probe_names).run())



def run() -> None:
    cli.main(app, TOOL)


if __name__ == "__main__":
    run()
