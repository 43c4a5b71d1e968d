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


def test_distinct_credentials_checked_at_once_are_held_to_what_failures_leave() -> None:
    now = [0.0]
    throttle = FailureThrottle(limit=3, window_s=10.0, max_clients=10, clock=lambda: now[0])
    assert all(throttle.begin("a", b"same") for _ in range(50))  # one credential, many times
    assert throttle.begin("a", b"two")
    assert throttle.begin("a", b"three")
    assert not throttle.begin("a", b"four")  # three distinct ones being checked already
    assert throttle.begin("b", b"four")  # another client's own room
    throttle.end("a", b"three")
    throttle.failed("a")  # ... and it failed: two being checked, one failure
    assert not throttle.begin("a", b"four")
    now[0] = 11.0  # the failure is out of the window
    assert throttle.begin("a", b"four")
    for _ in range(50):
        throttle.end("a", b"same")
    for credential in (b"two", b"four"):
        throttle.end("a", credential)
    throttle.end("b", b"four")
    assert throttle.checking == {}  # nothing kept once nothing is being checked
