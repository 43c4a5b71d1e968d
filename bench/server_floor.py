"""The floor under the gateway's CPU per request: what serving HTTP costs before any work.

    .venv/bin/python -m bench.server_floor [--requests 6000] [--concurrency 1 64] [--rounds 2]

Two servers answer every POST with the same fixed JSON body, each in its own process, driven
by the same client in turns:

- `uvicorn`: the gateway's stack with nothing behind it: uvicorn with the gateway's protocol
  (gateway/http_protocol.py) and a bare ASGI app, which reads the body and sends the answer in
  two ASGI messages;
- `raw`: an asyncio protocol of a few lines over httptools, on uvloop, that writes the answer
  straight to the socket (keep-alive, a body of any length; nothing else of HTTP).

Prints requests/s, p50 and the server process's CPU per request. The difference is the most a
server of the gateway's own for its hot routes could take off each request (what uvicorn's
cycle, the ASGI messages and their task cost); compare it with the gateway's own CPU per
request (bench.overhead, same machine).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from typing import cast

import aiohttp
import httptools
import uvicorn
import uvloop
from starlette.types import Receive, Scope, Send

from bench.harness import Server, command, drive
from gateway.http_protocol import GatewayHttpProtocol
from gateway.netutil import free_port

BODY = b'{"id":"x","object":"chat.completion","choices":[]}' * 16
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(
    BODY
)
KINDS = ("uvicorn", "raw")


class RawProtocol(asyncio.Protocol):
    """One request at a time per connection: parse, answer, keep the connection."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        asyncio.get_running_loop().create_task(self.answer())

    async def answer(self) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(HEAD + BODY)


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def serve(kind: str, port: int) -> None:
    if kind == "raw":

        async def main() -> None:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(RawProtocol, "127.0.0.1", port)
            await server.serve_forever()

        uvloop.run(main())
        return
    uvicorn.run(
        asgi_app,
        host="127.0.0.1",
        port=port,
        http=GatewayHttpProtocol,
        loop="uvloop",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )


async def measure(kind: str, concurrency: int, requests: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, server CPU µs per request)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    args = [sys.executable, "-m", "bench.server_floor", "--serve", kind, "--port", str(port)]
    async with command(args, url) as pid:  # (either answers any method)
        server = Server(f"http://127.0.0.1:{port}", pid)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def call(s: aiohttp.ClientSession) -> None:
                async with s.post(url, data=b'{"model":"m"}') as resp:
                    if resp.status != 200 or await resp.read() != BODY:
                        raise RuntimeError(f"{kind} answered {resp.status}")

            await drive(session, call, min(500, requests), concurrency)  # warm
            before = server.cpu_seconds()
            result = await drive(session, call, requests, concurrency)
            used = server.cpu_seconds() - before
    return result.rps, result.p50, used / requests * 1e6


async def run(requests: int, concurrencies: list[int], rounds: int) -> None:
    print(f"{requests} requests per measurement, {rounds} rounds taking turns; medians")
    print("| conc | server | rps | p50 ms | CPU µs/req |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for concurrency in concurrencies:
        seen: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in KINDS}
        for _ in range(rounds):
            for kind in KINDS:
                seen[kind].append(await measure(kind, concurrency, requests))
        cpu = {}
        for kind in KINDS:
            rps, p50, cpu[kind] = (statistics.median(v) for v in zip(*seen[kind], strict=True))
            print(f"| {concurrency} | {kind} | {rps:.0f} | {p50:.3f} | {cpu[kind]:.1f} |")
        print(
            f"| {concurrency} | uvicorn - raw | | | {cpu['uvicorn'] - cpu['raw']:.1f} "
            f"({_times(cpu['uvicorn'], cpu['raw'])}) |"
        )


def _times(a: float, b: float) -> str:
    """`a` as a multiple of `b`; /proc counts CPU in 10 ms clock ticks, so a run too short for
    one tick of the raw server's work says so rather than dividing by zero."""
    return f"{a / b:.2f}x" if b > 0 else "raw under one clock tick: more --requests"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.port)
        return
    asyncio.run(run(args.requests, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
