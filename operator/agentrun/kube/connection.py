"""One authenticated client to the API server, in-cluster or from a kubeconfig."""

from __future__ import annotations

import dataclasses
import os

from kubernetes_asyncio import client, config
from kubernetes_asyncio.config import kube_config

# Enough parallel requests for a burst of admissions without opening a socket per run.
CONNECTION_POOL_SIZE = 64


@dataclasses.dataclass
class Connection:
    api: client.ApiClient

    async def close(self) -> None:
        await self.api.close()


async def connect() -> Connection:
    """Use the Pod's ServiceAccount in a cluster, else ``$KUBECONFIG`` or ``~/.kube/config``."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        await config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
    return Connection(client.ApiClient(configuration))


def current_namespace() -> str:
    """The namespace of the kubeconfig's current context, as kubectl picks it."""
    try:
        _, context = kube_config.list_kube_config_contexts()
    except Exception:  # no kubeconfig, or one without contexts: kubectl falls back to default too
        return "default"
    if not isinstance(context, dict):
        return "default"
    return str(context.get("context", {}).get("namespace") or "default")
