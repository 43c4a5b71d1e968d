"""Listen on the invalidation channel and drop cached records; resubscribe after failures,
and after a connection that went silent (gateway/redis_feed.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis

from gateway.auth.cache import AuthCache
from gateway.auth.store import CHANNEL
from gateway.redis_feed import FEED_ANSWER_S, FEED_PING_S, ChannelFeed, follow

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

    async def run(self) -> None:
        """Runs until cancelled (the app's lifespan owns the task)."""
        await follow(
            self.feed,
            self._message,
            name="auth invalidation feed",
            log=self.log,
            retry_s=RETRY_S,
            on_lost=self.subscribed.clear,
        )

    def _message(self, message: dict[str, Any]) -> None:
        if message.get("type") == "subscribe":
            # Whatever changed while nobody listened is unknown: every record is read again
            # (kept, expired, as the stale answer should Redis go away again). Only now,
            # confirmed: a Redis that is down must not expire the cache.
            self.cache.expire()
            self.subscribed.set()
            return
        data = message.get("data")
        if message.get("type") == "message" and isinstance(data, bytes):
            self.cache.invalidate(data.decode())
