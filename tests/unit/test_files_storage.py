"""Blob storage names and the fine-tune format check, on a real directory (tmp_path)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from gateway.files.finetune_format import FileFormatError, check_chat_jsonl
from gateway.files.storage import DirectoryStorage

ON_LOOP = pytest.mark.asyncio(loop_scope="session")

GOOD = orjson.dumps(
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
)


@pytest.mark.parametrize(
    ("tenant", "name"),
    [("..", "x"), ("a", "../b"), ("a/b", "c"), ("a", ".hidden"), ("", "x"), ("a", "x/../../y")],
)
def test_storage_names_cannot_leave_the_root(tmp_path: Path, tenant: str, name: str) -> None:
    with pytest.raises(ValueError, match="not a storage name"):
        DirectoryStorage(tmp_path).path(tenant, name)


@ON_LOOP
async def test_contents_appear_only_once_committed(tmp_path: Path) -> None:
    storage = DirectoryStorage(tmp_path)
    partial = storage.create("acme", "file-1")
    await partial.write(b"abc")
    await partial.finish()
    assert not storage.path("acme", "file-1").exists()
    await partial.commit()
    contents = await storage.open("acme", "file-1")
    assert contents.size == 3
    assert b"".join([c async for c in contents.chunks()]) == b"abc"
    assert contents.handle.closed
    await storage.delete("acme", "file-1")
    assert await asyncio.to_thread(_files_under, tmp_path) == []


@ON_LOOP
async def test_a_tenants_contents_are_the_owners_alone(tmp_path: Path) -> None:
    # (files were 0644 in 0755 directories: any local user could read every tenant's uploads)
    storage = DirectoryStorage(tmp_path)
    partial = storage.create("acme", "file-4")
    await partial.write(b"secret")
    await partial.finish()
    await partial.commit()
    stored = storage.path("acme", "file-4")
    assert stored.stat().st_mode & 0o777 == 0o600
    assert stored.parent.stat().st_mode & 0o777 == 0o711  # (engines reach adapters through it)


@ON_LOOP
async def test_contents_gone_raise_when_opened_not_when_read(tmp_path: Path) -> None:
    storage = DirectoryStorage(tmp_path)
    with pytest.raises(FileNotFoundError):
        await storage.open("acme", "file-3")


@ON_LOOP
async def test_a_discarded_upload_leaves_nothing(tmp_path: Path) -> None:
    partial = DirectoryStorage(tmp_path).create("acme", "file-2")
    await partial.write(b"abc")
    await partial.discard()
    assert await asyncio.to_thread(_files_under, tmp_path) == []


def test_examples_are_counted_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_bytes(GOOD + b"\n\n" + GOOD + b"\r\n" + GOOD)  # no final newline
    assert check_chat_jsonl(path) == 3


def test_an_overlong_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_bytes(GOOD + b"\n" + b" " * 200 + GOOD + b"\n")
    with pytest.raises(FileFormatError, match="Line 2 is longer than 100 bytes"):
        check_chat_jsonl(path, max_line_bytes=100)


def test_text_parts_are_accepted_and_tool_messages_are_named(tmp_path: Path) -> None:
    parts = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "yo"},
        ]
    }
    path = tmp_path / "parts.jsonl"
    path.write_bytes(orjson.dumps(parts) + b"\n" + orjson.dumps({"messages": [{"role": "tool"}]}))
    with pytest.raises(FileFormatError, match=r"Line 2, messages\[0\]: 'role' must be one of"):
        check_chat_jsonl(path)
    path.write_bytes(orjson.dumps(parts))
    assert check_chat_jsonl(path) == 1


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]
