"""Budgets (`spec.limits`) on the real API server: each stops a model.echo run at its exact limit.

model.echo's usage is deterministic (one token per word). Each run asks "what happened"
and has echo call the MCP server's ``add`` twice before it answers, so it uses:

| request | input | output | what echo answers                              |
| ------- | ----- | ------ | ---------------------------------------------- |
| 1       | 2     | 2      | a call of add                                  |
| 2       | 3     | 2      | a call of add (it heard the first result, "5") |
| 3       | 4     | 9      | "echo: what happened \\| add: 5 \\| add: 5"    |

3 requests, 2 tool calls, 9 input, 13 output and 22 total tokens. A run whose budget is
exactly that succeeds; one a unit below fails ``BudgetExceeded`` with the limit and the
value in its message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import harness
import mcp_server

pytestmark = pytest.mark.integration

FULL_USAGE = {"requests": 3, "inputTokens": 9, "outputTokens": 13}


@pytest.fixture(scope="module")
def tools() -> Iterator[mcp_server.MCPTestServer]:
    with mcp_server.MCPTestServer() as server:
        yield server


def budget_run(name: str, url: str, limits: dict[str, int] | None) -> dict[str, Any]:
    add = {"tool": "add", "args": {"a": 2, "b": 3}}
    spec: dict[str, Any] = {"limits": limits} if limits is not None else {}
    return harness.agent_run(
        name,
        [
            {"name": "llm", "type": "model.echo", "config": {"toolCalls": [add, add]}},
            {"name": "prompt", "type": "plain.prompt", "config": {"user": "what happened"}},
            {"name": "tools", "type": "tools.mcp", "config": {"url": url, "allowedTools": ["add"]}},
        ],
        **spec,
    )


@pytest.mark.parametrize(
    ("budget", "used", "message"),
    [
        pytest.param("maxRequests", 3, "budget exceeded: maxRequests is 2, the run needed 3", id="maxRequests"),
        pytest.param("maxToolCalls", 2, "budget exceeded: maxToolCalls is 1, the run needed 2", id="maxToolCalls"),
        pytest.param("maxInputTokens", 9, "budget exceeded: maxInputTokens is 8, the run used 9", id="maxInputTokens"),
        pytest.param(
            "maxOutputTokens", 13, "budget exceeded: maxOutputTokens is 12, the run used 13", id="maxOutputTokens"
        ),
        pytest.param(
            "maxTotalTokens", 22, "budget exceeded: maxTotalTokens is 21, the run used 22", id="maxTotalTokens"
        ),
    ],
)
def test_each_budget_stops_the_run_at_its_exact_limit(
    cluster: harness.Cluster,
    namespace: str,
    operator: harness.OperatorProcess,
    tools: mcp_server.MCPTestServer,
    budget: str,
    used: int,
    message: str,
) -> None:
    cluster.apply(budget_run("at-limit", tools.url, {budget: used}), namespace)
    cluster.apply(budget_run("below-limit", tools.url, {budget: used - 1}), namespace)

    at_limit = cluster.wait_phase("at-limit", namespace)["status"]
    assert at_limit["phase"] == "Succeeded", at_limit
    assert at_limit["output"] == "echo: what happened | add: 5 | add: 5"
    assert at_limit["usage"] == FULL_USAGE

    below = cluster.wait_phase("below-limit", namespace)["status"]
    assert (below["phase"], below["reason"], below["message"]) == ("Failed", "BudgetExceeded", message), below
    assert below["events"][-1]["type"] == "run_failed"
    assert below["events"][-1]["data"] == {"reason": "BudgetExceeded", "message": message}
    [condition] = below["conditions"]
    assert (condition["status"], condition["reason"], condition["message"]) == ("False", "BudgetExceeded", message)
    # A request refused by its budget is never reported as made.
    requests = sum(1 for e in below["events"] if e["type"] == "model_request")
    assert requests == (2 if budget in ("maxRequests", "maxToolCalls") else 3)


def test_a_budget_stop_records_the_partial_usage(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess, tools: mcp_server.MCPTestServer
) -> None:
    cluster.apply(budget_run("partial", tools.url, {"maxRequests": 2}), namespace)
    status = cluster.wait_phase("partial", namespace)["status"]
    assert status["reason"] == "BudgetExceeded"
    assert status.get("usage") == {"requests": 2, "inputTokens": 5, "outputTokens": 4}


def test_the_operators_ceiling_caps_a_run_that_asks_for_more(
    cluster: harness.Cluster,
    namespace: str,
    start_operator: Callable[..., harness.OperatorProcess],
    tools: mcp_server.MCPTestServer,
) -> None:
    start_operator(namespace, max_limits='{"maxRequests": 2}')
    cluster.apply(budget_run("asks-for-more", tools.url, {"maxRequests": 10}), namespace)
    cluster.apply(budget_run("asks-nothing", tools.url, None), namespace)
    for name in ("asks-for-more", "asks-nothing"):
        status = cluster.wait_phase(name, namespace)["status"]
        assert (status["phase"], status["reason"]) == ("Failed", "BudgetExceeded"), status
        assert status["message"] == "budget exceeded: maxRequests is 2, the run needed 3"


def test_the_example_shows_a_run_within_budget_and_one_stopped(
    cluster: harness.Cluster, namespace: str, operator: harness.OperatorProcess
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(harness.EXAMPLES / "limits.yaml"))
    within = cluster.wait_phase("within-budget", namespace)["status"]
    assert within["phase"] == "Succeeded", within
    over = cluster.wait_phase("over-budget", namespace)["status"]
    assert (over["phase"], over["reason"], over["message"]) == (
        "Failed",
        "BudgetExceeded",
        "budget exceeded: maxOutputTokens is 5, the run used 6",
    )
