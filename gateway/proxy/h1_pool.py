"""Keep-alive HTTP/1.1 connections to every engine (h1.py), and the requests sent over them.

Idle connections are kept per engine (newest first); one the engine closed while idle is dropped
when it closes, one idle for `REUSE_IDLE_S` is not reused (servers close idle connections after
a few seconds: uvicorn, and so vLLM, after 5 s), and a request that meets a kept connection
closing under it (the engine's close and our write crossing: h1.CROSSING_S) is sent once more
on a new connection. A kept connection that closes later, still before answering, is not
retried on the same engine: the engine may have read the request and worked on it (an engine
that crashes on it would get it again), so the caller tries the next engine instead.

Every REUSE_IDLE_S at most, a request has every engine's connections idle past it closed
(`_sweep`): closed only when their engine was asked again, those of an engine that left (a
pod gone from a DNS name, without a FIN) stayed open for good, up to MAX_IDLE_PER_ENGINE each.
"""

from __future__ import annotations

import asyncio
import ssl

from gateway.proxy.h1 import ConnectFailed, Connection, Disconnected, Origin

MAX_IDLE_PER_ENGINE = 256
REUSE_IDLE_S = 4.0  # a kept connection idle for longer is closed, not reused


class H1Pool:
    """Keep-alive connections to every engine, and the requests sent over them."""

    def __init__(self, connect_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.idle: dict[Origin, list[Connection]] = {}
        self.origins: dict[str, Origin] = {}
        self._tls: ssl.SSLContext | None = None
        self.swept = 0.0  # when idle connections were last swept (loop time)

    def origin(self, url: str) -> Origin:
        found = self.origins.get(url)
        if found is None:
            found = self.origins[url] = Origin.of(url)
        return found

    async def request(
        self,
        url: str,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        *,
        idle_s: float | None,
    ) -> Connection:
        """Send one request and wait for the answer's head, on a kept-alive connection if
        there is one. Raises ConnectFailed, Disconnected or TimeoutError (no head within
        `idle_s`); the answer's body is read through H1Response."""
        origin = self.origin(url)
        message = _head(origin, method, path, headers, len(body)) + body
        now = asyncio.get_running_loop().time()
        if now - self.swept > REUSE_IDLE_S:
            self._sweep(now)
        conn = self._idle(origin)
        if conn is not None:
            try:
                return await _exchange(conn, message, idle_s)
            except Disconnected:
                if not conn.crossed():  # the engine had the request: never sent to it again
                    raise
        return await _exchange(await self._connect(origin), message, idle_s)

    def _idle(self, origin: Origin) -> Connection | None:
        """The newest kept connection to `origin` that is still open and not idle too long."""
        idle = self.idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if conn.loop.time() - conn.last_read < REUSE_IDLE_S:
                return conn
            while idle:  # kept before this one, so idle longer still
                idle.pop().close()
            conn.close()
        return None

    def _sweep(self, now: float) -> None:
        """Close every connection idle past REUSE_IDLE_S (never to be reused), of every
        engine; forget engines with none left."""
        self.swept = now
        for origin, idle in list(self.idle.items()):
            fresh = next(
                (i for i, conn in enumerate(idle) if now - conn.last_read < REUSE_IDLE_S),
                len(idle),
            )
            for conn in idle[:fresh]:  # (oldest first)
                conn.close()
            del idle[:fresh]
            if not idle:
                del self.idle[origin]

    async def _connect(self, origin: Origin) -> Connection:
        loop = asyncio.get_running_loop()
        tls = self._context() if origin.tls else None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, origin),
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls else None,
                )
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        return conn

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def put(self, conn: Connection) -> None:
        if not conn.reusable():
            conn.close()
            return
        idle = self.idle.setdefault(conn.origin, [])
        if len(idle) >= MAX_IDLE_PER_ENGINE:
            conn.close()
            return
        conn._reset()
        idle.append(conn)

    def close(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                conn.close()
        self.idle.clear()


async def _exchange(conn: Connection, message: bytes, idle_s: float | None) -> Connection:
    """Write the request, wait for the answer's head; on any failure close the connection."""
    try:
        conn.busy = True
        assert conn.transport is not None
        conn.transport.write(message)
        conn.last_read = conn.loop.time()
        while not conn.headers_done:
            if conn.error is not None:
                raise conn.error
            await conn.wait(idle_s)
    except BaseException:
        conn.close()
        raise
    return conn


def _head(origin: Origin, method: str, path: str, headers: dict[str, str], length: int) -> bytes:
    lines = [f"{method} {origin.prefix}{path} HTTP/1.1\r\n".encode()]
    lines.append(b"host: " + origin.authority + b"\r\n")
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    if length or method not in ("GET", "HEAD", "DELETE"):
        lines.append(b"content-length: %d\r\n" % length)
    lines.append(b"\r\n")
    return b"".join(lines)
