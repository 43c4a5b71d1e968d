"""What the proxy reports when a request is done: a neutral result, no billing in it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from gateway.metering.usage import Usage


class Outcome(StrEnum):
    """How a request ended: in usage records and the access log, by these words."""

    OK = "ok"  # the engine answered and the answer reached the client
    CLIENT_DISCONNECTED = "client_disconnected"  # the client left first; billed until then
    SLOW_CLIENT = "slow_client"  # stopped reading past upstream.write_timeout_s; as a disconnect
    ENGINE_ERROR = "engine_error"  # the engine's 5xx, a cut stream, a dropped connection
    REJECTED = "rejected"  # the engine refused the request (4xx); nothing generated
    TIMEOUT = "timeout"  # the engine went silent past upstream.*_timeout_s
    GATEWAY_SHUTDOWN = "gateway_shutdown"  # cancelled after the shutdown grace period
    ENGINE_UNAVAILABLE = "engine_unavailable"  # no engine of the model could be reached
    # Every engine of the model had routing.max_waiting_per_engine waiting as one was chosen,
    # or this replica was at upstream.max_connections(_per_engine), after admission: nothing
    # was sent; the admission is given back whole, rpm entry too.
    SHED = "shed"
    # The access log only: the gateway answered an error itself (auth, limits, the tenant
    # policy, an unknown model, a body it refused) and asked no engine; no record is written.
    REFUSED = "refused"


# The client went away (left, or stopped reading): what the engine did for it until then is
# the client's to pay, even though no answer (or not all of it) reached it.
CLIENT_GONE = frozenset({Outcome.CLIENT_DISCONNECTED, Outcome.SLOW_CLIENT})
# Ends whose engine work the client pays for: answered, or gone.
PAID_FOR = CLIENT_GONE | {Outcome.OK}


def outcome_of_status(status: int) -> Outcome:
    """An engine's answer, by its HTTP status."""
    if status < 400:
        return Outcome.OK
    return Outcome.REJECTED if status < 500 else Outcome.ENGINE_ERROR


def outcome_of_failure(status: int) -> Outcome:
    """A failure talking to the engine, by the status the client is answered (504: timeout)."""
    return Outcome.TIMEOUT if status == 504 else Outcome.ENGINE_ERROR


@dataclass(frozen=True, slots=True)
class ProxyResult:
    engine: str | None  # the engine that last received the request; None: none was reached
    status: int  # what the client was answered (499: it left first)
    outcome: Outcome
    usage: Usage | None  # what the engine reported (so far), if it did
    ttft_ms: float | None
    latency_s: float
    response_id: str | None = None  # a Responses API answer: the id the engine gave it


# Who hears the result: the API layer wires metering's accounting here. A reporter accounts for
# the request before it awaits anything (or shields what it awaits): the relay calls it as it
# ends, where a shutdown's cancellation may reach it, and does not pay a task to shield it.
Reporter = Callable[[ProxyResult], Awaitable[None]]
