"""A local OpenAI-compatible Chat Completions server for tests, on 127.0.0.1.

The requested model name picks the behaviour, so one server serves every case:

- ``ok``: a text answer;
- ``structured``: a valid call of the output tool, with arguments from ``STRUCTURED_ARGS``;
- ``tool-bad``: an output-tool call that breaks any schema with a required field;
- ``r429`` / ``r500`` / ``r400``: provider errors with an OpenAI-style error body;
- ``flaky-N-CODE`` (for example ``flaky-2-503``): the first N requests for that model
  name fail with HTTP CODE, later ones answer as ``ok`` does.
- ``r401-echo``: a 401 whose error body echoes the API key it was sent, in full, as
  careless or hostile providers do;
- ``slow``: no answer until the server stops, so only a request timeout ends the wait;
- ``call-TOOL`` (for example ``call-add``): while no tool result is in the messages, a call
  of the function tool TOOL with arguments from ``TOOL_ARGS``; then the text answer
  ``TOOL said: <the tool's result>``.

Every request body is recorded, with its Authorization header, for assertions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from typing import Any

from aiohttp import web

STRUCTURED_ARGS = {"bullets": ["first", "second", "third"]}
TOOL_ARGS: dict[str, dict[str, Any]] = {"add": {"a": 2, "b": 3}, "lookup_incident": {"incident_id": 42}}


@dataclasses.dataclass
class Received:
    body: dict[str, Any]
    authorization: str | None


def _completion(model: str, message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def _tool_call(body: dict[str, Any], args: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    name = name or body["tools"][0]["function"]["name"]
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
    return {"content": None, "tool_calls": [call]}


def _function_tool(body: dict[str, Any], tool: str) -> dict[str, Any]:
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    if not results:
        return _completion(body["model"], _tool_call(body, TOOL_ARGS.get(tool, {}), tool), "tool_calls")
    return _completion(body["model"], {"content": f"{tool} said: {results[-1]}"})


class FakeLLM:
    """Runs the server in a thread of its own so tests can stay synchronous."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._failures_served: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self.base_url = ""

    def start(self) -> FakeLLM:
        self._thread.start()
        self.base_url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def bodies(self, model: str) -> list[dict[str, Any]]:
        return [r.body for r in self.received if r.body.get("model") == model]

    async def _start(self) -> str:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/v1"

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(Received(body, request.headers.get("Authorization")))
        model = body["model"]
        if model == "r429":
            error = {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}
            return web.json_response({"error": error}, status=429)
        if model == "r400":
            error = {"message": "Invalid value for 'temperature'", "type": "invalid_request_error"}
            return web.json_response({"error": error}, status=400)
        if model.startswith("flaky-"):
            count, code = model.split("-")[1:3]
            served = self._failures_served.get(model, 0)
            if served < int(count):
                self._failures_served[model] = served + 1
                error = {"message": f"temporarily unavailable ({served + 1} of {count})", "type": "server_error"}
                return web.json_response({"error": error}, status=int(code))
        if model == "r401-echo":
            key = (request.headers.get("Authorization") or "").removeprefix("Bearer ")
            error = {
                "message": f"Incorrect API key provided: {key}. Check the key and try again.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
                "key": key,
            }
            return web.json_response({"error": error}, status=401)
        if model == "slow":
            assert self._stopping is not None
            await self._stopping.wait()
            return web.json_response(_completion(model, {"content": "too late"}))
        if model == "r500":
            error = {"message": "The server had an error while processing your request", "type": "server_error"}
            return web.json_response({"error": error}, status=500)
        if model == "tool-bad":
            return web.json_response(_completion(model, _tool_call(body, {"unexpected": 1}), "tool_calls"))
        if model.startswith("call-"):
            return web.json_response(_function_tool(body, model.removeprefix("call-")))
        if model == "structured":
            return web.json_response(_completion(model, _tool_call(body, STRUCTURED_ARGS), "tool_calls"))
        turns = sum(1 for m in body["messages"] if m["role"] == "user")
        return web.json_response(_completion(model, {"content": f"Hello from fake (turn {turns})"}))
