"""What the HTTP layer refuses before a route runs, as an operator sees it: a real gateway
process (`llmaas serve`), its JSON log on stderr and its /metrics. A 400 for a head that is
not HTTP and a 431 for one too large left no access log line and no count; a body too late,
answered 408, was logged and counted as a 499 `client_disconnected` under another request id
than its answer's (found 2026-12-07)."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.embedded.redis_server import running_redis
from gateway.http_protocol import MAX_HEAD_BYTES
from gateway.sim.config import SimConfig
from tests.integration.conftest import MODEL
from tests.integration.sim_fixture import running_sim
from tests.support.gateways import OPS, gateway_process, shared_config, tenant_key

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _answer(port: int, *sends: bytes) -> tuple[int, str, bytes]:
    """Send the bytes on a new connection and read until the gateway closes it: the answer's
    status, x-request-id and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for data in sends:
            writer.write(data)
        await writer.drain()
        async with asyncio.timeout(30):
            answer = await reader.read(-1)
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    found = re.search(rb"\r\nx-request-id: (\w+)\r\n", answer)
    assert found is not None, answer
    return status, found.group(1).decode(), answer.partition(b"\r\n\r\n")[2]


def _access_lines(log: Path) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return {line["request_id"]: line for line in lines if line.get("logger") == "llmaas.access"}


async def _logged(log: Path, ids: set[str]) -> dict[str, dict[str, Any]]:
    async with asyncio.timeout(10):
        while True:
            lines = _access_lines(log)
            if ids <= lines.keys():
                return lines
            await asyncio.sleep(0.05)


def _count(metrics: str, route: str, status: int) -> float:
    found = re.search(
        rf'^llmaas_requests_total\{{model="",route="{route}",status="{status}"\}} (\S+)$',
        metrics,
        re.M,
    )
    return 0.0 if found is None else float(found.group(1))


async def test_requests_refused_unread_or_late_are_logged_and_counted_as_answered(
    tmp_path: Path,
) -> None:
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL])) as sim,
        aiohttp.ClientSession() as http,
    ):
        extra = "access_log: true\nkeep_alive_s: 1\n"
        config = shared_config(
            tmp_path / "gw.yaml", redis_url=redis_url, model=MODEL, sim=sim, extra=extra
        )
        log = tmp_path / "gw.log"
        async with gateway_process(config, log=log) as gw:
            key = (await tenant_key(http, gw.url, "t"))["authorization"]
            port = int(gw.url.rsplit(":", 1)[1])
            not_http = await _answer(port, b"GET / HTTP/1.1\r\nhost\r\n\r\n")
            brew = await _answer(port, b"BREW /pot HTTP/1.1\r\nhost: x\r\n\r\n")
            too_large = await _answer(
                port, b"GET /v1/models HTTP/1.1\r\nx-big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n"
            )
            head = (
                "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                f"authorization: {key}\r\ncontent-type: application/json\r\n"
                "content-length: 100\r\n\r\n"
            ).encode()
            late = await _answer(port, head, b'{"model":')  # 9 bytes of 100, then silence
            # Found by review 2026-12-07: a coding httptools passes (any list ending in chunked)
            # was dropped, the body read as it came: a gzipped one refused as "not UTF-8".
            body = gzip.compress(b'{"model":"' + MODEL.encode() + b'","messages":[]}')
            coded = await _answer(
                port,
                head.replace(b"content-length: 100", b"transfer-encoding: gzip, chunked")
                + b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body),
            )
            assert [not_http[0], brew[0], too_large[0], late[0], coded[0]] == [
                400,
                400,
                431,
                408,
                501,
            ]
            error = json.loads(coded[2])["error"]
            assert error["code"] == "unsupported_transfer_encoding"
            assert "Transfer-Encoding 'gzip, chunked'" in error["message"]
            assert "Content-Encoding" in error["message"]  # (the header that does it)
            lines = await _logged(log, {not_http[1], brew[1], too_large[1], late[1], coded[1]})
            async with http.get(f"{gw.url}/metrics", headers=OPS) as resp:
                metrics = await resp.text()
    unread = {"method": None, "path": None, "duration_ms": None, "outcome": "refused"}
    assert lines[not_http[1]] | unread == lines[not_http[1]]
    assert lines[not_http[1]]["status"] == 400
    assert lines[brew[1]] | unread == lines[brew[1]]
    # Found 2026-12-07: uvicorn's own "Invalid HTTP request received." came with each, a second
    # line without a request id that any client could write at will.
    assert "Invalid HTTP request" not in log.read_text()
    assert lines[too_large[1]] | unread == lines[too_large[1]]
    assert lines[too_large[1]]["status"] == 431
    assert (lines[late[1]]["status"], lines[late[1]]["outcome"]) == (408, "refused")
    assert lines[late[1]]["path"] == "/v1/chat/completions"
    assert not [line for line in lines.values() if line["status"] == 499]
    assert _count(metrics, "unread", 400) == 2
    assert _count(metrics, "unread", 431) == 1
    assert _count(metrics, "unread", 501) == 1
    assert lines[coded[1]] | unread == lines[coded[1]]
    assert _count(metrics, "chat/completions", 408) == 1
    assert _count(metrics, "chat/completions", 499) == 0
