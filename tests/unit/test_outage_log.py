"""gateway/outage_log.py: a repeating failure is one warning, its end one line with the count."""

from __future__ import annotations

import logging

import pytest

from gateway.outage_log import OutageLog


def _outage() -> OutageLog:
    log = logging.getLogger("llmaas.test-outage")
    return OutageLog(log, "thing failed", "thing works again", "failed_tries")


def test_an_outage_is_one_warning_and_one_line_with_its_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = _outage()
    with caplog.at_level(logging.INFO, logger="llmaas.test-outage"):
        for n in range(3):
            outage.failed({"error": f"refused {n}"})
        assert outage.reached({"pending": 7}) is True
    lines = [(r.levelname, r.getMessage(), getattr(r, "fields", None)) for r in caplog.records]
    assert lines == [
        ("WARNING", "thing failed", {"error": "refused 0"}),
        ("INFO", "thing works again", {"failed_tries": 3, "pending": 7}),
    ]


def test_success_without_a_failure_logs_nothing_and_a_new_outage_warns_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = _outage()
    with caplog.at_level(logging.INFO, logger="llmaas.test-outage"):
        assert outage.reached() is False
        outage.failed({"error": "a"})
        outage.reached()
        assert outage.reached() is False
        outage.failed({"error": "b"})
    assert [r.getMessage() for r in caplog.records] == [
        "thing failed",
        "thing works again",
        "thing failed",
    ]
    assert outage.failures == 1
