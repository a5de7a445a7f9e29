"""Egress, DNS and LLM call exchanges at the socket layer (bpf/net.bpf.c → obs-net, obs-llm)."""
