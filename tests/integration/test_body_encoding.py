"""Request bodies sent compressed, through real HTTP: a gzip or deflate body reaches the engine
as the JSON it decodes to (no Content-Encoding of its own); what cannot be decoded is refused in
OpenAI's shape, naming the encoding. A gzip body used to be refused as JSON that is not UTF-8."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from tests.integration.conftest import ADMIN, MODEL, AuthStack, Stack

pytestmark = pytest.mark.asyncio(loop_scope="session")

JSON = {"content-type": "application/json"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "compressed hello"}]}


async def post(stack: Stack, data: bytes, encoding: str) -> tuple[int, dict[str, Any]]:
    headers = {**JSON, "content-encoding": encoding}
    url = f"{stack.gateway}/v1/chat/completions"
    async with stack.http.post(url, data=data, headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("identity, gzip", gzip.compress),
        ("GZIP", lambda data: gzip.compress(data[:10]) + gzip.compress(data[10:])),  # 2 members
    ],
)
async def test_a_compressed_body_reaches_the_engine_as_its_json(
    stack: Stack, encoding: str, compress: Any
) -> None:
    status, answer = await post(stack, compress(orjson.dumps(CHAT)), encoding)
    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["prompt_tokens"] > 0
    last = (await stack.sim_state())["last_request"]
    assert last["body"]["messages"] == CHAT["messages"]
    assert "content-encoding" not in last["headers"]


async def test_what_cannot_be_decoded_is_refused_naming_the_encoding(stack: Stack) -> None:
    body = gzip.compress(orjson.dumps(CHAT))
    bomb = gzip.compress(b'{"model": "' + b" " * 5_000_000 + b'"}')  # 5 MB from ~5 KB
    cases = [
        (body, "br", 415, "unsupported_content_encoding", "Content-Encoding 'br'"),
        (body[:-12], "gzip", 400, "invalid_content_encoding", "not valid gzip"),
        (body, "deflate", 400, "invalid_content_encoding", "not valid deflate"),
        (bomb, "gzip", 413, "request_too_large", "decoded from gzip"),
        # each coding inflated in turn: a few KB of them held the event loop for each
        (
            gzip.compress(body),
            "gzip, identity, gzip, gzip",
            415,
            "unsupported_content_encoding",
            "3 content codings",
        ),
    ]
    for data, encoding, want, code, says in cases:
        status, payload = await post(stack, data, encoding)
        error = payload["error"]
        assert (status, error["code"], error["type"]) == (want, code, "invalid_request_error")
        assert says in error["message"], error
    assert len(bomb) < 65_536  # under the bound as sent: refused for what it decodes to


async def test_the_routes_the_framework_reads_decode_alike(auth: AuthStack) -> None:
    """Admin and fine-tuning bodies are read by FastAPI: a compressed one used to be 'There
    was an error parsing the body'. It is decoded before the route reads it, in the same
    bound; the route then answers as to the plain body."""
    plain = orjson.dumps({"tenant": "zipped", "name": "from gzip"})
    url = f"{auth.gateway}/admin/v1/keys"
    for data, encoding, want in (
        (gzip.compress(plain), "gzip", 201),
        (zlib.compress(plain), "deflate", 201),
        (gzip.compress(plain), "br", 415),
        (gzip.compress(plain)[:-4], "gzip", 400),
        (gzip.compress(b" " * 17_000_000 + plain), "gzip", 413),  # past max_body_bytes decoded
    ):
        headers = {**ADMIN, **JSON, "content-encoding": encoding}
        async with auth.http.post(url, data=data, headers=headers) as resp:
            answer = orjson.loads(await resp.read())
        assert resp.status == want, answer
        if want == 201:
            assert (answer["tenant"], answer["name"]) == ("zipped", "from gzip")
        else:
            assert set(answer["error"]) == {"message", "type", "param", "code"}
    key = await auth.new_key()
    job = orjson.dumps({"model": MODEL, "training_file": "file-nope"})
    headers = {"authorization": f"Bearer {key}", "content-encoding": "gzip", **JSON}
    async with auth.http.post(
        f"{auth.gateway}/v1/fine_tuning/jobs", data=gzip.compress(job), headers=headers
    ) as resp:
        error = orjson.loads(await resp.read())["error"]
    assert (error["param"], error["code"]) == ("model", "model_not_available"), error  # read


async def test_content_encoding_on_two_lines_is_one_list(stack: Stack) -> None:
    # RFC 9110 5.3: `identity` then `gzip` on a second line was read as identity alone, the
    # gzip body then refused as JSON that is not UTF-8
    headers = [("content-type", "application/json")]
    headers += [("content-encoding", "identity"), ("content-encoding", "gzip")]
    url = f"{stack.gateway}/v1/chat/completions"
    data = gzip.compress(orjson.dumps(CHAT))
    async with stack.http.post(url, data=data, headers=CIMultiDict(headers)) as resp:
        assert resp.status == 200, await resp.text()
