from __future__ import annotations

import pytest

from gateway.sim.faults import NO_FAULTS, Faults, FaultSpecError, fails_at, parse_faults


def test_no_sim_field_means_no_faults() -> None:
    assert parse_faults(None) is NO_FAULTS
    assert parse_faults({}) == Faults()


def test_every_field_is_parsed() -> None:
    raw = {
        "fail_status": 503,
        "fail_message": "busy",
        "fail_param": "body.n",
        "fail_body": "detail",
        "ttft_ms": 200,
        "itl_ms": 10.5,
        "drop": "after_headers",
        "cut_after": 3,
        "hang": True,
        "stagger": 40,
    }
    assert parse_faults(raw) == Faults(
        fail_status=503,
        fail_message="busy",
        fail_param="body.n",
        fail_body="detail",
        ttft_ms=200.0,
        itl_ms=10.5,
        drop="after_headers",
        cut_after=3,
        hang=True,
        stagger=40,
    )


def test_defaults_of_the_optional_fields() -> None:
    faults = parse_faults({"drop": "before_headers"})
    assert faults.drop == "before_headers"
    assert faults.fail_body == "error"
    assert faults.fail_status is None
    assert faults.ttft_ms is None
    assert faults.cut_after is None
    assert not faults.hang


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"fail_status": 200}, "fail_status"),
        ({"fail_status": "500"}, "fail_status"),
        ({"fail_status": True}, "fail_status"),
        ({"fail_message": 1}, "fail_message"),
        ({"fail_param": 1}, "fail_param"),
        ({"fail_body": "html"}, "fail_body"),
        ({"ttft_ms": -1}, "ttft_ms"),
        ({"itl_ms": "fast"}, "itl_ms"),
        ({"drop": "sometimes"}, "drop"),
        ({"drop": True}, "drop"),
        ({"cut_after": -1}, "cut_after"),
        ({"cut_after": 1.5}, "cut_after"),
        ({"hang": 1}, "hang"),
        ({"stagger": -2}, "stagger"),
        ({"hangs": True}, "hangs"),
    ],
)
def test_malformed_fields_are_refused_by_name(raw: dict[str, object], field: str) -> None:
    with pytest.raises(FaultSpecError, match=field):
        parse_faults(raw)


def test_the_field_must_be_an_object() -> None:
    with pytest.raises(FaultSpecError, match="object"):
        parse_faults(["hang"])


def test_failure_sequence_is_deterministic_and_evenly_spread() -> None:
    assert [i for i in range(1, 13) if fails_at(i, 0.25)] == [4, 8, 12]
    assert all(fails_at(i, 1.0) for i in range(1, 100))
    assert not any(fails_at(i, 0.0) for i in range(1, 100))
    assert sum(fails_at(i, 0.3) for i in range(1, 1001)) == 300
    assert sum(fails_at(i, 0.01) for i in range(1, 1001)) == 10
