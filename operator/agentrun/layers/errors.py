"""Why a run failed, classified where the failure arises.

Each error carries the ``Reason`` recorded in the run's status and a message that
is safe to show: it never contains a credential.
"""

from __future__ import annotations

import copy

from agentrun.api import models


class RunFailure(Exception):
    """A permanent failure of one run. Retrying the same request fails the same way."""

    reason: models.Reason = models.Reason.INTERNAL_ERROR

    def __init__(self, message: str, *, status_code: int | None = None, usage: models.Usage | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        """The HTTP status behind a model error, when the provider answered with one."""
        self.usage = usage
        """What the run had used when it failed, once it had made a model request."""

    def with_message(self, message: str) -> RunFailure:
        """The same failure, of the same class, told with ``message`` instead."""
        told = copy.copy(self)
        told.message = message
        told.args = (message,)
        return told


class InvalidRequest(RunFailure):
    """The request is well-formed YAML but cannot run as asked."""

    reason = models.Reason.INVALID_REQUEST


class CredentialsUnavailable(RunFailure):
    """A Secret or key the run references cannot be read."""

    reason = models.Reason.CREDENTIALS_UNAVAILABLE


class ModelError(RunFailure):
    """The model provider answered with an error or could not be reached."""

    reason = models.Reason.MODEL_ERROR


class BudgetExceeded(RunFailure):
    """A limit of ``spec.limits`` was reached; the message names the limit and the value observed."""

    reason = models.Reason.BUDGET_EXCEEDED


class ToolsUnavailable(RunFailure):
    """A tool server the composition uses could not be reached, or stopped answering; the message names it."""

    reason = models.Reason.TOOLS_UNAVAILABLE


class OutputInvalid(RunFailure):
    """The model kept producing output that does not match the output schema."""

    reason = models.Reason.OUTPUT_INVALID
