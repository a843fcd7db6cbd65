"""Pod mode: each attempt of a run executes in its own runner Pod, with no API access."""
