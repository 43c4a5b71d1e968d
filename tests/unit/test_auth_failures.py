"""The per-client memory of 401s: when a client is turned away, for how long, and its bound."""

from __future__ import annotations

from gateway.auth.failures import FailureThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_th_failure_in_a_window_turns_the_client_away_until_the_oldest_ages_out() -> None:
    clock = Clock()
    throttle = FailureThrottle(limit=3, window_s=10.0, max_clients=100, clock=clock)
    for _ in range(2):
        throttle.failed("10.0.0.1")
        clock.now += 1
    assert throttle.retry_after("10.0.0.1") is None
    throttle.failed("10.0.0.1")  # the third, at t=1002; the first was at t=1000
    assert throttle.retry_after("10.0.0.1") == 8.0
    assert throttle.retry_after("10.0.0.2") is None  # others are not affected
    clock.now = 1010.0
    assert throttle.retry_after("10.0.0.1") is None  # the first failure left the window
    throttle.failed("10.0.0.1")  # the second (t=1001) is now the oldest of the last three
    assert throttle.retry_after("10.0.0.1") == 1.0


def test_failures_spread_wider_than_the_window_never_throttle() -> None:
    clock = Clock()
    throttle = FailureThrottle(limit=3, window_s=10.0, max_clients=100, clock=clock)
    for _ in range(50):
        throttle.failed("10.0.0.1")
        assert throttle.retry_after("10.0.0.1") is None
        clock.now += 5.0


def test_at_most_max_clients_are_remembered_least_recent_first_forgotten() -> None:
    throttle = FailureThrottle(limit=1, window_s=60.0, max_clients=100, clock=Clock())
    for n in range(10_000):
        throttle.failed(f"client-{n}")
        assert len(throttle) <= 100
    assert len(throttle) == 100
    assert throttle.retry_after("client-9999") is not None
    assert throttle.retry_after("client-0") is None
