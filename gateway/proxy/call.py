"""What the API layer asks of the proxy for one request (relay.ProxyResponse serves it): the
route and model's pool, the body for the engine, and how the answer is to be read and relayed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.metering.stream_options import UsageWanted
from gateway.proxy.upstream import Reload
from gateway.routing.engines import Engine, ModelPool


@dataclass(frozen=True, slots=True)
class ProxyCall:
    route: str  # "chat/completions", as under /v1/
    pool: ModelPool
    body: bytes
    stream: bool
    n: int = 1  # choices per prompt (to add up a cut stream's usage)
    # For streams: the usage the client asked for (the engine is always asked for all of it).
    usage_wanted: UsageWanted | None = None
    # For a non-streaming request asked of the engine as a stream: the parsed request body
    # (what the assembled answer depends on). None: the engine answers with one body.
    collect: dict[str, Any] | None = None
    affinity: bytes = b""  # what the balancer may route on (the prompt's leading content)
    grammar: str | None = None  # the field an engine's grammar error is about (normalize_error)
    headers: dict[str, str] = field(default_factory=dict)  # added to the response's headers
    # The Responses API: streams are event frames relayed unchanged, bodies are passed on as
    # they are, and the id the engine gave the response is reported (ProxyResult.response_id).
    responses: bool = False
    method: str = "POST"
    path: str = ""  # the engine's path when it is not "/v1/" + route (ids in it)
    # Only these engines, in this order, instead of the balancer's choice: the engine that
    # holds a stored response.
    engines: list[Engine] | None = None
    # The Responses API: input tokens estimated at admission, billed for a stream that ends
    # before the engine reports its usage (gateway/proxy/events.py).
    input_estimate: int = 0
    # A non-streaming response asked of the engine as a stream: the body as the client sent
    # it, asked again of the same engine if the stream ends before it began (NeverBegan).
    unstreamed: bytes | None = None
    # A fine-tuned model: its adapter loaded again into an engine that forgot it (restarted).
    reload: Reload | None = None
    # A stream the gateway asked token ids of that its client did not (proxy/tool_ids.py).
    token_ids_asked: bool = False
    # The Responses API with `store`: called with the response's id and its engine's URL
    # before the client has the response whole (a follow-up sent the moment it arrives must
    # find where it lives), once the engine has stored it.
    stored: Callable[[str, str], Awaitable[None]] | None = None
