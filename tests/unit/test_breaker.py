"""The circuit breaker's timings, on a controlled clock."""

from __future__ import annotations

from gateway.routing.breaker import Breaker, BreakerPolicy


def test_connect_error_ejects_at_once_for_the_base_back_off() -> None:
    breaker = Breaker(BreakerPolicy(base_s=1.0, max_s=60.0))
    assert breaker.failure("connect", now=100.0)
    assert not breaker.is_up()
    assert breaker.until == 101.0
    assert breaker.ejections == 1


def test_other_failures_eject_after_the_threshold_and_a_success_resets_the_count() -> None:
    breaker = Breaker(BreakerPolicy(failures_to_eject=3))
    assert not breaker.failure("http_5xx", 0.0)
    assert not breaker.failure("timeout", 0.0)
    breaker.success()
    assert not breaker.failure("http_5xx", 0.0)
    assert not breaker.failure("http_5xx", 0.0)
    assert breaker.is_up()
    assert breaker.failure("disconnect", 0.0)
    assert not breaker.is_up()


def test_failed_probes_keep_an_engine_out_for_its_ejections_period_not_a_longer_one() -> None:
    """Found 2026-12-06: each failed probe doubled the back-off, so an engine back after a 30 s
    restart stayed out ~33 s more (probes 1, 2, 4, 8, 16, 32 s apart), and its next ejection
    started at 60 s. The level rises per ejection only."""
    breaker = Breaker(BreakerPolicy(base_s=1.0, max_s=60.0))
    breaker.failure("connect", 0.0)
    now, periods = 0.0, []
    for _ in range(30):  # down for 30 s
        periods.append(breaker.until - now)
        now = breaker.until
        assert breaker.probe_due(now)
        breaker.probe_failed("connect", now)
    assert periods == [1.0] * 30
    assert breaker.probe_ok(now + 1.0)  # back within one period of answering again
    assert breaker.ejections == 1
    breaker.failure("connect", now + 5.0)  # the next ejection: the next level, 2 s
    assert breaker.until == now + 7.0


def test_a_later_ejection_keeps_its_own_longer_period_while_probes_fail() -> None:
    breaker = Breaker(BreakerPolicy(base_s=1.0, max_s=60.0))
    for start in (0.0, 2.0, 7.0, 16.0, 33.0, 66.0, 127.0):  # each soon after the last return
        breaker.failure("connect", start)
        breaker.probe_ok(breaker.until)
    assert breaker.ejections == 7
    breaker.failure("connect", 200.0)  # the eighth, within max_s of the last return: capped
    assert breaker.until == 260.0
    breaker.probe_failed("connect", 260.0)
    assert breaker.until == 320.0
    assert not breaker.is_up()


def test_ejected_engine_returns_only_when_health_answers_after_the_back_off() -> None:
    breaker = Breaker(BreakerPolicy(base_s=1.0))
    breaker.failure("connect", 10.0)
    assert not breaker.probe_due(10.5)
    assert not breaker.probe_ok(10.5)  # too early: still backing off
    breaker.success()  # a request that got through does not lift the ejection either
    assert not breaker.is_up()
    assert breaker.probe_ok(11.0)
    assert breaker.is_up()
    assert breaker.consecutive_failures == 0


def test_ejections_in_a_row_back_off_longer_and_a_calm_period_starts_again() -> None:
    breaker = Breaker(BreakerPolicy(base_s=1.0, max_s=60.0))
    breaker.failure("connect", 0.0)
    breaker.probe_ok(1.0)
    breaker.failure("connect", 5.0)  # soon after coming back: twice as long
    assert breaker.until == 7.0
    breaker.probe_ok(7.0)
    breaker.failure("connect", 7.0 + 60.0)  # up for max_s in between: base again
    assert breaker.until == 68.0
    assert breaker.ejections == 3


def test_health_failures_of_an_up_engine_count_like_other_failures() -> None:
    breaker = Breaker(BreakerPolicy(failures_to_eject=2))
    breaker.probe_failed("health", 0.0)
    assert breaker.is_up()
    breaker.probe_failed("health", 2.0)
    assert not breaker.is_up()


def test_a_good_health_check_ends_a_row_of_failures() -> None:
    """An idle engine whose checks fail now and then, with good ones between: not ejected."""
    breaker = Breaker(BreakerPolicy(failures_to_eject=3))
    for hour in range(5):
        breaker.probe_failed("health", hour * 3600.0)
        for second in range(2, 10, 2):
            breaker.probe_ok(hour * 3600.0 + second)
    assert breaker.is_up()
    assert breaker.ejections == 0


def test_good_health_checks_do_not_end_a_row_of_failed_requests() -> None:
    """An engine whose answers time out may well answer /health: its row of failed requests
    goes on across the checks."""
    breaker = Breaker(BreakerPolicy(failures_to_eject=3))
    for second in range(3):
        breaker.failure("timeout", float(second))
        breaker.probe_ok(second + 0.5)
    assert not breaker.is_up()
    assert breaker.ejections == 1
