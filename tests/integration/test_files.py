"""The Files API through the real `openai` client and raw HTTP, against a real Redis: uploads
streamed to a directory, fine-tune files checked line by line, per-tenant scoping, limits,
and nothing left behind by a refused or broken upload (issue 14)."""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import aiohttp
import openai
import orjson
import pytest
import pytest_asyncio
from openai.types import FileObject

from gateway.files.storage import STALE_PART_S
from gateway.files.store import index_key
from tests.integration.conftest import MODEL, Stack
from tests.integration.tenant_stack import TenantStack, tenant_stack
from tests.support.gateways import admin_request
from tests.support.logs import collected
from tests.support.raw_http import read_until_closed

pytestmark = pytest.mark.asyncio(loop_scope="session")

MAX_FILE_BYTES = 64 * 1024
MAX_FILES = 8
MAX_TENANT_BYTES = 6 * MAX_FILE_BYTES
EXAMPLE = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the secret word?"},
        {"role": "assistant", "content": "Quokkalantern."},
    ]
}
HELLO: Any = [{"role": "user", "content": "hi"}]
DATASET = b"".join(orjson.dumps(EXAMPLE) + b"\n" for _ in range(4))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def files(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TenantStack]:
    root = tmp_path_factory.mktemp("files")
    limits = {
        "max_file_bytes": MAX_FILE_BYTES,
        "max_files_per_tenant": MAX_FILES,
        "max_bytes_per_tenant": MAX_TENANT_BYTES,
    }
    async with tenant_stack(root, files={"dir": str(root / "store"), **limits}) as stack:
        yield stack


def _stored(files: TenantStack) -> list[str]:
    """Every file under the storage directory (partial ones included)."""
    store = files.root / "store"
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())


async def test_upload_list_retrieve_download_delete(files: TenantStack) -> None:
    client = await files.tenant("files-a")
    made = await client.files.create(file=("train.jsonl", DATASET), purpose="fine-tune")
    assert made.id.startswith("file-")
    assert (made.object, made.bytes, made.filename, made.purpose) == (
        "file",
        len(DATASET),
        "train.jsonl",
        "fine-tune",
    )
    assert made.status == "processed"
    assert (await client.files.retrieve(made.id)).model_dump() == made.model_dump()
    listed = await client.files.list()
    assert [f.id for f in listed.data] == [made.id]
    assert (await client.files.content(made.id)).read() == DATASET
    assert _stored(files) == [f"files-a/{made.id}"]

    deleted = await client.files.delete(made.id)
    assert (deleted.id, deleted.deleted) == (made.id, True)
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        await client.files.delete(made.id)
    assert (await client.files.list()).data == []
    assert _stored(files) == []


async def test_contents_storage_lost_are_a_503_before_any_byte(files: TenantStack) -> None:
    """The contents are opened before the answer starts: a file storage lost (a volume gone,
    a blob removed under the gateway) answers an error, not a 200 cut after its head."""
    client = await files.tenant("files-lost")
    made = await client.files.create(file=("data.jsonl", DATASET), purpose="fine-tune")
    (files.root / "store" / "files-lost" / made.id).unlink()
    with pytest.raises(openai.InternalServerError) as lost:
        await client.files.content(made.id)
    assert (lost.value.status_code, lost.value.code) == (503, "file_storage_unavailable")
    assert (await client.files.retrieve(made.id)).id == made.id  # the record is kept
    await client.files.delete(made.id)
    with pytest.raises(openai.NotFoundError) as gone:  # deleted: no longer the storage's doing
        await client.files.content(made.id)
    assert gone.value.code == "file_not_found"


async def test_a_delete_whose_bytes_cannot_be_removed_is_done_and_logged(
    files: TenantStack,
) -> None:
    """Found by review: storage that could not remove a deleted file's bytes (a volume gone
    read-only; here a directory in the file's place) answered 500 after the record was gone,
    and the SDK's retry of it a 404: an error for a delete that was done. It is done, and the
    bytes left behind are logged."""
    client = await files.tenant("files-stuck")
    made = await client.files.create(file=("data.jsonl", DATASET), purpose="fine-tune")
    stored = files.root / "store" / "files-stuck" / made.id
    stored.unlink()
    stored.mkdir()
    (stored / "in-the-way").write_bytes(b"x")
    with collected("llmaas.files") as logs:
        deleted = await client.with_options(max_retries=0).files.delete(made.id)
        [line] = await logs.wait_for(lambda r: r.getMessage() == "deleted file's bytes not removed")
    assert (deleted.id, deleted.deleted) == (made.id, True)
    assert line.fields["file"] == made.id  # type: ignore[attr-defined]
    assert "IsADirectoryError" in line.fields["error"]  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(made.id)
    assert (await client.files.list()).data == []


