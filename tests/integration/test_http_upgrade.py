"""A request that asks to switch protocols (`curl --http2` and Java's HttpClient send `Upgrade:
h2c` with every request to an http:// URL) is served as the HTTP/1.1 request it also is, by
`llmaas serve`: its body was lost (httptools ends such a request at its head) and, arriving in a
later read, parsed as requests of their own (found by review, 2026-12-06)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from gateway.embedded.redis_server import running_redis
from gateway.sim.config import SimConfig
from tests.integration.conftest import MODEL
from tests.integration.sim_fixture import running_sim
from tests.support.gateways import gateway_process, shared_config, tenant_key

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHAT = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
H2C = b"connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQ\r\n"


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[str, str]]:
    """A `llmaas serve` gateway's host:port, and a key's Authorization header line."""
    tmp = tmp_path_factory.mktemp("upgrade")
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL], max_tokens=4)) as sim,
        aiohttp.ClientSession() as http,
    ):
        config = shared_config(tmp / "gw.yaml", redis_url=redis_url, model=MODEL, sim=sim)
        async with gateway_process(config) as gw:
            key = await tenant_key(http, gw.url, "upgrade")
            yield gw.url.removeprefix("http://"), f"authorization: {key['authorization']}\r\n"


async def exchange(address: str, reads: list[bytes]) -> list[tuple[int, bytes]]:
    """Send `reads` on one connection, each in a write of its own, then a health check that
    closes it; every answer read back, (status, body), in order."""
    host, port = address.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for read in reads:
            writer.write(read)
            await writer.drain()
            await asyncio.sleep(0.05)  # (its own read at the gateway)
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    answers = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        answers.append((status, rest[:length]))
        raw = rest[length:]
    return answers


def post(key: bytes, body: bytes, extra: bytes = H2C) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"%s%scontent-length: %d\r\n\r\n" % (key, extra, len(body))
    )


@pytest.mark.parametrize("split", ["one write", "body later", "head in pieces"])
async def test_a_request_asking_for_h2c_is_answered_with_its_body(
    served: tuple[str, str], split: str
) -> None:
    address, key = served
    head = post(key.encode(), CHAT)
    reads = {
        "one write": [head + CHAT],
        "body later": [head, CHAT],
        "head in pieces": [head[:70], head[70:-20], head[-20:] + CHAT[:10], CHAT[10:]],
    }[split]
    answers = await exchange(address, reads)
    assert [status for status, _ in answers] == [200, 200], answers
    assert orjson.loads(answers[0][1])["object"] == "chat.completion"


async def test_a_body_is_never_read_as_requests_of_its_own(served: tuple[str, str]) -> None:
    """The body of a request asking for h2c, sent after its head: it held a request for the
    model list, which was answered, a second answer on the connection."""
    address, key = served
    hidden = f"GET /v1/models HTTP/1.1\r\nhost: x\r\n{key}\r\n".encode()
    answers = await exchange(address, [post(key.encode(), hidden), hidden])
    assert [status for status, _ in answers] == [400, 200], answers
    assert orjson.loads(answers[0][1])["error"]["code"] == "invalid_json"


async def test_a_websocket_handshake_is_answered_as_plain_http(served: tuple[str, str]) -> None:
    """uvicorn answered a bare `403 Forbidden` in plain text: the gateway serves no WebSocket."""
    address, key = served
    handshake = (
        f"GET /v1/models HTTP/1.1\r\nhost: x\r\n{key}connection: Upgrade\r\nupgrade: websocket\r\n"
        "sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ).encode()
    answers = await exchange(address, [handshake])
    assert [status for status, _ in answers] == [200, 200], answers
    assert orjson.loads(answers[0][1])["object"] == "list"


async def test_an_upgrade_that_comes_pipelined_is_answered_and_nothing_more_read(
    served: tuple[str, str],
) -> None:
    """A request asking for h2c pipelined behind another in one read, whose head httptools
    reads before its `Upgrade` can be taken out: httptools ends it at its head, so it is
    answered as read (its body lost), and the connection is closed, so that nothing after it
    (its body, here a health check) is read as requests. A CONNECT is answered and closed
    too."""
    address, key = served
    plain = post(key.encode(), CHAT, b"") + CHAT
    answers = await exchange(address, [plain + post(key.encode(), CHAT) + CHAT])
    assert [status for status, _ in answers] == [200, 400], answers  # (no health check)
    connect = f"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n{key}\r\n"
    answers = await exchange(address, [connect.encode()])
    assert len(answers) == 1, answers
    assert 400 <= answers[0][0] < 500, answers
