"""Pages of a sorted-set index: ids after a given one, in either order, reading only the page.

The Files and Fine-tuning APIs list a tenant's objects from such an index (scored by creation
time) and page with OpenAI's `after=<id>` cursor: the id's rank is looked up, then the next
`limit` + 1 members are read (the extra one says whether more follow), in one script: the
index may change between a page and the next (a page starts right after its cursor however
many were added or removed before it), never between the rank and the range (two calls let an
upload in between repeat the cursor, and a delete skip a member). A cursor no longer in the
index (its object deleted between two pages, as deleting while auto-paginating does) still
pages on when its caller knows the score it had: the listing resumes where it stood.
"""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

# KEYS: the index; ARGV: after ('' = from the start), its score ('' = unknown), limit, desc (0/1).
# Reply: the ids (up to limit + 1), or false when `after` is not in the index and its score is
# unknown. A gone cursor stands where its score puts it (equal scores order by member, bytewise,
# as Redis orders them).
_PAGE = """
local index, after, score = KEYS[1], ARGV[1], ARGV[2]
local limit, desc = tonumber(ARGV[3]), ARGV[4] == '1'
local start = 0
if after ~= '' then
  local rank = redis.call(desc and 'ZREVRANK' or 'ZRANK', index, after)
  if rank then
    start = rank + 1
  elseif score == '' then
    return false
  else
    local before = redis.call('ZCOUNT', index, '-inf', '(' .. score)
    for _, tie in ipairs(redis.call('ZRANGEBYSCORE', index, score, score)) do
      if tie < after then before = before + 1 end
    end
    if desc then start = redis.call('ZCARD', index) - before else start = before end
  end
end
if desc then return redis.call('ZREVRANGE', index, start, start + limit) end
return redis.call('ZRANGE', index, start, start + limit)
"""


class AfterNotFound(LookupError):
    """The `after` cursor names no member of the index."""


class IndexPages:
    """Pages of the sorted-set indexes in one Redis: the page script registered once."""

    def __init__(self, redis: Redis) -> None:
        self._page = redis.register_script(_PAGE)  # EVALSHA (loaded on the first NOSCRIPT)

    async def page(
        self,
        index: str,
        limit: int,
        *,
        desc: bool,
        after: str | None,
        after_score: float | None = None,
    ) -> tuple[list[str], bool]:
        """Up to `limit` ids after `after` (or from the start), and whether more follow.

        `after_score` is the score `after` had, for a cursor that may have left the index."""
        score = "" if after_score is None else repr(float(after_score))
        args = (after or "", score, limit, 1 if desc else 0)
        ids = cast("list[bytes] | None", await self._page(keys=[index], args=args))
        if ids is None:
            assert after is not None
            raise AfterNotFound(after)
        return [i.decode() for i in ids[:limit]], len(ids) > limit
