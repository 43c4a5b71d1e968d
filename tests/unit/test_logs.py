"""The log queue's consumer: lines gathered while it pauses go out in one write, in order, and
stop() writes what is left at once."""

from __future__ import annotations

import io
import logging
import queue

import orjson
import pytest

from gateway.logs import ACCESS_LOGGER, BatchingListener, JsonFormatter, configure_logging


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def record(n: int) -> logging.LogRecord:
    return logging.LogRecord("llmaas.access", logging.INFO, __file__, 1, f"line {n}", None, None)


def test_lines_that_gather_during_a_pause_go_out_together_and_stop_flushes_them() -> None:
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    stream = CountingStream()
    listener = BatchingListener(records, stream, JsonFormatter(), interval_s=60)
    listener.start()
    records.put(record(0))  # wakes the thread: written, then it pauses (a minute, here)
    for _ in range(3000):  # a hang guard: the first line is written within moments
        if stream.writes:
            break
        listener.stopping.wait(0.01)
    for n in range(1, 100):
        records.put(record(n))
    listener.stop()  # cuts the pause short: the 99 go out in one write
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["msg"] for line in lines] == [f"line {n}" for n in range(100)]
    assert stream.writes == 2


def test_the_access_log_is_written_whatever_the_log_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """access_log: true with log_level: warning wrote no access line: it is logged at info."""
    listener = configure_logging("warning")
    logging.getLogger(ACCESS_LOGGER).info("request")
    logging.getLogger("llmaas.routing").info("models of an engine")
    listener.stop()
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["logger"], line["msg"]) for line in lines] == [(ACCESS_LOGGER, "request")]


def test_a_malformed_upload_writes_no_plain_text_line(capsys: pytest.CaptureFixture[str]) -> None:
    """python-multipart's warning of a body a client sent went to stderr as plain text."""
    listener = configure_logging("info")
    logging.getLogger("python_multipart.multipart").warning("Expected boundary character 45")
    logging.getLogger("python_multipart.multipart").error("a failure of its own")
    listener.stop()
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["msg"] for line in lines] == ["a failure of its own"]


def test_uvicorn_says_nothing_of_a_request_the_access_log_has(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each unparsable request (any client's `BREW / HTTP/1.1`) also wrote uvicorn's warning,
    without a request id; its other warnings still come through."""
    listener = configure_logging("info")
    uvicorn = logging.getLogger("uvicorn.error")
    uvicorn.warning("Invalid HTTP request received.")
    uvicorn.warning("Unsupported upgrade request.")
    listener.stop()
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["logger"], line["msg"]) for line in lines] == [
        ("uvicorn.error", "Unsupported upgrade request.")
    ]
