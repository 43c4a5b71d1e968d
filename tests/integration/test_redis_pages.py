"""Pages of a sorted-set index against a real Redis: a cursor that left the index (its object
deleted between two pages) resumes where it stood, equal scores included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from gateway.embedded.redis_server import running_redis
from gateway.redis_pages import AfterNotFound, IndexPages

pytestmark = pytest.mark.asyncio(loop_scope="session")

SCORES = {"a": 1.0, "b": 2.0, "c": 2.0, "d": 2.0, "e": 3.0}  # b, c, d tie


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def redis() -> AsyncIterator[Redis]:
    async with running_redis(None) as url:
        client = Redis.from_url(url)
        yield client
        await client.aclose()


@pytest.mark.parametrize("desc", [False, True])
@pytest.mark.parametrize("gone", list(SCORES))
async def test_a_removed_cursor_pages_on_from_where_it_stood(
    redis: Redis, desc: bool, gone: str
) -> None:
    index = f"pages:{gone}:{desc}"
    await redis.zadd(index, SCORES)
    ordered = [m.decode() for m in cast("list[bytes]", await redis.zrange(index, 0, -1, desc=desc))]
    await redis.zrem(index, gone)
    rest = ordered[ordered.index(gone) + 1 :]
    page = await IndexPages(redis).page(index, 10, desc=desc, after=gone, after_score=SCORES[gone])
    assert page == (rest, False)
    if rest:
        first = await IndexPages(redis).page(
            index, 1, desc=desc, after=gone, after_score=SCORES[gone]
        )
        assert first == (rest[:1], len(rest) > 1)
    with pytest.raises(AfterNotFound):
        await IndexPages(redis).page(index, 10, desc=desc, after=gone)


@pytest.mark.parametrize("desc", [False, True])
async def test_pages_taken_while_others_add_and_remove_see_each_member_once(
    redis: Redis, desc: bool
) -> None:
    # The cursor's rank and the page were two calls: an upload between them (a new member at
    # the head of a newest-first listing) repeated the cursor, a delete before it skipped one.
    index = f"pages:busy:{desc}"
    made = {f"m{i:03d}": float(i) for i in range(120)}
    await redis.zadd(index, made)

    async def others() -> None:  # new members at either end while the pages are taken
        for n in range(150):
            await redis.zadd(index, {f"new-{n:04d}": 1000.0 + n, f"old-{n:04d}": -float(n)})
            await asyncio.sleep(0)

    busy = asyncio.create_task(others())
    seen: list[str] = []
    after, score = None, None
    while True:
        ids, more = await IndexPages(redis).page(
            index, 1, desc=desc, after=after, after_score=score
        )
        seen += ids
        if ids:
            after, score = ids[-1], cast(float, await redis.zscore(index, ids[-1]))
            await redis.zrem(index, ids[-1])  # deleting each as it is listed
        if not more:
            break
    await busy
    listed = [m for m in seen if m in made]
    assert len(seen) == len(set(seen))  # none twice
    assert listed == sorted(made, reverse=desc)  # none skipped, in order
