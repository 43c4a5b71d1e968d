"""Request bodies read and written without changing a number (gateway/exact_json.py)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from gateway import exact_json

BIG = 2**70 + 1  # past 64 bits: orjson alone reads it as a float (2**70 + 0.0)
NEGATIVE = -(2**63) - 1


def test_integers_past_64_bits_survive_a_read_and_a_write() -> None:
    raw = json.dumps({"seed": BIG, "schema": {"maximum": NEGATIVE}, "n": 1}).encode()
    assert orjson.loads(raw)["seed"] != BIG  # what the gateway did before
    body = exact_json.loads(raw)
    assert (body["seed"], body["schema"]["maximum"]) == (BIG, NEGATIVE)
    assert json.loads(exact_json.dumps({**body, "stream": True})) == {**body, "stream": True}


def test_a_negative_integer_of_19_digits_below_64_bits_survives_alone() -> None:
    for value in (NEGATIVE, -9_999_999_999_999_999_999):  # no run of 20 digits: was a float
        raw = json.dumps({"seed": value}).encode()
        assert exact_json.loads(raw) == {"seed": value}
        assert exact_json.dumps(exact_json.loads(raw)) == raw.replace(b" ", b"")


def test_the_longest_64_bit_integers_and_other_bodies_stay_as_orjson_has_them() -> None:
    for value in (2**64 - 1, -(2**63), 1.5, "12345678901234567890123 in a string"):
        raw = orjson.dumps({"v": value, "text": "é"})
        assert exact_json.loads(raw) == orjson.loads(raw)
        assert exact_json.dumps(exact_json.loads(raw)) == raw


def test_a_body_written_by_the_standard_library_looks_as_orjson_writes() -> None:
    value: Any = {"a": [BIG, "é ✓", {"b": None, "c": True}], "d": 0.25}
    assert (
        exact_json.dumps(value)
        == b'{"a":[1180591620717411303425,"\xc3\xa9 \xe2\x9c\x93",{"b":null,"c":true}],"d":0.25}'
    )


def test_nesting_past_what_can_be_written_is_too_deep() -> None:
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(exact_json.TooDeep):
        exact_json.dumps(deep)
    raw = b"[" * 1000 + str(BIG).encode() + b"]" * 1000  # orjson reads it, json cannot
    with pytest.raises(exact_json.TooDeep):
        exact_json.loads(raw)


def test_what_is_not_json_is_orjsons_decode_error() -> None:
    for raw in (b"{", b'{"a": NaN}', b"12345678901234567890123 x"):
        with pytest.raises(orjson.JSONDecodeError):
            exact_json.loads(raw)
