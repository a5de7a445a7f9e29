#!/usr/bin/env python3
"""obs-llm: one event per LLM API request — bytes, time to first byte, latency — from TCP."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from libobs.events import NS, Clock, hostname
from libobs.net.decode import untracker
from libobs.net.llmcalls import LlmCallDecoder
from libobs.tool import options, start
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
  sudo obs-llm --api --no-transcripts                 # tokens from the wire only
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
             "model and token counts to each LlmCall; one LlmCall per HTTP/2 stream, timed "
             "from the plaintext (timing: tls).")] = False,
    transcripts: Annotated[bool, typer.Option(
        "--transcripts/--no-transcripts", envvar="OBS_TRANSCRIPTS",
        help="With --api: where the wire cannot be read (Codex's rustls), take model and "
             "tokens from the transcript the agent has open (Codex's rollout-*.jsonl, Claude "
             "Code's project .jsonl); usage_source says which.")] = True,
    transcript_wait: Annotated[float, typer.Option(
        "--transcript-wait", envvar="OBS_TRANSCRIPT_WAIT", min=0, max=60,
        help="With --api: seconds a call of an agent with a transcript open waits for its "
             "usage line before it goes out with nulls.")] = 2.0,
    lib: options.TlsLibOpt = None, rescan: options.RescanOpt = 10.0,
    providers: options.ProvidersOpt = None,
    pid: options.PidOpt = None, comm: options.CommOpt = None, cgroup: options.CgroupOpt = None,
    fmt: options.FormatOpt = None, heartbeat_interval: options.HeartbeatOpt = 60.0,
    heartbeat_file: options.HeartbeatFileOpt = None, duration: options.DurationOpt = None,
    ring_size: options.RingOpt = 16,
) -> None:
    """Report each HTTP request/response exchange on TLS connections to LLM providers
    (LlmCall): request and response bytes, time to first response byte (ttft) and latency,
    measured from packet arrival times, also on keep-alive connections."""
    rules = options.checked(TOOL, lambda: options.provider_rules(providers))
    if api:
        # imported only here: the TLS decoders and the join were half of a plain start's imports
        from libobs.net.apijoin import ApiJoin, JoinedDecoder
        from libobs.net.transcripts import Transcripts
        from libobs.tls import attach

        options.checked(TOOL, lambda: attach.check_libs(lib or []))
    common = start.Common(pid, comm, cgroup, fmt, heartbeat_interval, heartbeat_file, duration,
                          ring_size)
    features = ["llm"] + (["all-tls"] if all_tls else []) + (["api"] if api else []) \
        + (["transcripts"] if api and transcripts else [])
    job = start.prepare(TOOL, common, features,
                        TRACEPOINTS + (["sched:sched_process_exec"] if api else []))
    prog = job.program("net.bpf.c", {"SNI": True, "LLM": True})
    clock = Clock.now()
    decoder = LlmCallDecoder(clock, hostname(), rules, untracker(prog.table("sks")),
                             all_tls=all_tls, idle=idle_flush)
    if not api:
        raise typer.Exit(Loop(job.cfg, [prog], decoder, tick=decoder.tick).run())
    ssl = attach.attach(TOOL, job, lib or [], required=False)
    join = ApiJoin(transcripts=Transcripts(lambda m: err(TOOL, m)) if transcripts else None,
                   transcript_wait_ns=int(transcript_wait * NS))
    ssl_api = attach.SslApi(clock)
    joined = JoinedDecoder(decoder, ssl_api, join, unreadable_of=ssl.unreadable_of)
    rescanner = attach.Rescanner(TOOL, ssl, rescan)

    def tick(now: float) -> list[dict[str, Any]]:
        rescanner(now)
        return joined.tick(now)

    raise typer.Exit(Loop(job.cfg, [prog, ssl.program], joined, tick=tick,
                          attached=prog.attached() + ssl.probe_names,
                          unreadable=lambda: ssl.unreadable,
                          extra=lambda: {**join.heartbeat(), **ssl_api.order.heartbeat()},
                          news=lambda: [*join.news(), *ssl_api.order.news()]).run())


def run() -> None:
    options.main(app, TOOL)


if __name__ == "__main__":
    run()
