"""create_app(settings): the FastAPI application and its lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api import admin, files, fine_tuning, health, openai, openai_responses, usage
from gateway.api.auth_throttle import AuthFailureThrottle
from gateway.api.body_limit import BodyLimit
from gateway.api.cors import Cors
from gateway.api.credential_gate import CredentialGate
from gateway.api.drain import Drain, DrainGuard
from gateway.api.error_handlers import install_error_handlers, serves
from gateway.api.hot_routes import Handler, HotRoutes
from gateway.api.inflight import InflightBound
from gateway.api.media import HostResolver, system_resolve
from gateway.api.middleware import RequestContextMiddleware
from gateway.api.openapi_errors import declare_errors
from gateway.api.policy import TenantPolicy, salt_key_from
from gateway.api.query_params import single_valued_query
from gateway.api.response_homes import MemoryHomes, RedisHomes, ResponseHomes
from gateway.auth.authenticate import Authenticator
from gateway.auth.cache import AuthCache
from gateway.auth.failures import FailureThrottle
from gateway.auth.invalidation import InvalidationListener
from gateway.auth.jwt import JwtVerifier
from gateway.auth.store import AuthStore
from gateway.files.part_sweep import sweep_stale_parts
from gateway.files.storage import stale_part_s
from gateway.finetune.serving import AdapterServing
from gateway.http_refusals import UNREAD_STATE, UnreadRefusals
from gateway.limits.control import AdmissionControl
from gateway.limits.limiter import Limiter
from gateway.logs import configure_logging
from gateway.metering.accounting import Accounting
from gateway.metering.ledger import Ledger
from gateway.metering.settlement import lease_release
from gateway.metering.settler import Settler
from gateway.metrics import Metrics
from gateway.proxy.deps import ProxyDeps
from gateway.proxy.upstream import Upstream
from gateway.redis_client import redis_client
from gateway.redis_memory import watch_redis_memory
from gateway.redis_pipe import RedisPipe
from gateway.routing.balancer import make_balancer
from gateway.routing.discovery import Resolver
from gateway.routing.engine_metrics import EngineMetrics
from gateway.routing.engines import Engine, EngineRegistry
from gateway.routing.load import LoadScraper
from gateway.routing.monitor import EngineMonitor, build_registry
from gateway.settings import Settings
from gateway.state import GatewayState

_log = logging.getLogger("llmaas.server")
FEEDS_STOP_S = 2.0  # how long shutdown waits for the Redis feeds it cancelled
ROUTERS = (
    openai.router,
    openai_responses.router,
    files.router,
    fine_tuning.router,
    health.router,
    admin.router,
    usage.admin_router,
    usage.tenant_router,
)
# The routes that carry the traffic: their POSTs skip FastAPI's layers (hot_routes.py).
HOT_ROUTES: dict[str, Handler] = {
    "/v1/chat/completions": openai.chat_completions,
    "/v1/completions": openai.completions,
    "/v1/embeddings": openai.embeddings,
    "/v1/responses": openai_responses.create_response,
}

# POSTs that bound their own body (a file upload: files.max_file_bytes); every other body FastAPI
# reads is bounded by max_body_bytes (body_limit.py).
OWN_BOUNDS = frozenset({"/v1/files"})


class GatewayApp(FastAPI):
    """FastAPI behind the gateway's own gates (request context, drain, auth-failure throttle,
    in-flight bound), which also serve the hot routes without FastAPI's layers."""

    def __init__(self, gates: Callable[[ASGIApp], ASGIApp], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gates = gates

    def build_middleware_stack(self) -> ASGIApp:
        return self.gates(super().build_middleware_stack())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Starlette's call: FastAPI's own asks OpenTelemetry, per request, whether native
        telemetry is on (an environment lookup); the gateway has its own metrics."""
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
            return
        if scope["type"] == "http" and scope["method"] == "HEAD" and serves(self, scope, "GET"):
            # RFC 9110: HEAD wherever GET is served. The app answers a GET; the server sends
            # no body, as its own scope still says HEAD.
            scope = {**scope, "method": "GET"}
        await Starlette.__call__(self, scope, receive, send)


def create_app(
    settings: Settings,
    *,
    resolver: Resolver | None = None,
    media_resolver: HostResolver = system_resolve,
) -> FastAPI:
    """`resolver` answers for dns:// engine entries, `media_resolver` for the hosts of media
    URLs (defaults: the system resolver; tests)."""
    drain = Drain()  # flipped by the server on SIGTERM (draining_server.py)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Drain | UnreadRefusals]]:
        log_listener = _start_logging(settings)
        metrics = Metrics()
        upstream = Upstream(settings.upstream, metrics)
        await upstream.start()
        redis = _redis(settings)
        auth, listener = _auth(settings, redis, upstream, metrics)
        pipe, limiter, ledger = _request_path_redis(settings, redis)
        settler = Settler(ledger, settings.metering, metrics)
        drain.on_hurry.append(settler.hurry)  # a signal once stopping cuts the usage flush short
        admission = AdmissionControl(
            limiter, settings.limits, metrics, redis_back=[settler.redis_back]
        )
        await settler.start()
        # One EngineMetrics for the registry and the monitor: it knows which engines left (their
        # series removed), so a health check that ends after its engine left DNS writes none.
        engine_metrics = EngineMetrics(metrics)
        registry = build_registry(settings.models, settings.routing, engine_metrics)
        monitor = EngineMonitor(registry, settings.routing, engine_metrics, resolver)
        await monitor.start()  # a first DNS resolution, models poll and health check
        scraper = LoadScraper(registry, settings.routing.scrape_interval_s)
        await scraper.start()
        app.state.gateway = GatewayState(
            settings=settings,
            registry=registry,
            metrics=metrics,
            proxy=ProxyDeps(
                upstream,
                make_balancer(settings.routing, metrics.requests_shed),
                metrics,
                write_timeout_s=settings.upstream.write_timeout_s,
                response_timeout_s=settings.upstream.response_timeout_s,
                cuts=drain.cuts,
            ),
            accounting=Accounting(settler, admission.done, admission.give_back),
            http=upstream.session,
            redis=redis,
            auth=auth,
            admission=admission,
            ledger=ledger,
            homes=await _homes(settings, redis),
            policy=TenantPolicy(
                settings.request_policy, salt_key_from(settings.key_pepper), media_resolver
            ),
            drain=drain,
            adapters=_adapters(registry, redis, upstream, monitor),
            auth_feed=listener,
        )
        listening = _background(app.state.gateway, listener)
        try:
            # lifespan state: how the server (draining_server.py) finds the drain, and the HTTP
            # protocol the count and log of what it refuses unread
            yield {"drain": drain, UNREAD_STATE: UnreadRefusals(metrics, settings.access_log)}
        finally:
            _log.info("shutdown: closing the feeds, releasing admissions, flushing usage")
            # (uploads whose client left with their record unknown: their bytes stay)
            await _stop([*listening, *app.state.gateway.unsure_uploads])
            for closing in (scraper.close, monitor.close, app.state.gateway.homes.close):
                await closing()  # (homes waiting for Redis: one more try)
            # admissions given up on: a last try at releasing them; the leases left are settled
            # (and spilled with the usage if Redis is away), not left to their TTL
            for caller, lease in await admission.close():
                settler.submit(lease_release(caller.tenant, caller.scope_id, lease))
            # requests are done: flush what waits for Redis (in a hurry after a second Ctrl-C),
            # spill the rest
            await settler.close(hurry=drain.hurried)
            await upstream.close()
            if pipe is not None:
                await pipe.close()
            if redis is not None:
                await redis.aclose()
            _log.info("shutdown: done")
            log_listener.stop()

    throttle = _failure_throttle(settings)
    cors = Cors(settings.cors.allow_origins, settings.cors.max_age_s)

    def gates(framework: ASGIApp) -> ASGIApp:
        """Outermost first: every request gets its id, access log line and CORS, then the drain,
        the auth-failure throttle and the in-flight bound decide whether it gets in."""
        app: ASGIApp = HotRoutes(
            BodyLimit(framework, max_bytes=settings.max_body_bytes, exempt=OWN_BOUNDS), HOT_ROUTES
        )
        app = InflightBound(
            app,
            limit=settings.max_inflight_requests,
            body_bytes=settings.max_inflight_body_bytes,
            max_body_bytes=settings.max_body_bytes,
        )
        app = AuthFailureThrottle(  # credentials checked before a body is read
            CredentialGate(app, admin_token=settings.admin_token), throttle=throttle
        )
        app = DrainGuard(app, drain=drain)
        return RequestContextMiddleware(
            app,
            access_log=settings.access_log,
            routes=HOT_ROUTES,
            access_log_probes=settings.access_log_probes,
            cors=cors if settings.cors.allow_origins else None,
        )

    app = GatewayApp(
        gates,
        dependencies=[Depends(single_valued_query)],
        title="llmaas",
        redirect_slashes=False,  # a path with a trailing slash is unknown (404), not a 307
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    for router in _routers(settings):
        app.include_router(router)
    install_error_handlers(app)
    declare_errors(app)
    return app


def _routers(settings: Settings) -> list[APIRouter]:
    """The routers this gateway serves: /v1/files only where files.enabled."""
    return [r for r in ROUTERS if r is not files.router or settings.files.enabled]


def _background(
    gw: GatewayState, listener: InvalidationListener | None
) -> list[asyncio.Task[None]]:
    """The tasks beside the requests: the key and adapter feeds, Redis's memory (and data)
    watch, the sweep of the part files stopped uploads left."""
    feeds = [f for f in (listener, gw.adapters) if f is not None]
    tasks = [asyncio.create_task(feed.run()) for feed in feeds]
    if gw.redis is not None:
        watch = watch_redis_memory(gw.redis, gw.metrics, gw.ledger)
        tasks.append(asyncio.create_task(watch))
    if gw.settings.files.enabled:
        stale_s = stale_part_s(gw.settings.keep_alive_s)
        tasks.append(asyncio.create_task(sweep_stale_parts(gw.settings.files.dir, stale_s)))
    return tasks


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the feeds and wait for them to end. A cancel landing as a feed's pub/sub sent a
    command was lost (a bind failure stops the app a millisecond after it started), and the
    feed waited for messages for ever; our Redis connections now raise it (redis_client.py).
    Each is still cancelled again until it ends, for FEEDS_STOP_S at most: a library that
    swallows a cancel must not hang a shutdown."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FEEDS_STOP_S
    pending = set(tasks)
    while pending and (left := deadline - loop.time()) > 0:
        for task in pending:
            task.cancel()
        pending = (await asyncio.wait(pending, timeout=min(0.1, left)))[1]
    if pending:
        _log.warning("shutdown: %d feed(s) did not stop; going on", len(pending))


def _adapters(
    registry: EngineRegistry, redis: Redis | None, upstream: Upstream, monitor: EngineMonitor
) -> AdapterServing | None:
    # An engine that answers 404 for a model it listed (a restart forgot its adapters) is
    # polled again at once, fine-tuning on or not.
    upstream.on_model_missing = monitor.relearn
    if redis is None:
        return None

    async def learn(engine: Engine) -> None:
        await monitor.learner.poll(upstream.session, engine)

    return AdapterServing(registry, redis, upstream.session, learn)


def _failure_throttle(settings: Settings) -> FailureThrottle:
    a = settings.auth
    return FailureThrottle(a.failure_limit, a.failure_window_s, a.failure_max_clients)


def _redis(settings: Settings) -> Redis | None:
    if not settings.redis_url:
        return None
    return redis_client(
        settings.redis_url,
        settings.redis_timeout_s,
        settings.redis_max_connections,
        settings.redis_password,
    )


def _request_path_redis(
    settings: Settings, redis: Redis | None
) -> tuple[RedisPipe | None, Limiter | None, Ledger | None]:
    """Admissions and settlements share one pipelined connection (gateway/redis_pipe.py)."""
    if redis is None:
        return None, None, None
    pipe = RedisPipe(redis)
    window_s = settings.limits.window_s
    limiter = Limiter(redis, settings.limits.lease_ttl_s, window_s, pipe)
    return pipe, limiter, Ledger(redis, settings.metering, window_s, pipe)


async def _homes(settings: Settings, redis: Redis | None) -> ResponseHomes:
    """Started: the homes a stopped process kept on disk wait in it for Redis."""
    s = settings.responses
    homes: ResponseHomes = (
        MemoryHomes(s.ttl_s, s.local_max_entries)
        if redis is None
        else RedisHomes(redis, s.ttl_s, s.local_max_entries, settings.metering.spill_dir)
    )
    await homes.start()
    return homes


def _start_logging(settings: Settings) -> logging.handlers.QueueListener:
    """JSON lines from here on; then what the settings leave the operator to hear about."""
    listener = configure_logging(settings.log_level)
    if not settings.models:  # (a JSON line: said before logging was set, it was plain text)
        _log.warning(
            "no models configured (`models`, in the config file or LLMAAS_MODELS, is empty): "
            "every request for a model will be answered 404 model_not_found"
        )
    return listener


def _auth(
    settings: Settings, redis: Redis | None, upstream: Upstream, metrics: Metrics
) -> tuple[Authenticator, InvalidationListener | None]:
    cache = AuthCache(
        settings.auth.cache_ttl_s, settings.auth.cache_max_entries, settings.auth.stale_max_s
    )
    jwt = JwtVerifier(settings.auth.jwt, upstream.session) if settings.auth.jwt.enabled else None
    auth = Authenticator(
        required=settings.auth.required,
        pepper=settings.key_pepper,
        store=None if redis is None else AuthStore(redis, on_write=cache.invalidate),
        cache=cache,
        jwt=jwt,
        on_unavailable=metrics.auth_store_unavailable.inc,
    )
    listener = InvalidationListener(redis, cache) if redis is not None else None
    return auth, listener
