"""What one request carries through the layers: its id, and what the access log reports."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

from starlette.types import Scope

from gateway.auth.api_keys import PREFIX
from gateway.metering.usage import Usage
from gateway.proxy.outcome import Outcome

_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_STATE_KEY = "llmaas"


@dataclass(slots=True)
class RequestInfo:
    request_id: str
    # The id the engine is sent (vLLM names its request by it, before a body's `request_id`):
    # the gateway's own, never a client's; None when request_id is the gateway's already.
    engine_request_id: str | None = None
    # time.perf_counter() as the request arrived: what time to first token is counted from
    arrived: float = field(default_factory=time.perf_counter)
    status: int = 0
    model: str | None = None
    engine: str | None = None
    outcome: Outcome = Outcome.OK
    ttft_ms: float | None = None
    usage: Usage | None = None  # what the engine reported (so far, for a stream), if it did
    response_id: str | None = None  # the id the engine gave a Responses API answer
    counted: bool = False  # in llmaas_requests_total already (the proxy counts what it served)
    # Added to the response's headers by the request context (x-ratelimit-*): one `send`
    # wrapper for every layer that has headers to add.
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def request_info(header: bytes | None) -> RequestInfo:
    """Keep a client's id when it is short and plain (it ends up in logs), and make one for the
    engine (tenants could otherwise name engine requests, the same name in two tenants);
    else make one, for both. An id holding an API key (a client or proxy that copied the key
    into it) is never kept: it went whole into the access log and the usage records."""
    if header is not None:
        text = header.decode("latin-1")
        if _SANE_ID.fullmatch(text) and PREFIX not in text:
            return RequestInfo(text, engine_request_id=new_request_id())
    return RequestInfo(new_request_id())


def new_request_id() -> str:
    return os.urandom(16).hex()  # as unique as uuid4().hex, a fifth of the cost


def attach(scope: Scope, info: RequestInfo) -> None:
    scope.setdefault("state", {})[_STATE_KEY] = info


def found_info(scope: Scope) -> RequestInfo | None:
    """The request's info if the request context has attached it yet."""
    info: RequestInfo | None = scope.get("state", {}).get(_STATE_KEY)
    return info


def info_of(scope: Scope) -> RequestInfo:
    info: RequestInfo = scope["state"][_STATE_KEY]
    return info
