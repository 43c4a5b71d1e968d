"""Pages of a sorted-set index: ids after a given one, in either order, reading only the page.

The Files and Fine-tuning APIs list a tenant's objects from such an index (scored by creation
time) and page with OpenAI's `after=<id>` cursor: the id's rank is looked up, then the next
`limit` + 1 members are read (the extra one says whether more follow).
"""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis


class AfterNotFound(LookupError):
    """The `after` cursor names no member of the index."""


async def index_page(
    redis: Redis, index: str, limit: int, *, desc: bool, after: str | None
) -> tuple[list[str], bool]:
    """Up to `limit` ids after `after` (or from the start), and whether more follow."""
    start = 0
    if after is not None:
        rank = cast("int | None", await (redis.zrevrank if desc else redis.zrank)(index, after))
        if rank is None:
            raise AfterNotFound(after)
        start = rank + 1
    ids = cast("list[bytes]", await redis.zrange(index, start, start + limit, desc=desc))
    return [i.decode() for i in ids[:limit]], len(ids) > limit
