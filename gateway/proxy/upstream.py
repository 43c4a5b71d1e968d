"""The HTTP client to the engines: one pooled aiohttp session, connection failover, error mapping.

aiohttp was chosen over httpx by measurement on the proxy path (see bench/README.md).
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from gateway.errors import ApiError, BadGateway, GatewayTimeout, ServiceUnavailable
from gateway.metrics import Metrics
from gateway.routing.engines import Engine
from gateway.settings import UpstreamSettings


class Upstream:
    def __init__(self, settings: UpstreamSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        connect = settings.connect_timeout_s
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=connect, sock_read=settings.stream_idle_timeout_s
        )
        self._body_timeout = aiohttp.ClientTimeout(
            total=None, connect=connect, sock_read=settings.response_timeout_s
        )

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._settings.max_connections, ttl_dns_cache=60, enable_cleanup_closed=False
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )

    async def close(self) -> None:
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
    ) -> tuple[Engine, aiohttp.ClientResponse]:
        """POST to the first engine that accepts the connection; the caller closes the response.

        Only connection failures move on to the next engine: once a request reached an engine it
        is never sent again, because generation is not idempotent. `trying` hears each engine
        as it is tried (and None when none could be reached), so a caller cancelled meanwhile
        knows where its request may have gone.
        """
        timeout = self._stream_timeout if stream else self._body_timeout
        for engine in engines:
            trying(engine)
            try:
                resp = await self.session.post(
                    engine.url + path, data=body, headers=headers, timeout=timeout
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
                self._metrics.upstream_errors.labels(engine.url, "connect").inc()
                engine.mark_down()
                continue
            except aiohttp.ServerTimeoutError as exc:
                raise self.failure(engine, "timeout", exc, stream=stream) from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise self.failure(engine, "disconnect", exc) from exc
            engine.mark_up()
            return engine, resp
        trying(None)
        raise ServiceUnavailable(
            "No engine serving this model is reachable right now; try again shortly.",
            code="engine_unavailable",
        )

    def failure(
        self, engine: Engine, kind: str, exc: BaseException, *, stream: bool = False
    ) -> ApiError:
        """Count an upstream failure and turn it into the error the client sees."""
        self._metrics.upstream_errors.labels(engine.url, kind).inc()
        if kind == "timeout":
            s = self._settings
            wait = s.stream_idle_timeout_s if stream else s.response_timeout_s
            return GatewayTimeout(f"The engine sent nothing for {wait:g}s.", code="engine_timeout")
        return BadGateway(
            f"The engine closed the connection before answering ({type(exc).__name__}).",
            code="engine_disconnected",
        )
