"""Collect the gateway's log records in a test."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def collected(logger_name: str = "llmaas") -> Iterator[Collect]:
    collect = Collect()
    logger = logging.getLogger(logger_name)
    logger.addHandler(collect)
    try:
        yield collect
    finally:
        logger.removeHandler(collect)
