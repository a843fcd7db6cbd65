"""Allow ``python -m agentrun``."""

from agentrun import cli

if __name__ == "__main__":
    raise SystemExit(cli.main())
