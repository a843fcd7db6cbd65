"""One client configuration for everything that talks to the API server.

The watch (kopf) and the operator's own reads and writes authenticate from the same
source, the Pod's ServiceAccount in a cluster, else ``$KUBECONFIG`` or
``~/.kube/config``, and use the same request timeout.
"""

from __future__ import annotations

import dataclasses
import os

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
    return Connection(client.ApiClient(configuration), request_timeout, client.ApiClient(election))


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
