"""One client configuration for everything that talks to the API server.

The watch (kopf) and the operator's own reads and writes authenticate from the same
source, the Pod's ServiceAccount in a cluster, else ``$KUBECONFIG`` or
``~/.kube/config``, and use the same request timeout.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
import urllib.request

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.config import kube_config

# Enough parallel requests for a burst of admissions without opening a socket per run.
CONNECTION_POOL_SIZE = 64


@dataclasses.dataclass(frozen=True)
class Credentials:
    """How to reach and authenticate to the API server (for the watch's own client)."""

    server: str
    ca_path: str | None
    token: str | None
    certificate_path: str | None
    private_key_path: str | None
    insecure: bool


@dataclasses.dataclass
class Connection:
    api: client.ApiClient
    request_timeout: float
    election_api: client.ApiClient
    """Leader election's own connections: a Lease renewal never queues behind a burst of run writes."""

    async def close(self) -> None:
        await self.api.close()
        await self.election_api.close()


async def load_configuration() -> client.Configuration:
    """The client configuration, read afresh (a projected ServiceAccount token rotates)."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        await config.load_kube_config(client_configuration=configuration)
    return configuration


async def connect(request_timeout: float) -> Connection:
    """A client for the operator's reads and writes."""
    configuration = await load_configuration()
    configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
    election = await load_configuration()
    election.connection_pool_maxsize = 2
    return Connection(_client(configuration), request_timeout, _client(election))


def _client(configuration: client.Configuration) -> client.ApiClient:
    """A client that reads the proxy environment once, not on every request.

    kubernetes-asyncio opens its session with ``trust_env=True``: aiohttp then parses the
    proxy variables and ``~/.netrc`` per request, in a thread, which costs about a tenth of
    the operator's CPU in a burst. The proxy is resolved here once instead (``~/.netrc``
    basic auth never applies: the API server is reached with a token or a client
    certificate), and the session is replaced, keeping its connection pool.
    """
    if configuration.proxy is None:
        configuration.proxy = environment_proxy(configuration.host, dict(os.environ))
    api = client.ApiClient(configuration)
    rest = api.rest_client
    session: aiohttp.ClientSession = rest.pool_manager
    rest.pool_manager = aiohttp.ClientSession(connector=session.connector, trust_env=False)
    session.detach()
    return api


def environment_proxy(server: str, environ: dict[str, str]) -> str | None:
    """The proxy the environment names for ``server`` (``HTTPS_PROXY``, ``NO_PROXY`` ...)."""
    proxies = {
        key[: -len("_proxy")].lower(): value
        for key, value in environ.items()
        if key.lower().endswith("_proxy") and value and key.lower() != "no_proxy"
    }
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY")
    if no_proxy:
        proxies["no"] = no_proxy
    url = urllib.parse.urlsplit(server)
    if not url.hostname or urllib.request.proxy_bypass_environment(url.netloc, proxies):  # type: ignore[attr-defined]
        return None
    return proxies.get(url.scheme or "https")


async def credentials() -> Credentials:
    """The same credentials as :func:`connect`, for a client that is not kubernetes-asyncio's."""
    configuration = await load_configuration()
    token = configuration.api_key.get("authorization") or configuration.api_key.get("BearerToken")
    if token and token.lower().startswith("bearer "):
        token = token[len("bearer ") :]
    return Credentials(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        insecure=not configuration.verify_ssl,
    )


def current_namespace() -> str:
    """The namespace of the kubeconfig's current context, as kubectl picks it."""
    try:
        _, context = kube_config.list_kube_config_contexts()
    except Exception:  # no kubeconfig, or one without contexts: kubectl falls back to default too
        return "default"
    if not isinstance(context, dict):
        return "default"
    return str(context.get("context", {}).get("namespace") or "default")
