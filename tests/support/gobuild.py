"""Builds the Go programs of tests/support (Debian's golang-go), once per source: the binaries
are cached under the system temp directory, keyed by a hash of the source and the Go release."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SUPPORT = Path(__file__).resolve().parent
CACHE = Path(tempfile.gettempdir()) / "obs-test-go"


def go() -> str:
    found = shutil.which("go")
    if found is None:  # deploy/setup-host.sh installs golang-go
        pytest.fail("`go` is not installed (apt-get install golang-go; deploy/setup-host.sh "
                    "does it)")
    return found


def build(program: str, stripped: bool = False, pie: bool = False) -> Path:
    """tests/support/<program>/main.go built (with -ldflags='-s -w' when stripped; as a
    position-independent executable with pie, whose function table sits in .data.rel.ro)."""
    src = SUPPORT / program / "main.go"
    version = subprocess.run([go(), "version"], capture_output=True, text=True,
                             check=True).stdout
    key = hashlib.sha256(src.read_bytes() + version.encode()).hexdigest()[:16]
    name = program + (".stripped" if stripped else "") + (".pie" if pie else "")
    out = CACHE / f"{program}-{key}" / name
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOCACHE": str(CACHE / "gocache"), "GOPATH": str(CACHE / "gopath"),
           "GO111MODULE": "off", "CGO_ENABLED": "0", "GOFLAGS": ""}
    tmp = out.with_suffix(".tmp")
    cmd = [go(), "build", "-o", str(tmp), *(["-ldflags=-s -w"] if stripped else []),
           *(["-buildmode=pie"] if pie else []), str(src)]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    tmp.replace(out)  # atomic: a concurrent run sees a whole binary or none
    return out
