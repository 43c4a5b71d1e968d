"""aiohttp or httpx as the gateway's upstream client, measured on the proxy path.

The same minimal proxy (a raw ASGI app on uvicorn + uvloop + httptools, one process) forwards
requests to a zero-delay simulator with each client in turn; the load is the same for both.
Prints requests/s and p50/p99 latency for non-streaming and streaming chat completions.

    .venv/bin/python -m bench.upstream_clients [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import httpx
import uvicorn
from starlette.types import Receive, Scope, Send

from bench.harness import Result, drive, process, simulator
from bench.overhead import MODEL, chat_call
from gateway.netutil import free_port

Forward = Callable[[bytes, bool], Awaitable[tuple[int, AsyncIterator[bytes]]]]


async def _aiohttp_forward(upstream: str) -> Forward:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))

    async def forward(body: bytes, stream: bool) -> tuple[int, AsyncIterator[bytes]]:
        resp = await session.post(upstream, data=body, headers={"content-type": "application/json"})

        async def chunks() -> AsyncIterator[bytes]:
            async with resp:
                async for chunk in resp.content.iter_any():
                    yield chunk

        return resp.status, chunks()

    return forward


async def _httpx_forward(upstream: str) -> Forward:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    client = httpx.AsyncClient(limits=limits, timeout=None)

    async def forward(body: bytes, stream: bool) -> tuple[int, AsyncIterator[bytes]]:
        request = client.build_request(
            "POST", upstream, content=body, headers={"content-type": "application/json"}
        )
        resp = await client.send(request, stream=True)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:
                await resp.aclose()

        return resp.status_code, chunks()

    return forward


def proxy_app(
    make: Callable[[str], Awaitable[Forward]], upstream: str
) -> Callable[..., Awaitable[None]]:
    forward: Forward | None = None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal forward
        if scope["type"] == "lifespan":
            return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        if forward is None:
            forward = await make(upstream)
        message = await receive()
        body = message.get("body", b"")
        stream = b'"stream":true' in body
        status, chunks = await forward(body, stream)
        ctype = b"text/event-stream" if stream else b"application/json"
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]}
        )
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def serve_proxy(client: str, port: int, upstream: str) -> None:
    make = _aiohttp_forward if client == "aiohttp" else _httpx_forward
    app = proxy_app(make, upstream + "/v1/chat/completions")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


async def bench(total: int) -> None:
    async with simulator(MODEL) as sim:
        print(f"{'client':<8} {'mode':<10} {'conc':>4} {'rps':>7} {'p50 ms':>7} {'p99 ms':>7}")
        for client in ("aiohttp", "httpx"):
            port = free_port()
            args = [
                "bench.upstream_clients",
                "--serve",
                client,
                "--port",
                str(port),
                "--upstream",
                sim,
            ]
            async with process(args, f"http://127.0.0.1:{port}/healthz"):
                for stream in (False, True):
                    for conc in (1, 16, 64):
                        r = await _measure(f"http://127.0.0.1:{port}", stream, conc, total)
                        mode = "stream" if stream else "non-stream"
                        print(
                            f"{client:<8} {mode:<10} {conc:>4} {r.rps:>7.0f} {r.p50:>7.3f} "
                            f"{r.pct(0.99):>7.3f}",
                            flush=True,
                        )


async def _measure(base: str, stream: bool, conc: int, total: int) -> Result:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:
        await drive(session, chat_call(base, stream), min(200, total), conc)
        return await drive(session, chat_call(base, stream), total, conc)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--serve", choices=["aiohttp", "httpx"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_proxy(args.serve, args.port, args.upstream)
        sys.exit(0)
    asyncio.run(bench(args.requests))
