"""Guards: deny-files, policies, cgroup egress programs and fanotify (obs-enforce, obs-fileguard)."""
