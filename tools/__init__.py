"""obs tools: each module is one thin executable (obs-exec, obs-net, ...)."""
