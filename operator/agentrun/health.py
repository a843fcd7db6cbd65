"""The operator's health endpoints, for the kubelet's probes.

``/healthz`` answers while the event loop does (liveness); ``/readyz`` answers 200
once startup recovery is done and runs are being admitted, 503 before that and
while draining (readiness). Both are computed on every request, never cached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

ReadinessCheck = Callable[[], dict[str, Any]]


class HealthServer:
    def __init__(self, port: int, readiness: ReadinessCheck) -> None:
        self._port = port
        self._readiness = readiness
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "0.0.0.0", self._port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        state = self._readiness()
        return web.json_response(state, status=200 if state.get("ready") else 503)
