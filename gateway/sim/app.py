"""The simulator's HTTP surface: vLLM's OpenAI routes, /health, /metrics and /sim/* for tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.sim.asgi import (
    DROP_SCOPE_KEY,
    DROPPED,
    DropConnection,
    Reply,
    read_body,
    request_headers,
)
from gateway.sim.config import SimConfig
from gateway.sim.engine import Engine
from gateway.sim.protocol import detail_error, model_list
from gateway.sim.request import RequestError
from gateway.sim.responses import ResponsesApi
from gateway.sim.state import SimState

Handler = Callable[[dict[str, Any], Reply, Receive], Awaitable[None]]
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SimApp(Starlette):
    """Starlette, plus closing the connection outright when a handler drops it (see asgi.py)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)
        if scope.get(DROP_SCOPE_KEY):
            # uvicorn closes the transport when the application returns anything but None.
            return DROPPED  # type: ignore[return-value]


class Inference:
    """A raw ASGI endpoint: it reads the body, remembers it, and lets `handler` answer."""

    def __init__(self, state: SimState, handler: Handler) -> None:
        self.state = state
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(receive)
        if raw is None:
            return  # the client left before sending its request
        body = _parse(raw)
        self.state.record(request_headers(scope), body, raw)
        reply = Reply(send)
        try:
            if not isinstance(body, dict):
                raise RequestError(400, "The request body must be a JSON object.")
            await self.handler(body, reply, receive)
        except RequestError as exc:
            await reply.json(exc.status, exc.payload())
        except DropConnection:
            scope[DROP_SCOPE_KEY] = True


def create_sim_app(config: SimConfig) -> Starlette:
    state = SimState(config.model_name, config.kv_cache_tokens, config.fail_rate)
    engine = Engine(config, state)
    responses = ResponsesApi(config, state)
    routes = [
        Route("/v1/chat/completions", Inference(state, engine.chat), methods=["POST"]),
        Route("/v1/completions", Inference(state, engine.completion), methods=["POST"]),
        Route("/v1/embeddings", Inference(state, engine.embeddings), methods=["POST"]),
        Route("/v1/responses", Inference(state, responses.create), methods=["POST"]),
        Route("/v1/responses/{response_id}", responses.retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}/cancel", responses.cancel, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/sim/state", sim_state, methods=["GET"]),
        Route("/sim/reset", sim_reset, methods=["POST"]),
        Route("/sim/queue", sim_queue, methods=["POST"]),
    ]
    app = SimApp(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.sim = state
    app.state.config = config
    return app


async def models(request: Request) -> Response:
    config: SimConfig = request.app.state.config
    return _json(model_list(config.models, config.max_model_len))


async def health(request: Request) -> Response:
    return Response(status_code=200)


async def metrics(request: Request) -> Response:
    state: SimState = request.app.state.sim
    return Response(state.metrics_text(), media_type=METRICS_TYPE)


async def sim_state(request: Request) -> Response:
    state: SimState = request.app.state.sim
    return _json(state.snapshot())


async def sim_reset(request: Request) -> Response:
    state: SimState = request.app.state.sim
    state.reset()
    return _json(state.snapshot())


async def sim_queue(request: Request) -> Response:
    """Set the waiting queue /metrics reports: `{"waiting": n}`. Tests drive an engine's queue
    this way instead of racing load against the scrape interval."""
    state: SimState = request.app.state.sim
    body = _parse(await request.body())
    waiting = body.get("waiting") if isinstance(body, dict) else None
    if not isinstance(waiting, int) or isinstance(waiting, bool) or waiting < 0:
        return _json({"error": 'expected {"waiting": integer >= 0}'}, 400)
    state.waiting = waiting
    return _json(state.snapshot())


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's `{"detail": ...}` body, which vLLM answers for unknown paths and methods."""
    assert isinstance(exc, HTTPException)
    return Response(
        detail_error(exc.detail),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type="application/json",
    )


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _parse(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
