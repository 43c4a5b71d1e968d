"""Pages of a sorted-set index: ids after a given one, in either order, reading only the page.

The Files and Fine-tuning APIs list a tenant's objects from such an index (scored by creation
time) and page with OpenAI's `after=<id>` cursor: the id's rank is looked up, then the next
`limit` + 1 members are read (the extra one says whether more follow). A cursor no longer in
the index (its object deleted between two pages, as deleting while auto-paginating does) still
pages on when its caller knows the score it had: the listing resumes where it stood.
"""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis


class AfterNotFound(LookupError):
    """The `after` cursor names no member of the index."""


async def index_page(
    redis: Redis,
    index: str,
    limit: int,
    *,
    desc: bool,
    after: str | None,
    after_score: float | None = None,
) -> tuple[list[str], bool]:
    """Up to `limit` ids after `after` (or from the start), and whether more follow.

    `after_score` is the score `after` had, for a cursor that may have left the index."""
    start = 0
    if after is not None:
        rank = cast("int | None", await (redis.zrevrank if desc else redis.zrank)(index, after))
        if rank is not None:
            start = rank + 1
        elif after_score is None:
            raise AfterNotFound(after)
        else:
            start = await _insertion_rank(redis, index, after, after_score, desc=desc)
    ids = cast("list[bytes]", await redis.zrange(index, start, start + limit, desc=desc))
    return [i.decode() for i in ids[:limit]], len(ids) > limit


async def _insertion_rank(
    redis: Redis, index: str, member: str, score: float, *, desc: bool
) -> int:
    """Where `member` with `score` would stand in the index (equal scores order by member)."""
    below = int(await redis.zcount(index, "-inf", f"({score!r}"))
    ties = cast("list[bytes]", await redis.zrangebyscore(index, score, score))
    rank = below + sum(1 for t in ties if t < member.encode())
    return int(await redis.zcard(index)) - rank if desc else rank
