"""Host checks a tool runs before loading anything: each names what is missing and how to get
it. Each check is pointed at a path that is absent (the real tools' message for a Python
without bcc: tests/kernel/test_preflight.py)."""

from __future__ import annotations

from libobs.kernel import btf, host


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

