"""Listen on the invalidation channel and drop cached records; resubscribe after failures,
and after a connection that went silent (gateway/redis_feed.py)."""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.auth.cache import AuthCache
from gateway.auth.store import CHANNEL
from gateway.redis_feed import FEED_ANSWER_S, FEED_PING_S, ChannelFeed

RETRY_S = 0.5


class InvalidationListener:
    def __init__(
        self,
        redis: Redis,
        cache: AuthCache,
        *,
        ping_s: float = FEED_PING_S,
        answer_s: float = FEED_ANSWER_S,
    ) -> None:
        self.cache = cache
        self.feed = ChannelFeed(redis, CHANNEL, ping_s=ping_s, answer_s=answer_s)
        self.subscribed = asyncio.Event()
        self.log = logging.getLogger("llmaas.auth")
        self.lost = False  # said once when lost, once when back: not at every retry

    async def run(self) -> None:
        """Runs until cancelled (the app's lifespan owns the task)."""
        while True:
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                if not self.lost:
                    self.log.warning(
                        "auth invalidation feed lost (retried every %gs until it is back)",
                        RETRY_S,
                        extra={"fields": {"error": type(exc).__name__}},
                    )
                self.lost = True
                await asyncio.sleep(RETRY_S)

    async def _listen(self) -> None:
        async with self.feed as feed:
            async for message in feed.messages():
                if message.get("type") == "subscribe":
                    # Whatever changed while nobody listened is unknown: start from nothing.
                    # Only now, confirmed: a Redis that is down must not empty the cache.
                    self.cache.clear()
                    self.subscribed.set()
                    if self.lost:
                        self.log.info("auth invalidation feed back")
                    self.lost = False
                    continue
                data = message.get("data")
                if message.get("type") == "message" and isinstance(data, bytes):
                    self.cache.invalidate(data.decode())
