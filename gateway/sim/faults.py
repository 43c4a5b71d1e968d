"""Fault injection: the per-request `"sim"` body field and the process-wide failure sequence.

Clients set the field through the openai SDK's ``extra_body={"sim": {...}}``; every key is
optional and unknown keys are refused with a 400, so a typo never silently tests nothing:

* ``fail_status`` (int, 400-599): answer that status at once, before any generation, with
  vLLM's error body (integer ``code``) and ``fail_message`` (str) as its message;
  ``fail_body: "detail"`` answers FastAPI's ``{"detail": fail_message}`` instead (default
  ``"error"``); ``fail_param`` (str) is the error's ``param``, as vLLM sets it (a sampling
  field's name, ``"logprobs"``, or a location in the body, ``"body.logprobs"``).
* ``ttft_ms`` / ``itl_ms`` (number >= 0): override the configured timings for this request.
* ``drop: "before_headers"``: wait the time to first token, then close the connection without
  a byte of response. ``drop: "after_headers"``: send the status line and headers (for a
  non-stream answer, with the full body's content-length and the first half of the body; for
  a stream, right away as vLLM does) and close the connection after the time to first token
  (non-stream: after the whole generation time).
* ``cut_after`` (int >= 0, streams only): send that many content chunks, then close the
  connection without the last chunk, the usage chunk or ``[DONE]``; the chunked transfer is
  left unterminated.
* ``hang: true``: accept the request and never answer, until the client goes away.
* ``stagger`` (int >= 0, streamed completions of several prompts): each prompt's choices begin
  that many token times after the prompt's before it, as vLLM streams a short prompt's tokens
  while it still reads (and has not yet reported) a long prompt behind it.

Precedence: ``fail_status`` (answered before even the model is checked), then the
process-wide ``fail_rate``, then ``hang``, then ``drop: "before_headers"``; ``cut_after`` is
ignored by non-stream requests. Every fault except the two failures counts in ``running``
while it waits, and is released when the client disconnects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

DropMode = Literal["before_headers", "after_headers"]
FailBody = Literal["error", "detail"]
_T = TypeVar("_T")
_DROP_MODES: Final[Mapping[str, DropMode]] = {
    "before_headers": "before_headers",
    "after_headers": "after_headers",
}
_FAIL_BODIES: Final[Mapping[str, FailBody]] = {"error": "error", "detail": "detail"}
_FIELDS: Final = frozenset(
    (
        "fail_status",
        "fail_message",
        "fail_param",
        "fail_body",
        "ttft_ms",
        "itl_ms",
        "drop",
        "cut_after",
        "hang",
        "stagger",
    )
)
_PPM: Final = 1_000_000


class FaultSpecError(ValueError):
    """The `sim` field is malformed; the message names the offending key."""


@dataclass(frozen=True, slots=True)
class Faults:
    fail_status: int | None = None
    fail_message: str | None = None
    fail_param: str | None = None
    fail_body: FailBody = "error"
    ttft_ms: float | None = None
    itl_ms: float | None = None
    drop: DropMode | None = None
    cut_after: int | None = None
    hang: bool = False
    stagger: int = 0


NO_FAULTS: Final = Faults()


def parse_faults(raw: object) -> Faults:
    """The request's `sim` field (absent = None) as Faults; FaultSpecError if malformed."""
    if raw is None:
        return NO_FAULTS
    if not isinstance(raw, dict):
        raise FaultSpecError("sim: expected an object")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise FaultSpecError(f"sim: unknown field {unknown[0]!r}")
    return Faults(
        fail_status=_status(raw),
        fail_message=_optional_str(raw, "fail_message"),
        fail_param=_optional_str(raw, "fail_param"),
        fail_body=_choice(raw, "fail_body", _FAIL_BODIES) or "error",
        ttft_ms=_millis(raw, "ttft_ms"),
        itl_ms=_millis(raw, "itl_ms"),
        drop=_choice(raw, "drop", _DROP_MODES),
        cut_after=_count(raw, "cut_after"),
        hang=_flag(raw, "hang"),
        stagger=_count(raw, "stagger") or 0,
    )


def fails_at(index: int, rate: float) -> bool:
    """Whether request number `index` (from 1) is one of the `rate` fraction that fail.

    Deterministic and evenly spread: with rate 0.25 requests 4, 8, 12, … fail.
    """
    ppm = round(rate * _PPM)
    return (index * ppm) // _PPM > ((index - 1) * ppm) // _PPM


def _status(raw: dict[str, object]) -> int | None:
    value = raw.get("fail_status")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise FaultSpecError("sim.fail_status: expected an HTTP error status (400-599)")
    return value


def _optional_str(raw: dict[str, object], key: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise FaultSpecError(f"sim.{key}: expected a string")
    return value


def _choice(raw: dict[str, object], key: str, allowed: Mapping[str, _T]) -> _T | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or value not in allowed:
        raise FaultSpecError(f"sim.{key}: expected one of {', '.join(allowed)}")
    return allowed[value]


def _millis(raw: dict[str, object], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultSpecError(f"sim.{key}: expected a number of milliseconds >= 0")
    return float(value)


def _count(raw: dict[str, object], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FaultSpecError(f"sim.{key}: expected an integer >= 0")
    return value


def _flag(raw: dict[str, object], key: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise FaultSpecError(f"sim.{key}: expected true or false")
    return value
