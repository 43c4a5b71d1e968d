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


def test_back_off_doubles_up_to_the_maximum_while_health_keeps_failing() -> None:
    breaker = Breaker(BreakerPolicy(base_s=1.0, max_s=60.0))
    breaker.failure("connect", 0.0)
    now, periods = 0.0, []
    for _ in range(8):
        periods.append(breaker.until - now)
        now = breaker.until
        assert breaker.probe_due(now)
        breaker.probe_failed("connect", now)
    assert periods == [1, 2, 4, 8, 16, 32, 60, 60]
    assert breaker.ejections == 1  # one ejection, backing off ever longer


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
