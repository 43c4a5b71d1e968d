"""The HTTP client to the engines, behind a protocol: kept-alive connections per engine,
failover before the first byte, and error mapping.

The relay sees only `UpstreamClient` and `UpstreamResponse` (upstream_answers.py), so it runs
as well on an in-memory engine (tests/support/fake_upstream.py) as on a socket. Proxied
requests go through the gateway's own HTTP/1.1 client (gateway/proxy/h1.py: a quarter of
aiohttp's CPU per request, bench/README.md); the aiohttp session is kept for everything else
that talks to an engine or an identity provider (health checks, model lists, LoRA loading,
JWKS).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, cast

import aiohttp

from gateway.errors import (
    ApiError,
    BadGateway,
    GatewayTimeout,
    ServiceUnavailable,
    engine_unavailable,
)
from gateway.metrics import Metrics
from gateway.proxy.first_look import FirstLook
from gateway.proxy.h1 import ConnectFailed, Disconnected, H1Response, NotHttp
from gateway.proxy.h1_pool import H1Pool
from gateway.proxy.upstream_answers import Failure, UpstreamBroken, UpstreamResponse
from gateway.routing.breaker import FailureKind
from gateway.routing.engines import Engine
from gateway.settings import UpstreamSettings

# Puts the request's model back on an engine that answered it does not serve it (a fine-tuned
# model's adapter, forgotten by an engine that restarted); raises the ApiError the client gets
# when it cannot.
Reload = Callable[[Engine], Awaitable[None]]


class UpstreamClient(Protocol):
    async def open(
        self,
        engines: list[Engine],
        path: str,
        body: bytes,
        headers: dict[str, str],
        stream: bool,
        *,
        trying: Callable[[Engine | None], None] = ...,
        method: str = ...,
        reload: Reload | None = ...,
    ) -> tuple[Engine, UpstreamResponse]: ...

    def failure(
        self,
        engine: Engine,
        kind: Failure,
        exc: BaseException,
        *,
        stream: bool = False,
        midway: bool = False,
    ) -> ApiError: ...


class Upstream:
    def __init__(self, settings: UpstreamSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        # Requests sent and not yet done, over every engine: counted when the engine is chosen
        # (as Engine.inflight), so a burst, or answers whose headers come late, are bounded too.
        self.open_requests = 0
        self._engines = H1Pool(settings.connect_timeout_s)
        # Hears an engine that answered 404 for a model it listed at the last models poll: the
        # app asks that engine's /v1/models again at once (gateway/routing/monitor.py).
        self.on_model_missing: Callable[[Engine], None] = lambda _: None
        self._look = FirstLook(metrics, self.failure, self._model_missing)

    def _model_missing(self, engine: Engine) -> None:
        self.on_model_missing(engine)  # (set after construction, by the app)

    async def start(self) -> None:
        # No pool limit in aiohttp: a wait for a pooled connection would count as the engine's
        # connect timeout. open() bounds the requests in flight itself.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, enable_cleanup_closed=False)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )

    async def close(self) -> None:
        self._engines.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._session

    async def open(
        self,
        engines: list[Engine],
        path: str,
        body: bytes,
        headers: dict[str, str],
        stream: bool,
        *,
        trying: Callable[[Engine | None], None] = lambda _: None,
        method: str = "POST",
        reload: Reload | None = None,
    ) -> tuple[Engine, UpstreamResponse]:
        """Send to the engines in order until one answers, and count the answer in its
        `inflight` (the caller decrements it when done, and closes the response).

        A refused connection, a connection that broke before any answer (an engine that died
        under a pooled keep-alive connection), or what first_look.py says of the answer (a
        5xx or 429, an answer the OpenAI API never gives, a stream that broke or sent a 5xx
        error frame before its first frame, a 404 saying the engine does not serve the model:
        it restarted since the last models poll and forgot an adapter), while another engine
        is left to try, moves on (at most `max_attempts` engines): nothing reached the client
        yet, and nothing was generated. The last engine's stream is looked at too: one broken
        before its first frame is a 502, as an answer broken before its headers is, and one
        whose first frame is an error is the answer of that error's status.
        Once an engine answered otherwise, the request is never sent again. When the last
        engine to try says it does not serve the model and a `reload` is given, the model is
        put back on it and the request sent there once more. `trying` hears each engine as it
        is tried (None when none could be reached), so a caller cancelled meanwhile knows where
        its request may have gone.
        """
        if not engines:  # (a dns:// name that resolves to nothing yet, say)
            trying(None)
            raise engine_unavailable()
        free = [e for e in engines if e.inflight < self._settings.max_connections_per_engine]
        if not free or self.open_requests >= self._settings.max_connections:
            self._metrics.gateway_busy.inc()
            raise _busy()
        tried = free[: self._settings.max_attempts]
        for i, engine in enumerate(tried):
            trying(engine)
            engine.sent()  # counted at decision time: a burst spreads at once
            self.open_requests += 1  # until the response is released or closed
            try:
                resp = await self._send(
                    engine, path, body, headers, stream, method=method, last=i + 1 == len(tried)
                )
            except BaseException:
                engine.done()
                self.open_requests -= 1
                raise
            if resp is None:
                engine.done()
                self.open_requests -= 1
                continue
            last = i + 1 == len(tried)
            answered = await self._look.answered(engine, resp, last=last, stream=stream)
            if answered is None:
                engine.done()
                continue
            if answered.status == 404 and (not last or reload is not None):
                answer = await self._look.unless_model_missing(engine, answered)
                if answer is not None:
                    return engine, answer
                engine.done()
                if last and reload is not None:
                    await reload(engine)
                    return await self.open(
                        [engine], path, body, headers, stream, trying=trying, method=method
                    )
                continue
            return engine, answered
        trying(None)
        raise engine_unavailable()

    async def _send(
        self,
        engine: Engine,
        path: str,
        body: bytes,
        headers: dict[str, str],
        stream: bool,
        *,
        method: str,
        last: bool,
    ) -> H1Response | None:
        """The engine's response; None when it could not be reached, or (unless it is the
        `last` to try) when the connection broke before it answered."""
        s = self._settings
        idle_s = s.stream_idle_timeout_s if stream else s.response_timeout_s
        try:
            conn = await self._engines.request(
                engine.url, method, path, body, headers, idle_s=idle_s
            )
        except ConnectFailed:
            self._metrics.upstream_errors.labels(engine.url, "connect").inc()
            engine.mark_down()
            return None
        except TimeoutError as exc:
            raise self.failure(engine, "timeout", exc, stream=stream) from exc
        except (Disconnected, OSError) as exc:
            kind: Failure = "bad_answer" if isinstance(exc, NotHttp) else "disconnect"
            if last:
                raise self.failure(engine, kind, exc) from exc
            self.failure(engine, kind, exc)  # counted; the next engine is tried
            return None
        return H1Response(conn, self._engines, idle_s, _broken, self._ended(engine, conn.status))

    def _ended(self, engine: Engine, status: int) -> Callable[[bool], None]:
        """What a response does when it is released (read to its end: `whole`) or closed. Only
        an answer below 500 read to its end starts the engine's failures in a row again: one
        whose headers came and whose body then timed out or broke counts as the failure it is
        (with the 5xx answers, towards the ejection after 3 in a row)."""

        def ended(whole: bool) -> None:
            self.open_requests -= 1
            if whole and status < 500:
                engine.mark_up()

        return ended

    def failure(
        self,
        engine: Engine,
        kind: Failure,
        exc: BaseException,
        *,
        stream: bool = False,
        midway: bool = False,
    ) -> ApiError:
        """Count an upstream failure (towards the engine's ejection too) and turn it into the
        error the client sees; `midway`: the engine had begun its answer (its head came). A
        stream that fell silent midway, before its first token too, is counted
        `stream_timeout`: its client got 200 and then an error frame, as for a `stream_cut`
        (LlmaasEngineStreamsCut), not the 504 of a `timeout`."""
        label = "stream_timeout" if kind == "timeout" and stream and midway else kind
        self._metrics.upstream_errors.labels(engine.url, label).inc()
        engine.record_failure(_BREAKER_KINDS.get(kind, "disconnect"), type(exc).__name__)
        if kind == "timeout":
            s = self._settings
            wait = s.stream_idle_timeout_s if stream else s.response_timeout_s
            return GatewayTimeout(f"The engine sent nothing for {wait:g}s.", code="engine_timeout")
        if isinstance(exc, NotHttp):  # (it did not close: the gateway did, for this)
            return BadGateway(
                f"The engine's answer was not valid HTTP ({exc}).", code="engine_bad_answer"
            )
        when = "before its answer was complete" if midway else "before answering"
        return BadGateway(
            f"The engine closed the connection {when} ({type(exc).__name__}).",
            code="engine_disconnected",
        )


_BREAKER_KINDS: dict[str, FailureKind] = {"timeout": "timeout", "bad_answer": "bad_answer"}


def _broken(kind: str, cause: BaseException) -> UpstreamBroken:
    return UpstreamBroken(cast(Failure, kind), cause)


def home_unavailable() -> ApiError:
    """`engine_unavailable` when the only engine tried was the one holding a stored response (its
    model's other engines may be up, but only that one can answer for it)."""
    return ServiceUnavailable(
        "The engine holding this stored response is unreachable right now; try again shortly.",
        code="engine_unavailable",
        headers={"retry-after": "1"},
    )


def _busy() -> ApiError:
    return ServiceUnavailable(
        "The gateway is at its limit of requests in flight to this model's engines; try again "
        "shortly.",
        code="gateway_busy",
        headers={"retry-after": "1"},
    )
