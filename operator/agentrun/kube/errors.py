"""Map API-server and transport errors onto the API port's error classes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import aiohttp
from kubernetes_asyncio.client import exceptions

from agentrun.runtime import ports


def _api_message(error: exceptions.ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except (ValueError, AttributeError):
        return str(error.reason)


@contextlib.contextmanager
def translated(action: str) -> Iterator[None]:
    """Re-raise whatever ``action`` hits as Conflict, NotFound, Forbidden or Unavailable."""
    try:
        yield
    except exceptions.ApiException as error:
        message = f"{action}: {_api_message(error)}"
        match error.status:
            case 409:
                raise ports.Conflict(message) from error
            case 404:
                raise ports.NotFound(message) from error
            case 410:
                raise ports.Gone(message) from error
            case 401 | 403:
                raise ports.Forbidden(message) from error
            case 422 | 400:
                raise ports.Rejected(message) from error
            case _:
                raise ports.Unavailable(message) from error
    except (TimeoutError, aiohttp.ClientError, OSError) as error:
        raise ports.Unavailable(f"{action}: {type(error).__name__}: {error}") from error


async def checked(response: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
    """A raw response (``_preload_content=False``) as the generated client would have it: non-2xx raises."""
    if 200 <= response.status <= 299:
        return response
    error = exceptions.ApiException(status=response.status, reason=response.reason)
    error.body = await response.read()
    response.release()
    raise error
