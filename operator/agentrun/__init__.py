"""agentrun: a Kubernetes operator that runs AI agent requests as AgentRun resources."""

__version__ = "0.1.0"
