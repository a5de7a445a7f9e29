"""Host checks a tool runs before loading anything: each names what is missing and how to get
it. Each check is pointed at a path that is absent (the real tools' message for a Python
without bcc: tests/kernel/test_preflight.py)."""

from __future__ import annotations

import hashlib
import os

import pytest

from libobs.kernel import btf, cache, host


def test_no_kernel_headers_names_the_release_and_the_setup(monkeypatch):
    monkeypatch.setattr(host.platform, "release", lambda: "0.0.0-obs-absent")
    assert host.check_headers() == ("no kernel headers for 0.0.0-obs-absent (bcc cannot "
                                    f"compile): {host.SETUP_HINT}")


def test_no_tracefs_says_how_to_mount_it(monkeypatch, tmp_path):
    monkeypatch.setattr(host, "TRACEFS_CANDIDATES", (tmp_path / "tracing",))
    assert host.tracefs() is None
    assert host.check_tracefs() == ("tracefs is not mounted (mount -t tracefs nodev "
                                     f"/sys/kernel/tracing): {host.SETUP_HINT}")
    assert not host.tracepoint_exists("sched", "sched_process_exec")


def test_no_btf_names_the_kernel_option(monkeypatch, tmp_path):
    monkeypatch.setattr(btf, "VMLINUX", tmp_path / "vmlinux")
    assert "CONFIG_DEBUG_INFO_BTF" in host.check_btf()



def test_btf_digest_is_kept_per_boot(monkeypatch, tmp_path):
    """Hashed once per boot: a later start of the same boot takes the kept digest; a new boot
    hashes again; without a boot id nothing is kept."""
    if os.geteuid() != 0:
        pytest.skip("the start-up cache is written by root only")
    monkeypatch.setattr(cache, "ROOT", tmp_path / "cache")
    vmlinux, boot = tmp_path / "vmlinux", tmp_path / "boot_id"
    monkeypatch.setattr(btf, "VMLINUX", vmlinux)
    monkeypatch.setattr(host, "BOOT_ID", boot)

    def digest() -> str:
        host.btf_digest.cache_clear()  # a new process
        return host.btf_digest()

    try:
        vmlinux.write_bytes(b"types of boot 1")
        boot.write_text("b1\n")
        first = digest()
        assert first == hashlib.sha256(b"types of boot 1").hexdigest()
        vmlinux.write_bytes(b"types of boot 2")  # only a reboot can change them
        assert digest() == first
        boot.write_text("b2\n")
        assert digest() == hashlib.sha256(b"types of boot 2").hexdigest()
        boot.unlink()
        vmlinux.write_bytes(b"types of boot 3")
        assert digest() == hashlib.sha256(b"types of boot 3").hexdigest()
    finally:
        host.btf_digest.cache_clear()  # no fake digest for later tests
