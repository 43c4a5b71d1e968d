"""What the proxy works with, built once per app: the engines' client, the balancer, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.metrics import Metrics
from gateway.proxy.cut import Cut
from gateway.proxy.upstream import UpstreamClient
from gateway.routing.balancer import Balancer


@dataclass(frozen=True, slots=True)
class ProxyDeps:
    upstream: UpstreamClient
    balancer: Balancer
    metrics: Metrics
    # Engine URL → vLLM's system_fingerprint, learnt from usage frames: metering asks every
    # stream for usage, which moves the fingerprint off the finish frames; it is put back for
    # clients who did not ask (gateway/proxy/frame_filter.py).
    fingerprints: dict[str, str] = field(default_factory=dict)
    # Longest wait for the client to take one write (upstream.write_timeout_s): a client that
    # stops reading is cut after it (gateway/proxy/asgi_send.py's WriteDeadline).
    write_timeout_s: float = 30.0
    # Longest wait for a whole non-streaming answer (upstream.response_timeout_s): one the
    # engine streams to the gateway (proxy/collect.py) is cut after it with a 504 as well.
    response_timeout_s: float = 600.0
    # The cuts of the requests in flight, which the end of a drain's grace calls (api/drain.py
    # holds the same set).
    cuts: set[Cut] = field(default_factory=set)
