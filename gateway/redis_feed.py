"""One Redis pub/sub channel, read as a feed that notices when its connection has died.

redis-py's `listen()` blocks on the socket with no timeout, which is right for a quiet channel
and wrong for a dead connection that never said so: a Redis pod replaced, a node or a network
path gone, leave the client's socket open with nothing ever coming (no FIN, no RST). A listener
on such a socket waits for ever, silently, and whatever the feed carries (key revocations,
fine-tuned models to load) is lost until the process restarts. Here a channel quiet for
`ping_s` is sent a PING; its PONG must come within `answer_s`, or the feed raises
ConnectionError, and `follow` logs the loss and subscribes again on a new connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.redis_client import redis_error

FEED_PING_S = 5.0  # a channel quiet this long is asked whether its connection lives
FEED_ANSWER_S = 2.0  # how long the PONG may take (a busy Redis answers in milliseconds)


class ChannelFeed:
    """`async with ChannelFeed(redis, channel) as feed: async for message in feed.messages()`:
    every message redis-py reads (the subscribe confirmation included), PONGs left out. Each
    `async with` (one at a time) subscribes anew on a new connection: a listener keeps one
    ChannelFeed and enters it again after a failure."""

    def __init__(
        self,
        redis: Redis,
        channel: str,
        *,
        ping_s: float = FEED_PING_S,
        answer_s: float = FEED_ANSWER_S,
    ) -> None:
        self.redis = redis
        self.channel = channel
        self.ping_s = ping_s
        self.answer_s = answer_s
        self.pubsub: PubSub | None = None

    async def __aenter__(self) -> ChannelFeed:
        self.pubsub = self.redis.pubsub()
        try:
            await self.pubsub.subscribe(self.channel)  # sends only: Redis confirms with a message
        except BaseException:  # (Redis down) its pool connection goes back, or each retry leaks one
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.pubsub is not None:
            await self.pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            self.pubsub = None

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Raises ConnectionError when a PING goes unanswered (and whatever redis-py raises)."""
        pubsub = self.pubsub
        assert pubsub is not None, "messages() inside `async with`"
        pinged = False
        while True:
            wait_s = self.answer_s if pinged else self.ping_s
            message = await pubsub.get_message(timeout=wait_s)
            if message is None:
                if pinged:
                    raise RedisConnectionError(
                        f"no answer to PING on {self.channel} within {self.answer_s:g}s"
                    )
                await pubsub.ping()
                pinged = True
                continue
            pinged = False  # anything read says the connection lives
            if message.get("type") != "pong":
                yield message


async def follow(
    feed: ChannelFeed,
    on_message: Callable[[dict[str, Any]], None],
    *,
    name: str,
    log: logging.Logger,
    retry_s: float,
    on_lost: Callable[[], None] | None = None,
) -> None:
    """Read `feed` until cancelled, each message (the subscribe confirmation included) to
    `on_message`. A failure (Redis away, a connection gone silent) calls `on_lost` and the feed
    subscribes again every `retry_s`; '<name> lost' is logged once, and '<name> back' once at
    the first confirmation after it (a line per retry was several a second per worker)."""
    lost = False
    while True:
        try:
            async with feed:
                async for message in feed.messages():
                    if lost and message.get("type") == "subscribe":
                        log.info("%s back", name)
                        lost = False
                    on_message(message)
        except (RedisError, OSError) as exc:
            if on_lost is not None:
                on_lost()
            if not lost:
                log.warning(
                    "%s lost (retried every %gs until it is back)",
                    name,
                    retry_s,
                    extra={"fields": {"error": redis_error(exc)}},
                )
            lost = True
            await asyncio.sleep(retry_s)
