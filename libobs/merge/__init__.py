"""obs NDJSON in: reading, ordering, sessions, joins and summaries (obs-merge)."""
