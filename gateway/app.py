"""create_app(settings): the FastAPI application and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from redis.asyncio import Redis
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.api import health, openai
from gateway.api.middleware import RequestContextMiddleware
from gateway.errors import ApiError, InvalidRequest, MethodNotAllowed, NotFound
from gateway.logs import configure_logging
from gateway.metrics import Metrics
from gateway.proxy.relay import ProxyDeps
from gateway.proxy.upstream import Upstream
from gateway.routing.balancer import make_balancer
from gateway.routing.engines import EngineRegistry
from gateway.settings import Settings
from gateway.state import GatewayState


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        listener = configure_logging(settings.log_level)
        metrics = Metrics()
        upstream = Upstream(settings.upstream, metrics)
        await upstream.start()
        redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
        app.state.gateway = GatewayState(
            settings=settings,
            registry=EngineRegistry(settings.models),
            metrics=metrics,
            proxy=ProxyDeps(upstream, make_balancer(settings.routing), metrics),
            redis=redis,
        )
        try:
            yield
        finally:
            await upstream.close()
            if redis is not None:
                await redis.aclose()
            listener.stop()

    app = FastAPI(
        title="llmaas",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.include_router(openai.router)
    app.include_router(health.router)
    _install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, access_log=settings.access_log)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return Response(exc.json(), exc.status_code, exc.headers, "application/json")

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        message = f"Invalid '{param}': {first.get('msg', 'invalid value')}." if param else str(exc)
        return await api_error(request, InvalidRequest(message, param=param, code="invalid_value"))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        err: ApiError
        if exc.status_code == 404:
            err = NotFound(f"Unknown path: {request.method} {request.url.path}", code="unknown_url")
        elif exc.status_code == 405:
            err = MethodNotAllowed(
                f"Method {request.method} is not allowed on {request.url.path}.",
                code="method_not_allowed",
            )
        else:
            err = ApiError(str(exc.detail), status=exc.status_code)
        return await api_error(request, err)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
