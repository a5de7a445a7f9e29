"""Decoders for the protocols spoken inside TLS beyond HTTP/1.1: HTTP/2 and WebSocket."""