async def test_a_download_the_client_stops_reading_is_cut(tmp_path: Path) -> None:
    """A download waited on its client for as long as the connection lasted: paused ones held
    request slots (a replica of 3 answered 503 to everyone) and their files open. Each write
    now has upstream.write_timeout_s, as a proxied answer's; then the connection is reset."""
    big = 16 * 1024 * 1024  # far more than the sockets' buffers hold
    async with tenant_stack(
        tmp_path,
        files={"dir": str(tmp_path / "store"), "max_file_bytes": big},
        upstream={"write_timeout_s": 1.0},
    ) as stack:
        key = await stack.key("files-paused")
        client = stack.client(key)
        made = await client.files.create(file=("big.bin", b"b" * big), purpose="user_data")
        host, port = stack.gateway.removeprefix("http://").split(":")
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, int(port)))
            request = (
                f"GET /v1/files/{made.id}/content HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {key}\r\n\r\n"
            )
            await loop.sock_sendall(sock, request.encode())  # and reads nothing for a while
            await asyncio.sleep(3)
            received = await read_until_closed(sock)
        finally:
            sock.close()
        assert received < big // 2, received  # cut: not the whole file
        again = await client.files.content(made.id)  # a reader that reads gets it all
        assert len(again.read()) == big


async def test_another_tenant_cannot_see_or_touch_a_file(files: TenantStack) -> None:
    owner = await files.tenant("files-owner")
    other = await files.tenant("files-other")
    made = await owner.files.create(file=("data.jsonl", DATASET), purpose="fine-tune")
    for attempt in (
        other.files.retrieve(made.id),
        other.files.content(made.id),
        other.files.delete(made.id),
    ):
        with pytest.raises(openai.NotFoundError):
            await attempt
    assert (await other.files.list()).data == []
    assert (await owner.files.retrieve(made.id)).id == made.id  # untouched
    await owner.files.delete(made.id)


@pytest.mark.parametrize(
    ("content", "names"),
    [
        (b"", "no examples"),
        (b"\n\n", "no examples"),
        (orjson.dumps(EXAMPLE) + b"\n{not json\n", "Line 2 is not valid JSON"),
        (b"[1, 2]\n", "Line 1 must be a JSON object"),
        (b'{"prompt": "a", "completion": "b"}\n', "Line 1: 'messages' is missing"),
        (b'{"messages": []}\n', "Line 1: 'messages' must be a non-empty array"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}\n', "Line 1 has no assistant"),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}\n', "messages[0]: 'role'"),
        (b'{"messages": [{"role": "assistant", "content": 7}]}\n', "messages[0]: 'content'"),
        (b"\xff\xfe\n", "Line 1 is not UTF-8 (at byte 1)"),
    ],
)
async def test_a_bad_fine_tune_file_is_refused_naming_the_line(
    files: TenantStack, content: bytes, names: str
) -> None:
    client = await files.tenant("files-bad")
    before = _stored(files)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.files.create(file=("bad.jsonl", content), purpose="fine-tune")
    error = _error(refused.value)
    assert names in error["message"]
    assert (error["param"], error["code"]) == ("file", "invalid_file_format")
    assert _stored(files) == before  # nothing kept, no partial file
    assert (await client.files.list()).data == []


async def test_the_same_bytes_are_stored_unchecked_for_other_purposes(files: TenantStack) -> None:
    client = await files.tenant("files-batch")
    made = await client.files.create(file=("notes.txt", b"not jsonl"), purpose="user_data")
    assert made.bytes == len(b"not jsonl")
    await client.files.delete(made.id)


async def test_upload_limits_and_bad_fields(files: TenantStack) -> None:
    client = await files.tenant("files-limits")
    before = _stored(files)
    with pytest.raises(openai.APIStatusError) as big:
        await client.files.create(file=("big.bin", b"x" * (MAX_FILE_BYTES + 1)), purpose="batch")
    assert big.value.status_code == 413
    assert _error(big.value)["code"] == "file_too_large"
    with pytest.raises(openai.BadRequestError) as purpose:
        await client.files.create(file=("a.jsonl", DATASET), purpose="homework")  # type: ignore[arg-type]
    assert _error(purpose.value)["param"] == "purpose"
    with pytest.raises(openai.BadRequestError) as expiring:
        await client.files.create(
            file=("a.jsonl", DATASET),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 3600},
        )
    assert "expires_after" in _error(expiring.value)["message"]
    assert _stored(files) == before


