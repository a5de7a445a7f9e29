#!/usr/bin/env python3
"""obs-enforce: refuse an agent's connections to denied addresses and unapproved providers."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from libobs import cgroup as cgroups
from libobs.events import Clock, hostname
from libobs.guard import egress, enforce
from libobs.guard.denyfile import DenyFileError
from libobs.guard.policy import ProviderPolicy
from libobs.kernel import bpflink, host, program
from libobs.providers import default_rules
from libobs.tool import options as cli
from libobs.tool.loop import Loop, err

TOOL = "obs-enforce"
EXAMPLES = """Examples:

\b
  sudo obs-enforce /sys/fs/cgroup/unified/agent deny.txt     # refuse what deny.txt lists
  sudo obs-enforce agent --allow-provider Anthropic          # no other LLM provider
  sudo obs-enforce agent deny.txt --allow-provider OpenAi --deny-unclassified
  sudo obs-enforce agent deny.txt --pin                      # keep the cage after exit
  obs-net | obs-merge | controller.py deny.txt Anthropic   # see deploy/examples
"""
STARTUP_WAIT_S = 2.0  # up-front lookups the guard waits for before it reports ready

app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
def main(
    cgroup: Annotated[str, typer.Argument(
        envvar="OBS_ENFORCE_CGROUP", show_envvar=False, metavar="CGROUP",
        help="The agent's cgroup-v2 directory (absolute, or relative to the v2 root). The v2 "
             "root itself (every process on the host) only with --whole-host.")],
    denyfile: Annotated[Path | None, typer.Argument(
        envvar="OBS_DENY_FILE", show_envvar=False, metavar="DENYFILE",
        help="Deny-file: one IPv4, IPv6 or hostname per line; re-read when it changes.")] = None,
    allow_provider: Annotated[list[str] | None, typer.Option(
        "--allow-provider", envvar="OBS_ALLOW_PROVIDER", metavar="NAME",
        help="Approved LLM provider (repeatable); every other known provider is refused.")] = None,
    deny_unclassified: Annotated[bool, typer.Option(
        "--deny-unclassified", envvar="OBS_DENY_UNCLASSIFIED",
        help="With --allow-provider: refuse every destination that is not an approved "
             "provider, a trusted DNS server (port 53) or loopback.")] = False,
    dns_server: Annotated[list[str] | None, typer.Option(
        "--dns-server", envvar="OBS_DNS_SERVER", metavar="ADDR",
        help="Trusted DNS server address (repeatable; default: /etc/resolv.conf's).")] = None,
    pin: Annotated[bool, typer.Option(
        "--pin", envvar="OBS_PIN",
        help="Pin the guard under /sys/fs/bpf/obs/<cgroup-id>/ so it outlives this process "
             "(fail-closed); a later run takes it over without a gap.")] = False,
    whole_host: Annotated[bool, typer.Option(
        "--whole-host", envvar="OBS_WHOLE_HOST",
        help="Allow CGROUP to be the cgroup-v2 root: guard every process on this host.")] = False,
    fmt: cli.FormatOpt = None, heartbeat_interval: cli.HeartbeatOpt = 60.0,
    heartbeat_file: cli.HeartbeatFileOpt = None, duration: cli.DurationOpt = None,
    ring_size: cli.RingOpt = 4,
) -> None:
    """Attach connect4/6 and UDP sendmsg4/6 guards to CGROUP: a refused connect() or sendmsg()
    fails with EPERM and is reported as a Denied event (NDJSON). Unlisted destinations pass."""
    try:
        target = cgroups.resolve_dir(cgroup, host.cgroup2_root(), root_ok=whole_host,
                                     what="CGROUP", root_hint="pass --whole-host to mean it")
        if denyfile is None and not allow_provider:
            raise cli.UsageError("give a DENYFILE, --allow-provider, or both")
        if deny_unclassified and not allow_provider:
            raise cli.UsageError("--deny-unclassified needs --allow-provider")
        rules = default_rules()
        providers = (ProviderPolicy(allow_provider, deny_unclassified, rules, guard=TOOL)
                     if allow_provider else None)
        servers = ([ipaddress.ip_address(a) for a in dns_server] if dns_server else
                   enforce.nameservers(_read("/etc/resolv.conf")))
        if pin and not bpflink.is_bpffs():
            raise cli.UsageError(f"--pin needs bpffs at {bpflink.BPFFS} (mount -t bpf bpf "
                                 f"{bpflink.BPFFS})")
        features = ["egress"] + (["deny-file"] if denyfile else []) \
            + (["providers", "dns-learning"] if providers else []) \
            + (["deny-unclassified"] if deny_unclassified else []) + (["pin"] if pin else [])
        cfg = cli.loop_config(TOOL, fmt, heartbeat_interval, heartbeat_file, duration, features)
        ring = cli.ring_bytes(ring_size)
    except (cli.UsageError, ValueError) as e:
        raise cli.usage_exit(TOOL, e) from None

    # Before any hostname is resolved: without root there is nothing to resolve it for.
    for check in (host.check_root, host.check_bcc, host.check_headers, host.check_btf):
        if reason := check():
            err(TOOL, reason)
            raise typer.Exit(1)

    enforcer = enforce.Enforcer(
        watcher=enforce.denyfile_watcher(denyfile) if denyfile else None, providers=providers,
        rules=rules, servers=servers, pool=enforce.ResolverPool(),
        report=lambda msg: err(TOOL, msg))
    try:
        enforcer.start(wait=STARTUP_WAIT_S)
    except DenyFileError as e:
        raise cli.usage_exit(TOOL, e) from None

    pins = enforce.pin_dir(target) if pin else None
    if not pin and any(enforce.pin_dir(target).glob("*")):
        err(TOOL, f"a pinned guard from an earlier --pin run is still attached "
                  f"(remove {enforce.pin_dir(target)} to release it)")
    defines = program.base_defines(ring) | {"ALLOW_MODE": enforcer.allow_mode}
    prog = program.Program("enforce.bpf.c", defines)
    maps = enforce.BccMaps(prog.bpf)
    enforcer.sync(maps)  # the maps are complete before the first program is attached
    try:
        links = enforce.attach(prog.bpf, target, pins)
    except Exception as e:  # bcc raises bare Exceptions; the verifier log went to stderr
        prog.close()
        err(TOOL, f"cannot attach to {target}: {e}")
        raise typer.Exit(1) from None

    def tick(now: float) -> list[dict[str, object]]:
        enforcer.tick(now)
        enforcer.sync(maps)
        return []

    decoder = egress.Decoder(Clock.now(), hostname(), enforcer.ids, enforcer.on_dns)
    attached = [f"cgroup:{link.name}:{target}" for link in links]
    try:
        status = Loop(cfg, [prog], decoder, tick=tick, attached=attached).run()
    finally:
        for link in links:
            link.close()  # detaches, unless pinned
    raise typer.Exit(status)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def run() -> None:
    cli.main(app, TOOL)


if __name__ == "__main__":
    run()
