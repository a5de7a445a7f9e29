#!/usr/bin/env python3
"""Deny the peer of every Egress to an LLM provider not approved, by appending it to a
deny-file that obs-enforce watches (atomically: a new file renamed over the old one).

    obs-net | obs-merge | controller.py /etc/obs/deny.txt Anthropic OpenAi &
    obs-enforce /sys/fs/cgroup/unified/agent /etc/obs/deny.txt
"""
import json
import os
import sys
import tempfile
from pathlib import Path

deny, approved = Path(sys.argv[1]), set(sys.argv[2:])
for line in sys.stdin:
    ev = json.loads(line)
    egress, provider = ev["event"].get("Egress"), ev.get("provider")
    if not egress or not provider or provider in approved:
        continue
    old = deny.read_text() if deny.exists() else ""
    if egress["peer"] not in old.split():
        fd, tmp = tempfile.mkstemp(dir=deny.absolute().parent)
        with os.fdopen(fd, "w") as f:
            f.write(f"{old}{egress['peer']}  # {provider}\n")
        os.chmod(tmp, 0o644)  # obs-enforce refuses deny-files others can write
        os.replace(tmp, deny)