async def test_raw_requests_that_are_not_uploads(files: TenantStack) -> None:
    key = await files.key("files-raw")
    auth = {"authorization": f"Bearer {key}"}
    url = f"{files.gateway}/v1/files"
    async with files.http.post(url, json={"purpose": "batch"}, headers=auth) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_content_type"
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("purpose", "batch")
    async with files.http.post(url, data=form, headers=auth) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "file"
    form = aiohttp.FormData()
    form.add_field("file", b"abc", filename="a.txt")
    async with files.http.post(url, data=form, headers=auth) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert (error["param"], error["code"]) == ("purpose", "missing_required_parameter")
    twice = (  # the last purpose won, silently
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc\r\n--b--\r\n'
    )
    multipart = {**auth, "content-type": "multipart/form-data; boundary=b"}
    async with files.http.post(url, data=twice, headers=multipart) as resp:
        error = (await resp.json())["error"]
        assert (resp.status, error["param"], error["code"]) == (400, "purpose", "invalid_multipart")
    # a gzip body failed as multipart that could not be parsed; one labelled gzip and sent
    # plain was stored as it came (found by review)
    plain = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc\r\n--b--\r\n'
    )
    for encoding, body in (("gzip", gzip.compress(plain)), ("br", plain)):
        encoded = {**multipart, "content-encoding": encoding}
        async with files.http.post(url, data=body, headers=encoded) as resp:
            error = (await resp.json())["error"]
        assert (resp.status, error["code"]) == (415, "unsupported_content_encoding"), error
        assert f"Content-Encoding '{encoding}'" in error["message"]
    async with files.http.post(url, data=plain, headers=multipart) as resp:  # (the body is good)
        assert resp.status == 200, await resp.text()
        await files.http.delete(f"{url}/{(await resp.json())['id']}", headers=auth)
    two = b'name="file"; filename="a.txt"', b'name="file"; filename="b.txt"'
    for dispositions in (two, (b'name="file"',)):  # two files; a file without a filename
        body = (
            b"".join(
                b"--b\r\nContent-Disposition: form-data; %s\r\n\r\nabc\r\n" % d
                for d in (b'name="purpose"', *dispositions)
            ).replace(b"\r\n\r\nabc", b"\r\n\r\nbatch", 1)
            + b"--b--\r\n"
        )
        headers = {**auth, "content-type": "multipart/form-data; boundary=b"}
        async with files.http.post(url, data=body, headers=headers) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
            assert (error["param"], error["code"]) == ("file", "invalid_multipart"), error
    async with files.http.get(f"{url}/../../etc/passwd", headers=auth) as resp:
        assert resp.status == 404
    async with files.http.get(f"{url}/file-nothex", headers=auth) as resp:
        assert resp.status == 404  # an id no file can have: as an unknown one (OpenAI's answer)
        assert (await resp.json())["error"]["code"] == "file_not_found"
    async with files.http.get(url) as resp:
        assert resp.status == 401


async def test_an_upload_cut_before_its_closing_boundary_leaves_nothing(
    files: TenantStack,
) -> None:
    # Cut at a line's end, half a training file was stored whole (200) and would be trained on.
    key = await files.key("files-cut-short")
    client = await files.tenant("files-cut-short")
    url = f"{files.gateway}/v1/files"
    headers = {"authorization": f"Bearer {key}", "content-type": "multipart/form-data; boundary=b"}
    head = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
    )
    before = _stored(files)
    for tail in (b"", b"\r\n--b", b"\r\n--b-"):  # no closing delimiter `--b--`
        async with files.http.post(url, data=head + DATASET + tail, headers=headers) as resp:
            error = (await resp.json())["error"]
            assert (resp.status, error["code"]) == (400, "invalid_multipart"), error
            assert "closing boundary" in error["message"]
    assert _stored(files) == before
    assert [f async for f in await client.files.list()] == []
    async with files.http.post(url, data=head + DATASET + b"\r\n--b--", headers=headers) as resp:
        assert resp.status == 200  # (closed without the last CRLF: whole)
        await client.files.delete((await resp.json())["id"])


async def test_a_filename_sent_as_rfc_5987_is_kept_decoded(files: TenantStack) -> None:
    """`filename*=` alone, beside `filename` (which it overrides), and a broken one."""
    key = await files.key("files-rfc5987")
    url = f"{files.gateway}/v1/files"
    headers = {"authorization": f"Bearer {key}", "content-type": "multipart/form-data; boundary=b"}
    cases = (
        (b"filename*=UTF-8''na%C3%AFve%20set.jsonl", 200, "na\u00efve set.jsonl"),
        (b"filename=\"plain.jsonl\"; filename*=utf-8'en'caf%C3%A9.jsonl", 200, "caf\u00e9.jsonl"),
        (b"filename*=naive.jsonl", 400, "invalid_multipart"),
    )
    for disposition, status, expected in cases:
        body = (
            b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; %s\r\n\r\nabc\r\n--b--\r\n'
            % disposition
        )
        async with files.http.post(url, data=body, headers=headers) as resp:
            answer = await resp.json()
            assert resp.status == status, answer
            if status == 200:
                assert answer["filename"] == expected
            else:
                assert (answer["error"]["param"], answer["error"]["code"]) == ("file", expected)


