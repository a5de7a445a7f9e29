#!/usr/bin/env python3
"""obs-net: whom an agent talks to — every connect() (with its TLS server name) and DNS."""

from __future__ import annotations

from typing import Annotated

import typer

from libobs.events import Clock, hostname
from libobs.net.decode import NetDecoder
from libobs.tool import options, start
from libobs.tool.loop import Loop

TOOL = "obs-net"
EXAMPLES = """Examples:

\b
  sudo obs-net                                       # connections and DNS, human lines on a tty
  sudo obs-net | jq -c 'select(.event.Egress.sni)'   # TLS connections with their server name
  sudo obs-net | jq -c 'select(.provider)'           # only traffic to LLM providers
  sudo obs-net --no-dns --comm node                  # connections of processes named node
  sudo obs-net --pid 1841 --sni-wait 1               # an agent and its tools
  sudo obs-net --providers my-llms.toml              # extra hostname -> provider rules
"""
TRACEPOINTS = ["syscalls:sys_enter_connect", "syscalls:sys_exit_connect",
               "syscalls:sys_enter_close", "syscalls:sys_enter_write",
               "syscalls:sys_enter_writev", "syscalls:sys_enter_sendto",
               "syscalls:sys_enter_sendmsg", "syscalls:sys_enter_sendmmsg",
               "sock:inet_sock_set_state"]
DNS_TRACEPOINTS = ["syscalls:sys_enter_read", "syscalls:sys_exit_read",
                   "syscalls:sys_enter_recvfrom", "syscalls:sys_exit_recvfrom",
                   "syscalls:sys_enter_recvmsg", "syscalls:sys_exit_recvmsg",
                   "syscalls:sys_enter_recvmmsg", "syscalls:sys_exit_recvmmsg"]

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
def main(
    dns: Annotated[bool, typer.Option("--dns/--no-dns", envvar="OBS_DNS",
                   help="Dns events: queries to port 53 joined with their replies.")] = True,
    sni_wait: Annotated[float, typer.Option(
        "--sni-wait", envvar="OBS_SNI_WAIT", min=0, max=60,
        help="Seconds a TCP connection's Egress waits, once established, for a first write "
             "that may be a TLS ClientHello; then it is emitted without sni.")] = 0.3,
    dns_timeout: Annotated[float, typer.Option(
        "--dns-timeout", envvar="OBS_DNS_TIMEOUT", min=0.1, max=300,
        help="Seconds a query waits for its reply; then it is emitted with answers null.")] = 5.0,
    providers: options.ProvidersOpt = None,
    pid: options.PidOpt = None, comm: options.CommOpt = None, cgroup: options.CgroupOpt = None,
    fmt: options.FormatOpt = None, heartbeat_interval: options.HeartbeatOpt = 60.0,
    heartbeat_file: options.HeartbeatFileOpt = None, duration: options.DurationOpt = None,
    ring_size: options.RingOpt = 16,
) -> None:
    """Trace outgoing connections (Egress, one per connection, with the TLS SNI when the
    first write is a ClientHello) and DNS queries with their answers (Dns), as NDJSON."""
    rules = options.checked(TOOL, lambda: options.provider_rules(providers))
    common = start.Common(pid, comm, cgroup, fmt, heartbeat_interval, heartbeat_file, duration,
                          ring_size)
    job = start.prepare(TOOL, common, ["egress", "sni"] + (["dns"] if dns else []),
                        TRACEPOINTS + (DNS_TRACEPOINTS if dns else []))
    prog = job.program("net.bpf.c", {"SNI": True, "DNS": dns})
    decoder = NetDecoder(Clock.now(), hostname(), rules, hold=sni_wait,
                         dns_timeout=dns_timeout)
    raise typer.Exit(Loop(job.cfg, [prog], decoder, tick=decoder.tick).run())



def run() -> None:
    options.main(app, TOOL)


if __name__ == "__main__":
    run()
