"""obs: kernel-level observability and intervention for AI agents."""

__version__ = "0.1.0"