async def test_listing_pages_in_both_orders_and_by_purpose(files: TenantStack) -> None:
    client = await files.tenant("files-pages")
    made = []
    for i in range(5):
        purpose: Literal["batch", "user_data"] = "batch" if i % 2 else "user_data"
        made.append(await client.files.create(file=(f"f{i}.txt", b"%d" % i), purpose=purpose))
        await asyncio.sleep(0.002)  # distinct creation times
    ids = [m.id for m in made]
    first = await client.files.list(limit=2, order="asc")
    assert [f.id for f in first.data] == ids[:2]
    assert first.has_more
    seen = [f.id async for f in await client.files.list(limit=2, order="asc")]  # SDK paging
    assert seen == ids
    assert [f.id async for f in await client.files.list(limit=2)] == ids[::-1]
    batch = [f.id async for f in await client.files.list(purpose="batch", limit=1, order="asc")]
    assert batch == [ids[1], ids[3]]
    with pytest.raises(openai.BadRequestError) as after:
        await client.files.list(after="file-" + "0" * 24)
    assert _error(after.value)["param"] == "after"
    for m in made:
        await client.files.delete(m.id)


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_deleting_each_file_while_auto_paginating_sees_every_file_once(
    files: TenantStack, order: Literal["asc", "desc"]
) -> None:
    # `async for f in client.files.list(): delete f` pages `after` a file already deleted
    client = await files.tenant(f"files-sweep-{order}")
    made = {
        (await client.files.create(file=(f"{i}.txt", b"x"), purpose="batch")).id  # ties too
        for i in range(5)
    }
    other = await client.files.create(file=("kept.txt", b"x"), purpose="user_data")
    seen = []
    async for f in await client.files.list(limit=2, order=order, purpose="batch"):
        seen.append(f.id)
        await client.files.delete(f.id)
    assert sorted(seen) == sorted(made)
    assert [f.id async for f in await client.files.list(limit=1, order=order)] == [other.id]
    await client.files.delete(other.id)


async def test_a_long_filename_is_cut_keeping_its_extension(files: TenantStack) -> None:
    """Cut at 255 characters, a `.jsonl` lost its extension."""
    client = await files.tenant("files-long-name")
    long = "d" * 300
    made = await client.files.create(file=(f"{long}.jsonl", DATASET), purpose="fine-tune")
    assert (len(made.filename), made.filename[-7:]) == (255, "d.jsonl")
    bare = await client.files.create(file=(long, b"x"), purpose="user_data")
    assert bare.filename == "d" * 255  # no extension to keep
    for file_id in (made.id, bare.id):
        await client.files.delete(file_id)


async def test_control_and_invisible_characters_of_a_filename_become_underscores(
    files: TenantStack,
) -> None:
    # `llmaas files list` printed an escape and a bell to the terminal as they were
    client = await files.tenant("files-odd-name")
    made = await client.files.create(
        file=("a\x1b[31mred\u200b\u202e.txt", b"x"), purpose="user_data"
    )
    assert made.filename == "a_[31mred__.txt"
    assert (await client.files.retrieve(made.id)).filename == made.filename
    await client.files.delete(made.id)


async def test_a_tenant_over_its_file_count_is_refused(files: TenantStack) -> None:
    client = await files.tenant("files-many")
    made = [
        await client.files.create(file=(f"{i}.txt", b"x"), purpose="user_data")
        for i in range(MAX_FILES)
    ]
    with pytest.raises(openai.RateLimitError) as refused:
        await client.files.create(file=("one-more.txt", b"x"), purpose="user_data")
    assert _error(refused.value)["code"] == "too_many_files"
    # no retry makes room: the SDK must not send it again (an upload: the whole file again)
    assert refused.value.response.headers["x-should-retry"] == "false"
    await client.files.delete(made[0].id)
    again = await client.files.create(file=("now.txt", b"x"), purpose="user_data")
    for m in [*made[1:], again]:
        await client.files.delete(m.id)


