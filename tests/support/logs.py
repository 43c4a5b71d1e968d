"""The gateway's log records in a test: collected in this process, or read from the JSON lines
a gateway process wrote to a file."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    async def wait_for(
        self, match: Callable[[logging.LogRecord], bool], timeout_s: float = 5.0
    ) -> list[logging.LogRecord]:
        """The records that match, once there is one: the access log line is written after the
        response (and its settlement), so a client can read the answer before the line exists."""
        async with asyncio.timeout(timeout_s):
            while not (found := [r for r in self.records if match(r)]):  # noqa: ASYNC110 (records come from any thread)
                await asyncio.sleep(0.01)
        return found


@contextmanager
def collected(logger_name: str = "llmaas") -> Iterator[Collect]:
    collect = Collect()
    logger = logging.getLogger(logger_name)
    logger.addHandler(collect)
    try:
        yield collect
    finally:
        logger.removeHandler(collect)


def logged_messages(log: Path) -> list[str]:
    """The messages of the JSON lines a gateway process wrote to `log` (its stderr)."""
    return [str(orjson.loads(line)["msg"]) for line in log.read_bytes().splitlines()]
