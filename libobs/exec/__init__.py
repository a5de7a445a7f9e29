"""Processes, exits, privilege changes and file writes (bpf/exec.bpf.c → obs-exec)."""
