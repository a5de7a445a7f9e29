"""Network namespaces with only loopback, for running real agents that must reach nothing else.

`ip netns exec NAME` bind-mounts /etc/netns/NAME/hosts over /etc/hosts, so provider hostnames
resolve to loopback inside the namespace without touching the machine's /etc/hosts.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def netns(hosts: dict[str, str], prefix: str = "obs-agent") -> Iterator[str]:
    """A fresh namespace (lo up, nothing else) whose /etc/hosts maps {hostname: address};
    yields its name, deletes it afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    etc = Path("/etc/netns") / name
    etc.mkdir(parents=True)
    lines = ["127.0.0.1 localhost", "::1 localhost", *(f"{a} {h}" for h, a in hosts.items())]
    (etc / "hosts").write_text("\n".join(lines) + "\n")
    # No resolver is reachable: make that explicit rather than waiting on a dead nameserver.
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(etc, ignore_errors=True)


def in_netns(name: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", name, *argv]