async def test_a_tenant_over_its_bytes_is_refused(files: TenantStack) -> None:
    """Only a file's size and the count were bounded: one tenant could fill the volume every
    tenant's files, adapters and checkpoints share (10,000 files of 512 MiB)."""
    client = await files.tenant("files-big")
    full = b"x" * MAX_FILE_BYTES
    made = [
        await client.files.create(file=(f"{i}.txt", full), purpose="user_data")
        for i in range(MAX_TENANT_BYTES // MAX_FILE_BYTES)
    ]
    with pytest.raises(openai.RateLimitError) as refused:
        await client.files.create(file=("one-more.txt", b"x"), purpose="user_data")
    error = _error(refused.value)
    assert error["code"] == "too_many_file_bytes"
    assert f"hold {MAX_TENANT_BYTES} bytes" in error["message"]
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert not [p for p in _stored(files) if p.startswith("files-big/") and "one-more" in p]
    await client.files.delete(made[0].id)  # room again
    again = await client.files.create(file=("now.txt", full), purpose="user_data")
    # Files stored before their bytes were counted (a gateway of before 2026-12-06) are
    # counted at the next upload.
    await files.redis.delete("llmaas:{t:files-big}:files:bytes")
    with pytest.raises(openai.RateLimitError) as counted:
        await client.files.create(file=("late.txt", b"x"), purpose="user_data")
    assert _error(counted.value)["code"] == "too_many_file_bytes"
    assert await files.redis.get("llmaas:{t:files-big}:files:bytes") == b"%d" % MAX_TENANT_BYTES
    for m in [*made[1:], again]:
        await client.files.delete(m.id)
    assert await files.redis.get("llmaas:{t:files-big}:files:bytes") == b"0"


async def test_uploads_in_progress_count_against_the_tenants_bytes(files: TenantStack) -> None:
    """Bytes counted only once a file was stored: stalled uploads held many times a tenant's
    bytes on the volume every tenant shares (six of 990 KB against a 1 MiB bound). An upload
    in progress on any replica (its part file) counts; one a stopped gateway left is removed
    once it is STALE_PART_S old."""
    key = await files.key("files-held")
    client = files.client(key)
    full = b"x" * MAX_FILE_BYTES
    made = [
        await client.files.create(file=(f"{i}.txt", full), purpose="user_data")
        for i in range(MAX_TENANT_BYTES // MAX_FILE_BYTES - 1)
    ]  # room for one file more
    host, port = files.gateway.removeprefix("http://").split(":")
    boundary = "heldheld"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    part = b"y" * (MAX_FILE_BYTES * 3 // 4)
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(head) + MAX_FILE_BYTES}\r\n\r\n".encode()
        + head
        + part  # then nothing: it stalls
    )
    await writer.drain()
    directory = files.root / "store" / "files-held"
    try:
        async with asyncio.timeout(10):
            while sum(p.stat().st_size for p in directory.glob(".*.part")) < len(part):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        half = b"z" * (MAX_FILE_BYTES // 2)
        with pytest.raises(openai.RateLimitError) as refused:  # declared: refused at once
            await client.files.create(file=("more.txt", half), purpose="user_data")
        error = _error(refused.value)
        assert error["code"] == "too_many_file_bytes"
        assert "files and uploads in progress hold" in error["message"]

        async def chunked() -> AsyncIterator[bytes]:  # no length declared: refused as it grows
            yield head
            for _ in range(4):
                yield b"w" * (MAX_FILE_BYTES // 8)
                await asyncio.sleep(0.05)
            yield f"\r\n--{boundary}--\r\n".encode()

        headers = {
            "authorization": f"Bearer {key}",
            "content-type": f"multipart/form-data; boundary={boundary}",
        }
        url = f"{files.gateway}/v1/files"
        async with files.http.post(url, data=chunked(), headers=headers) as resp:
            assert resp.status == 429, await resp.text()
            assert (await resp.json())["error"]["code"] == "too_many_file_bytes"
    finally:
        writer.close()
        await writer.wait_closed()
    async with asyncio.timeout(10):  # the stalled upload's part file goes with its connection
        while list(directory.glob(".*.part")):  # noqa: ASYNC110 (a directory, no event)
            await asyncio.sleep(0.05)
    left = directory / f".file-left.{'ab' * 4}.part"  # as a gateway that stopped leaves one
    left.write_bytes(full)
    os.utime(left, (time.time() - STALE_PART_S - 1,) * 2)
    last = await client.files.create(file=("last.txt", full), purpose="user_data")
    assert not left.exists()
    for m in [*made, last]:
        await client.files.delete(m.id)


async def test_concurrent_uploads_cannot_pass_the_file_count(files: TenantStack) -> None:
    client = await files.tenant("files-burst")
    body = b"x" * (MAX_FILE_BYTES // 2)  # received in several reads: all counted before any kept
    tries = [
        client.files.create(file=(f"{i}.txt", body), purpose="user_data")
        for i in range(MAX_FILES + 4)
    ]
    answers = await asyncio.gather(*tries, return_exceptions=True)
    kept = [a.id for a in answers if isinstance(a, FileObject)]
    refused = [a for a in answers if isinstance(a, openai.RateLimitError)]
    assert (len(kept), len(refused)) == (MAX_FILES, 4), answers
    assert {_error(r)["code"] for r in refused} == {"too_many_files"}
    assert sorted(f.id for f in (await client.files.list()).data) == sorted(kept)
    stored = [p for p in _stored(files) if p.startswith("files-burst/")]
    assert sorted(stored) == sorted(f"files-burst/{i}" for i in kept)  # the refused: gone
    for file_id in kept:
        await client.files.delete(file_id)


async def test_an_upload_cut_off_midway_leaves_nothing(files: TenantStack) -> None:
    key = await files.key("files-cut")
    before = _stored(files)
    boundary = "cutcutcut"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + b"y" * 20_000
    host, port = files.gateway.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    request = (
        f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(head) + 30_000}\r\n\r\n"
    ).encode()
    writer.write(request + head)
    await writer.drain()
    await asyncio.sleep(0.3)  # the gateway has started writing the part
    writer.close()
    await writer.wait_closed()
    async with asyncio.timeout(10):
        while _stored(files) != before:  # noqa: ASYNC110 (a directory, no event to await)
            await asyncio.sleep(0.05)
    client = files.client(key)
    assert (await client.files.list()).data == []


async def test_uploads_in_progress_count_against_the_concurrency_limit(
    files: TenantStack,
) -> None:
    """An upload held a request slot of the process for as long as its body took, counted
    against nothing: a key with max_concurrency 1 could hold any number with slow uploads.
    It is now one of the key's requests in flight, and its slot comes back when it ends."""
    key = await files.key("files-slow", max_concurrency=1)
    client = files.client(key)
    await files.cache_key(client, "files-slow")  # the upload below is counted as it arrives
    host, port = files.gateway.removeprefix("http://").split(":")

    async def slow_upload() -> tuple[asyncio.Task[bytes], asyncio.StreamWriter]:
        """An upload whose body never comes, and its answer (if it ever gets one)."""
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: multipart/form-data; boundary=slowslow\r\n"
            "Content-Length: 50000\r\n\r\n--slowslow\r\n".encode()
        )
        await writer.drain()
        return asyncio.create_task(reader.read(1)), writer

    answered, writer = await slow_upload()
    try:
        refused = None
        async with asyncio.timeout(10):
            while refused is None:  # until the upload has reached the handler
                try:
                    uploaded = await client.files.create(file=("a.txt", b"a"), purpose="user_data")
                    await client.files.delete(uploaded.id)
                except openai.RateLimitError as exc:
                    refused = exc
                if answered.done():  # the upload came second and was refused itself: again
                    writer.close()
                    answered, writer = await slow_upload()
                    refused = None
                await asyncio.sleep(0.02)
        assert "in flight at the key scope: the limit is 1" in refused.message
        assert refused.response.headers["retry-after"] == "1"
        with pytest.raises(openai.RateLimitError):  # the key's inference counts the same
            await client.chat.completions.create(model=MODEL, messages=HELLO)
        await client.files.list()  # listing is not a held request
        other = await files.tenant("files-slow")  # another key of the tenant: no limit
        await other.files.delete(
            (await other.files.create(file=("b.txt", b"b"), purpose="batch")).id
        )
        assert not answered.done()  # the upload still waits for its body
    finally:
        writer.close()
        answered.cancel()
    async with asyncio.timeout(10):
        while True:  # the upload ended with its connection: the slot is free again
            try:
                uploaded = await client.files.create(file=("c.txt", b"c"), purpose="user_data")
                break
            except openai.RateLimitError:
                await asyncio.sleep(0.02)
    await client.files.delete(uploaded.id)


async def test_without_redis_the_files_api_says_so(stack: Stack) -> None:
    async with stack.http.get(f"{stack.gateway}/v1/files") as resp:
        assert resp.status == 503
        assert "Redis" in (await resp.json())["error"]["message"]


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict)
    error: dict[str, Any] = body.get("error", body)
    return error


async def test_unwritable_storage_is_a_503_not_a_500(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the storage directory should be")
    async with tenant_stack(tmp_path, files={"dir": str(blocked)}) as stack:
        client = await stack.tenant("t")
        with pytest.raises(openai.InternalServerError) as refused:
            await client.files.create(file=("a.jsonl", DATASET), purpose="fine-tune")
        assert refused.value.status_code == 503
        assert _error(refused.value)["code"] == "file_storage_unavailable"
        assert (await client.files.list()).data == []
        # A tenant whose bytes are counted: its uploads in progress are looked for first on
        # the storage, where the same failure was a 500.
        await stack.redis.set("llmaas:{t:t}:files:bytes", 0)
        with pytest.raises(openai.InternalServerError) as counted:
            await client.files.create(file=("a.jsonl", DATASET), purpose="fine-tune")
        assert counted.value.status_code == 503
        assert _error(counted.value)["code"] == "file_storage_unavailable"


async def test_a_stopped_uploads_part_file_is_removed_whoever_uploads_next(
    tmp_path: Path,
) -> None:
    """Found by review: the part file a gateway stopped mid-upload left was removed only by its
    own tenant's next upload (README: "removed after 10 minutes untouched"); a tenant that
    never uploaded again kept it for good. Every gateway sweeps every tenant's."""
    store = tmp_path / "store"
    (store / "gone-tenant").mkdir(parents=True)
    stale = store / "gone-tenant" / ".file-abc.0123abcd.part"
    fresh = store / "gone-tenant" / ".file-def.4567abcd.part"  # (an upload in progress)
    kept = store / "gone-tenant" / "file-ghi"  # (a stored file, however old)
    for path in (stale, fresh, kept):
        path.write_bytes(b"x" * 10)
    two_hours_ago = time.time() - 7200
    for path in (stale, kept):
        os.utime(path, (two_hours_ago, two_hours_ago))
    with collected("llmaas.files") as logs:
        async with tenant_stack(tmp_path, files={"dir": str(store)}):
            [line] = await logs.wait_for(
                lambda r: r.getMessage() == "stale upload part files removed"
            )
            assert not stale.exists()
            assert fresh.exists()
            assert kept.exists()
    assert line.fields["removed"] == 1  # type: ignore[attr-defined]


async def test_files_turned_off_are_not_served(tmp_path: Path) -> None:
    """files.enabled false (the chart without fine-tuning, no shared volume): uploads were a 503
    file_storage_unavailable that clients retried; /v1/files is now unknown, and the document
    does not list it."""
    async with tenant_stack(tmp_path, files={"enabled": False}) as stack:
        client = await stack.tenant("t")
        with pytest.raises(openai.NotFoundError):
            await client.files.create(file=("a.jsonl", DATASET), purpose="fine-tune")
        with pytest.raises(openai.NotFoundError):
            await client.files.list()
        await client.models.list()  # the rest is served
        async with stack.http.get(f"{stack.gateway}/openapi.json") as resp:
            paths = (await resp.json())["paths"]
    assert "/v1/chat/completions" in paths
    assert [p for p in paths if p.startswith("/v1/files")] == []


async def test_a_redis_too_slow_to_answer_is_a_retryable_503_not_a_500(tmp_path: Path) -> None:
    """Found when a busy CI machine made a job's events 500: Redis did not answer within
    redis_timeout_s under a route that reads it directly."""
    async with tenant_stack(tmp_path) as stack:
        client = await stack.tenant("slow-redis")
        await stack.cache_key(client, "slow-redis")
        await stack.redis.client_pause(3000)  # Redis takes no command for 3 s
        with pytest.raises(openai.InternalServerError) as refused:
            await client.files.list()
        assert refused.value.status_code == 503
        assert _error(refused.value)["code"] == "store_unavailable"
        assert refused.value.response.headers["retry-after"] == "1"
        await stack.redis.client_unpause()
        assert (await client.files.list()).data == []


async def _settled(stack: TenantStack, tenant: str) -> list[str]:
    """The tenant's stored files once no part is left (an upload answered 503 settles late)."""
    async with asyncio.timeout(20):
        while any(name.startswith(f"{tenant}/.") for name in _stored(stack)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return _stored(stack)


async def test_an_upload_whose_record_was_written_late_is_stored_once(tmp_path: Path) -> None:
    """Found by review: an upload whose record's write (one script) ran but answered after
    redis_timeout_s was a 503, and its bytes were deleted: a listed, "processed" file whose
    contents were a 503 for good, counted in the tenant's files and bytes (and a 503 kept so,
    each SDK retry stored one more file). The record is read back once Redis answers: listed,
    the upload is answered as stored, once."""
    async with tenant_stack(
        tmp_path, proxied=True, files={"dir": str(tmp_path / "store")}
    ) as stack:
        assert stack.proxy is not None
        client = await stack.tenant("late-record")
        first = await client.files.create(file=("first.txt", b"1"), purpose="user_data")
        stack.proxy.set_mode("delay", delay_s=2.0)  # every script runs; its reply comes late
        try:
            late = await client.with_options(max_retries=2).files.create(
                file=("late.jsonl", DATASET), purpose="fine-tune"
            )
        finally:
            stack.proxy.set_mode("pass")
        assert stack.proxy.delayed >= 1
        assert sorted(f.id for f in (await client.files.list()).data) == sorted([first.id, late.id])
        assert await _settled(stack, "late-record") == sorted(
            f"late-record/{f}" for f in (first.id, late.id)
        )
        assert (await client.files.content(late.id)).read() == DATASET


async def test_an_upload_whose_record_is_unknown_keeps_its_bytes_and_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a gateway stopping (or Redis away for minutes) before it learnt whether
    the record was written left the bytes hidden as a part, then removed as stale: a listed file
    whose contents were a 503 for good. Redis silent past the read-back, the bytes stay under
    their name and the 503 says the file may be stored, not retried by the SDK."""
    monkeypatch.setattr("gateway.redis_client.READ_BACK_S", 1.0)  # past it sooner than 5 s
    async with tenant_stack(
        tmp_path, proxied=True, files={"dir": str(tmp_path / "store")}
    ) as stack:
        proxy = stack.proxy
        assert proxy is not None
        client = await stack.tenant("unknown-record")
        first = await client.files.create(file=("first.txt", b"1"), purpose="user_data")

        async def cut_once_written() -> None:
            while not proxy.delayed:  # noqa: ASYNC110 (the script went by: it runs)
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # (it reached Redis)
            proxy.set_mode("refuse")  # its reply lost, and Redis gone past the read-back

        proxy.set_mode("delay", delay_s=30.0)
        cutting = asyncio.create_task(cut_once_written())
        try:
            with pytest.raises(openai.InternalServerError) as refused:
                await client.with_options(max_retries=2).files.create(
                    file=("unknown.jsonl", DATASET), purpose="fine-tune"
                )
        finally:
            await cutting
            proxy.set_mode("pass")
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert "retry-after" not in refused.value.response.headers
        error = _error(refused.value)
        assert error["code"] == "store_unavailable"
        assert "may have been stored" in error["message"]
        [listed] = [f for f in (await client.files.list()).data if f.id != first.id]  # once
        assert (await client.files.content(listed.id)).read() == DATASET


async def _filling_the_last_slot(
    stack: TenantStack, tenant: str, boundary: str, *, delay_s: float
) -> AsyncIterator[bytes]:
    """An upload's body (multipart, `boundary`) of `tenant`, who has 1 file of 2: half of it,
    then, once its part is on disk, another file takes the last slot (so its record's script
    stores nothing) and Redis's replies to scripts come `delay_s` late; then the rest."""
    directory = stack.root / "store" / tenant
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
        f"user_data\r\n--{boundary}\r\nContent-Disposition: form-data; "
        'name="file"; filename="a.txt"\r\nContent-Type: text/plain\r\n\r\n'
        "first half "
    ).encode()
    async with asyncio.timeout(10):  # counted and under way: its part is written
        while not list(directory.glob(".*.part")):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await stack.redis.zadd(index_key(tenant), {"file-x": 1})  # (now 2 of 2)
    assert stack.proxy is not None
    stack.proxy.set_mode("delay", delay_s=delay_s)
    yield f"second half\r\n--{boundary}--\r\n".encode()


async def test_an_upload_whose_record_stays_unknown_and_was_never_listed_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: an upload whose record's script stored nothing (the tenant at max_files
    meanwhile) and whose reply was lost with Redis away past the 5-s read-back kept its bytes
    on disk for good, never listed. Its record is read again until Redis answers: not listed,
    the bytes are removed."""
    # Past the read-back sooner than 5 s, and read again every 0.5 s rather than every 5 s
    # (read while Redis still refuses too: the record is read *until* it answers).
    monkeypatch.setattr("gateway.redis_client.READ_BACK_S", 1.0)
    monkeypatch.setattr("gateway.api.files.UNSURE_EVERY_S", 0.5)
    files = {"dir": str(tmp_path / "store"), "max_files_per_tenant": 2}
    async with tenant_stack(tmp_path, proxied=True, files=files) as stack:
        proxy = stack.proxy
        assert proxy is not None
        key = await stack.key("never-listed")
        client = stack.client(key)
        first = await client.files.create(file=("first.txt", b"1"), purpose="user_data")
        boundary = "unknownunknown"
        body = _filling_the_last_slot(stack, "never-listed", boundary, delay_s=30.0)

        async def cut_once_written() -> None:
            while not proxy.delayed:  # noqa: ASYNC110 (the script went by: it runs)
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # (it reached Redis, and stored nothing)
            proxy.set_mode("refuse")  # its reply lost, and Redis gone past the read-back

        headers = {
            "authorization": f"Bearer {key}",
            "content-type": f"multipart/form-data; boundary={boundary}",
        }
        cutting = asyncio.create_task(cut_once_written())
        try:
            async with stack.http.post(
                f"{stack.gateway}/v1/files", data=body, headers=headers
            ) as resp:
                assert resp.status == 503, await resp.text()
                assert "may have been stored" in (await resp.json())["error"]["message"]
        finally:
            await cutting
            proxy.set_mode("pass")
        assert len(_stored(stack)) == 2  # (kept while Redis could not say)
        async with asyncio.timeout(30):  # Redis answers again: not listed, so removed
            while _stored(stack) != [f"never-listed/{first.id}"]:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert [f.id for f in (await client.files.list()).data] == [first.id]


async def test_an_upload_whose_record_was_not_written_leaves_nothing(tmp_path: Path) -> None:
    """The other side: the record's script ran late but stored nothing (the tenant reached
    max_files meanwhile): once Redis answers, the bytes of the upload told 503 are removed."""
    files = {"dir": str(tmp_path / "store"), "max_files_per_tenant": 2}
    async with tenant_stack(tmp_path, proxied=True, files=files) as stack:
        assert stack.proxy is not None
        key = await stack.key("no-record")
        client = stack.client(key)
        first = await client.files.create(file=("first.txt", b"1"), purpose="user_data")
        boundary = "latelate"
        body = _filling_the_last_slot(stack, "no-record", boundary, delay_s=2.0)

        headers = {
            "authorization": f"Bearer {key}",
            "content-type": f"multipart/form-data; boundary={boundary}",
        }
        try:
            async with stack.http.post(
                f"{stack.gateway}/v1/files", data=body, headers=headers
            ) as resp:
                assert resp.status == 503, await resp.text()
        finally:
            stack.proxy.set_mode("pass")
        assert stack.proxy.delayed >= 1
        assert await _settled(stack, "no-record") == [f"no-record/{first.id}"]


async def test_an_upload_whose_key_is_revoked_while_it_comes_stores_nothing(
    files: TenantStack,
) -> None:
    """Found by review 2026-12-07 (for inference requests; uploads read the key with their
    head the same way): an upload whose key was revoked while its body came was stored and
    listed. Its key is read again once the body is in: a 401, and nothing kept."""
    key = await files.key("files-revoked")
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="r.jsonl"\r\n'
            "content-type: application/jsonl\r\n\r\n"
        ).encode()
        + DATASET
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /v1/files HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n"
        f"content-type: multipart/form-data; boundary={boundary}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", int(files.gateway.rsplit(":")[-1]))
    try:
        writer.write(head + body[: len(body) // 2])
        await writer.drain()
        await asyncio.sleep(0.2)  # the head read, its key with it, and half the upload
        revoked, _ = await admin_request(
            files.http, files.gateway, "DELETE", f"/keys/{key.split('-')[2]}"
        )
        assert revoked == 200
        writer.write(body[len(body) // 2 :])
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert not [path for path in _stored(files) if path.startswith("files-revoked/")]
    assert not (await (await files.tenant("files-revoked")).files.list()).data
