"""The outermost layer of every HTTP request: its id, the access log, the last-resort 500, and
CORS (gateway/api/cors.py: its headers on every answer, preflights answered here).

Its `send` wrapper is the only one: the status it sees is in the request's info for the inner
layers to read when the app returns, and headers they put in `info.headers` are added here.
It also counts in llmaas_requests_total every /v1 request the proxy did not (refused before
reaching an engine: 400, 401, 404, 429, 503; or served by the gateway itself: models, files,
usage), labelled by the route's template, never by a path a client chose.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Iterable
from functools import partial

from fastapi import FastAPI
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.cors import Cors, is_preflight
from gateway.auth.api_keys import masked
from gateway.errors import ApiError, InternalError
from gateway.logs import ACCESS_LOGGER
from gateway.metrics import model_label
from gateway.proxy.asgi_send import send_error
from gateway.proxy.outcome import Outcome
from gateway.request_context import RequestInfo, attach, request_info

_REQUEST_ID = b"x-request-id"
_ORIGIN = b"origin"
_PATH_PARAM = re.compile(r"\{[^}]*\}")
# What load balancers, kubelets and Prometheus ask every few seconds: answered well, they are
# left out of the access log unless access_log_probes (a failing one is always logged).
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        access_log: bool,
        routes: Iterable[str] = (),
        access_log_probes: bool = False,
        cors: Cors | None = None,
    ) -> None:
        """`routes`: the exact /v1 paths served outside the framework's router (hot_routes);
        `cors`: None, no CORS (no header added, preflights left to the app: 405)."""
        self.app = app
        self.cors = cors
        self.access_log = access_log
        self.access_log_probes = access_log_probes
        self.routes = frozenset(routes)
        self.log = logging.getLogger(ACCESS_LOGGER)
        self.errors = logging.getLogger("llmaas.errors")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header, origin = _request_id_and_origin(scope["headers"])
        info = request_info(header)
        attach(scope, info)
        rid_header = (_REQUEST_ID, info.request_id.encode())
        started = info.arrived
        app = self.app
        if origin is not None and self.cors is not None:
            app = self._cors(self.cors, origin, scope, info)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]
                message["headers"] = [*message.get("headers", ()), *info.headers, rid_header]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        except ClientDisconnect:  # gone halfway through its body: nobody to answer, no error
            _client_left(info)
        except Exception:
            self.errors.exception(
                "unhandled error", extra={"fields": {"request_id": info.request_id}}
            )
            if info.status == 0:
                await send_error(send_with_id, InternalError("The gateway failed unexpectedly."))
        finally:
            elapsed = time.perf_counter() - started
            if not info.counted:
                self._count(scope, info, elapsed)
            if self.access_log and self._logged(scope, info):
                self._log(scope, info, elapsed)

    def _cors(self, cors: Cors, origin: bytes, scope: Scope, info: RequestInfo) -> ASGIApp:
        """The app that answers a request from a web page: the gateway's, with CORS headers;
        for a preflight, a 204 before any gate (it carries no credential), not counted as a
        request to the route it names."""
        if not is_preflight(scope["method"], scope["headers"]):
            info.headers += cors.headers(origin)
            return self.app
        info.counted = True
        return partial(_preflight, cors, origin)

    def _logged(self, scope: Scope, info: RequestInfo) -> bool:
        return self.access_log_probes or scope["path"] not in _PROBES or not 0 < info.status < 400

    def _count(self, scope: Scope, info: RequestInfo, elapsed: float) -> None:
        """A request the relay did not count (refused, or answered by the gateway itself), in
        llmaas_requests_total and in llmaas_request_duration_seconds, as the relay counts its
        own (the histogram saw only those: slow usage queries and refusals were missing)."""
        route = route_label(scope, self.routes)
        state = getattr(scope["app"].state, "gateway", None)  # (None before startup is done)
        if route is not None and state is not None:
            status = str(info.status or 499)  # nothing sent: the client left first
            model = model_label(info.model or "")
            state.metrics.requests.labels(model, route, status).inc()
            state.metrics.duration.labels(model, route).observe(elapsed)

    def _log(self, scope: Scope, info: RequestInfo, elapsed: float) -> None:
        fields = access_fields(info, scope["method"], masked(scope["path"]), elapsed)
        self.log.info("request", extra={"fields": fields})


def access_fields(
    info: RequestInfo, method: str | None, path: str | None, elapsed: float | None
) -> dict[str, object]:
    """An access log line's fields; `method`, `path` and `elapsed` None for a request the HTTP
    layer refused unread (http_refusals.py), which logs its line with this too."""
    fields: dict[str, object] = {
        "request_id": info.request_id,
        "method": method,
        "path": path,
        "status": info.status or 499,  # nothing sent: the client left first (as counted)
        "duration_ms": None if elapsed is None else round(elapsed * 1000, 3),
        "model": info.model,
        "engine": info.engine,
        "outcome": _outcome(info),
        "ttft_ms": None if info.ttft_ms is None else round(info.ttft_ms, 3),
    }
    if info.engine_request_id is not None:  # the client named the request: the engine's
        fields["engine_request_id"] = info.engine_request_id
    return fields


def _client_left(info: RequestInfo) -> None:
    """499, unless the connection was closed by the gateway's HTTP layer after it answered 408
    for a body too late (http_protocol.py): the request is then counted and logged as that."""
    if info.outcome is not Outcome.REFUSED:
        info.outcome, info.status = Outcome.CLIENT_DISCONNECTED, 499


def _outcome(info: RequestInfo) -> Outcome:
    """The proxy's word for how the request ended; an error the gateway answered before any
    engine was asked (the proxy never ran) is `refused`, not the default `ok`."""
    if info.outcome is Outcome.OK and info.engine is None and info.status >= 400:
        return Outcome.REFUSED
    return info.outcome


def _request_id_and_origin(
    headers: list[tuple[bytes, bytes]],
) -> tuple[bytes | None, bytes | None]:
    request_id = origin = None
    for name, value in headers:
        if name == _REQUEST_ID:
            request_id = value
        elif name == _ORIGIN:
            origin = value
    return request_id, origin


async def _preflight(cors: Cors, origin: bytes, scope: Scope, _: Receive, send: Send) -> None:
    try:
        headers = cors.preflight(origin, scope["headers"])
    except ApiError as refused:
        await send_error(send, refused)
        return
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def route_label(scope: Scope, routes: frozenset[str]) -> str | None:
    """A /v1 request's route as metrics name it (`chat/completions`, `responses/{id}`; `other`
    for a path no route matched); None for paths outside /v1."""
    path: str = scope["path"]
    if not path.startswith("/v1/"):
        return None
    template = getattr(scope.get("route"), "path_format", None)
    if template is None:
        template = path if path in routes else _unrouted(scope)
    return _PATH_PARAM.sub("{id}", template).removeprefix("/v1/")


def _unrouted(scope: Scope) -> str:
    """The template of the route a request refused by a gate before routing (429 for repeated
    401s, 503 draining or busy) would have reached (`models`, `files/{file_id}`), else
    `other`. Only requests that no route ran come here: the templates are read once."""
    app = scope.get("app")
    templates = tuple(app.openapi()["paths"]) if isinstance(app, FastAPI) else ()
    path: str = scope["path"]
    for template, pattern in _patterns(templates):
        if pattern.fullmatch(path):
            return template
    return "/v1/other"


@functools.cache
def _patterns(templates: tuple[str, ...]) -> list[tuple[str, re.Pattern[str]]]:
    return [
        (t, re.compile("[^/]+".join(re.escape(part) for part in _PATH_PARAM.split(t))))
        for t in templates
    ]
