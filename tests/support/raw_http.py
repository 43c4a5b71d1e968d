"""Raw HTTP/1.1 over a socket, for clients that misbehave on purpose (stop reading, hang up
mid-body), and the counters that must come back to zero afterwards."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any

from redis.asyncio import Redis


def post_request(path: str, body: dict[str, Any], authorization: str) -> tuple[bytes, bytes]:
    """The head and body of a POST with a JSON body; the connection closes after it."""
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: {authorization}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n"
        "connection: close\r\n\r\n"
    ).encode()
    return head, payload


async def leases_held(redis: Redis) -> dict[str, int]:
    """Every concurrency lease set in Redis → how many leases it holds."""
    held = {}
    async for key in redis.scan_iter(match="llmaas:*:leases"):
        held[key.decode()] = int(await redis.zcard(key))
    return held


_INFLIGHT = re.compile(r'^llmaas_inflight_requests\{engine="([^"]+)"\} (\S+)$', re.M)


def inflight_gauges(metrics_text: str) -> dict[str, float]:
    """The gateway's llmaas_inflight_requests gauge of each engine."""
    return {engine: float(value) for engine, value in _INFLIGHT.findall(metrics_text)}


async def read_until_closed(sock: socket.socket, timeout_s: float = 10.0) -> int:
    """The bytes a non-blocking socket still receives until its peer closes or resets it."""
    loop = asyncio.get_running_loop()
    received = 0
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                data = await loop.sock_recv(sock, 1 << 20)
            except ConnectionResetError:
                return received
            if not data:
                return received
            received += len(data)
