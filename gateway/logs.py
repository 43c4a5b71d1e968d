"""JSON-lines logging through a queue, so that writing a log line never blocks the event loop.

Log lines carry ids, names, numbers and outcomes, never prompts, completions, keys or tokens.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import threading
import time
from typing import Any, TextIO

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


class BatchingListener(logging.handlers.QueueListener):
    """The queue's consumer thread, woken at most every `interval_s` while lines keep coming.

    A thread woken for every line takes the GIL from the event loop once per request (the
    access log) and writes one line per system call: at low concurrency that cost about 0.15 ms
    a request (bench/README.md). This one writes whatever gathered since its last round in one
    write, then sleeps; a line waits at most `interval_s`, and stop() writes what is left.
    """

    def __init__(
        self,
        records: queue.SimpleQueue[logging.LogRecord],
        stream: TextIO,
        formatter: logging.Formatter,
        interval_s: float = 0.05,
    ) -> None:
        super().__init__(records)
        self.stream = stream
        self.formatter = formatter
        self.interval_s = interval_s
        self.stopping = threading.Event()  # cuts the pause short: stop() writes at once

    def stop(self) -> None:
        self.stopping.set()
        super().stop()

    def _monitor(self) -> None:
        while True:
            batch: list[Any] = [self.dequeue(True)]  # records, and None: stop() (the sentinel)
            while True:
                try:
                    batch.append(self.dequeue(False))
                except queue.Empty:
                    break
            records = [r for r in batch if r is not None]
            self._write(records)
            if len(records) < len(batch):
                return
            self.stopping.wait(self.interval_s)

    def _write(self, records: list[logging.LogRecord]) -> None:
        if not records:
            return
        try:
            self.stream.write("".join(self.formatter.format(r) + "\n" for r in records))
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: logging never takes the app down
            pass


def configure_logging(level: str) -> logging.handlers.QueueListener:
    """Route the `llmaas` loggers through a queue to stderr; the caller stops the listener."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = BatchingListener(records, sys.stderr, JsonFormatter())
    _route(logging.handlers.QueueHandler(records), level)
    listener.start()
    return listener


def configure_logging_single_threaded(level: str) -> None:
    """The same JSON lines, written by the caller's own thread: for a process that must stay
    single-threaded (the supervisor of `--workers N`: the kernel sends a child its parent-death
    signal again for every thread of the dying parent it is handed to, and a worker's second
    SIGTERM ends its drain at once)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    _route(handler, level)


def _route(handler: logging.Handler, level: str) -> None:
    """The `llmaas` loggers to `handler` alone, at `level`."""
    root = logging.getLogger("llmaas")
    root.handlers = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # The access log has its own switch (access_log): log_level warning must not silence it.
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO)
    # python-multipart warns of every malformed body a client sends (its 400 says so already),
    # and with no handler of its own that went to stderr as a line of plain text: a client
    # wrote into the JSON log. Its errors only, as JSON.
    multipart = logging.getLogger("python_multipart")
    multipart.handlers = [handler]
    multipart.setLevel(logging.ERROR)
    multipart.propagate = False
    # uvicorn's own warnings and errors (a worker's death, an app error it caught) as JSON
    # too: its default config wrote them as plain text into the JSON log.
    server = logging.getLogger("uvicorn")
    server.handlers = [handler]
    server.propagate = False
    logging.getLogger("uvicorn.error").addFilter(_not_invalid_http)  # (idempotent)


# uvicorn's warning for each request httptools cannot parse (any client's `BREW / HTTP/1.1`):
# the access log has its line already (400 invalid_http_request, with its request id), and
# this one, without an id, was noise any unauthenticated client could write at will.
_INVALID_HTTP = "Invalid HTTP request received."


def _not_invalid_http(record: logging.LogRecord) -> bool:
    return record.msg != _INVALID_HTTP
