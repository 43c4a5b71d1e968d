"""Everything a request handler needs, built once in the app's lifespan and kept on app.state."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from gateway.auth.authenticate import Authenticator
from gateway.limits.control import AdmissionControl
from gateway.metering.ledger import Ledger
from gateway.metrics import Metrics
from gateway.proxy.relay import ProxyDeps
from gateway.routing.engines import EngineRegistry
from gateway.settings import Settings


@dataclass(slots=True)
class GatewayState:
    settings: Settings
    registry: EngineRegistry
    metrics: Metrics
    proxy: ProxyDeps
    redis: Redis | None
    auth: Authenticator
    admission: AdmissionControl
    ledger: Ledger | None  # the usage ledger, when Redis is configured
