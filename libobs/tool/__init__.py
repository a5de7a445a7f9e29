"""What every kernel-fed tool shares: options, the run loop, sinks, heartbeats."""
