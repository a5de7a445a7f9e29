"""Turning the merged stream into what other tools read: GenAI usage and cost, OTLP, traces."""
