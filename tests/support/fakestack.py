"""A small C program that looks like one with a static TLS stack obs has no probes for: it
imports socket calls and carries a stack's marker string in .rodata (built with gcc, cached)."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

SOURCE = r"""
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
const char marker[] = "\0%s\0";
int main(int argc, char **argv)
{
    if (argc > 2)  /* never: keeps connect imported and the marker in */
        return connect(socket(AF_INET, SOCK_STREAM, 0), 0, 0) + marker[1];
    sleep(argc > 1 ? atoi(argv[1]) : 0);
    return 0;
}
"""


def build(marker: bytes) -> Path:
    src = SOURCE % marker.decode()
    key = hashlib.sha256(src.encode()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / "obs-test-fakestack" / key / "fakestack"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        subprocess.run(["gcc", "-O1", "-x", "c", "-o", str(tmp), "-"], input=src.encode(),
                       check=True, capture_output=True, timeout=120)
        tmp.replace(out)
    return out
