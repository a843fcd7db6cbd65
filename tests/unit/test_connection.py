"""The operator's API client: proxy settings resolved once, never re-read per request."""

from __future__ import annotations

import pytest
from kubernetes_asyncio import client

from agentrun.kube import connection

SERVER = "https://10.0.0.1:6443"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, None, id="no-proxy-configured"),
        pytest.param({"HTTPS_PROXY": "http://proxy:3128"}, "http://proxy:3128", id="https-proxy"),
        pytest.param({"https_proxy": "http://proxy:3128"}, "http://proxy:3128", id="lower-case"),
        pytest.param({"HTTP_PROXY": "http://proxy:3128"}, None, id="only-an-http-proxy"),
        pytest.param({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "10.0.0.1"}, None, id="bypassed"),
        pytest.param({"HTTPS_PROXY": "http://proxy:3128", "no_proxy": "example.com"}, "http://proxy:3128", id="other"),
    ],
)
def test_the_environment_proxy_is_resolved_for_the_server(environ: dict[str, str], expected: str | None) -> None:
    assert connection.environment_proxy(SERVER, environ) == expected


async def test_the_client_session_does_not_read_the_environment_per_request() -> None:
    configuration = client.Configuration(host=SERVER)
    configuration.connection_pool_maxsize = 7
    api = connection._client(configuration)
    session = api.rest_client.pool_manager
    pool = session.connector
    try:
        assert session.trust_env is False
        assert pool is not None
        assert pool.limit == 7  # the pool kubernetes-asyncio built from the configuration, kept
    finally:
        await api.close()
    assert pool.closed
