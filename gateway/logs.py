"""JSON-lines logging through a queue, so that writing a log line never blocks the event loop.

Log lines carry ids, names, numbers and outcomes, never prompts, completions, keys or tokens.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from typing import Any

import orjson

ACCESS_LOGGER = "llmaas.access"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str) -> logging.handlers.QueueListener:
    """Route the `llmaas` loggers through a queue to stderr; the caller stops the listener."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter())
    listener = logging.handlers.QueueListener(records, stream, respect_handler_level=False)
    root = logging.getLogger("llmaas")
    root.handlers = [logging.handlers.QueueHandler(records)]
    root.setLevel(level.upper())
    root.propagate = False
    listener.start()
    return listener
