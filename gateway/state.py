"""Everything a request handler needs, built once in the app's lifespan and kept on app.state."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
from redis.asyncio import Redis

from gateway.api.drain import Drain
from gateway.api.policy import TenantPolicy
from gateway.api.response_homes import ResponseHomes
from gateway.auth.authenticate import Authenticator
from gateway.auth.invalidation import InvalidationListener
from gateway.finetune.serving import AdapterServing
from gateway.limits.control import AdmissionControl
from gateway.metering.accounting import Accounting
from gateway.metering.ledger import Ledger
from gateway.metrics import Metrics
from gateway.proxy.deps import ProxyDeps
from gateway.routing.engines import EngineRegistry
from gateway.settings import Settings


@dataclass(slots=True)
class GatewayState:
    settings: Settings
    registry: EngineRegistry
    metrics: Metrics
    proxy: ProxyDeps
    accounting: Accounting  # proxy results → usage records and limit settlements
    http: aiohttp.ClientSession  # the gateway's own calls to engines (probes), shared pool
    redis: Redis | None
    auth: Authenticator
    admission: AdmissionControl
    ledger: Ledger | None  # the usage ledger, when Redis is configured
    homes: ResponseHomes  # stored Responses: which engine holds each (per tenant)
    policy: TenantPolicy  # what a tenant may send to the engines
    drain: Drain  # set on SIGTERM: readiness false, new requests refused (draining_server.py)
    adapters: AdapterServing | None  # fine-tuned models: loaded into engines on demand
    # The key cache's invalidation feed (None without Redis); it empties the cache once its
    # subscription is confirmed, so `subscribed` tells when cached keys stay cached.
    auth_feed: InvalidationListener | None = None
    # Uploads whose record's write may have run (gateway/api/files.py): each task reads the
    # record once Redis answers, and keeps or removes the bytes.
    unsure_uploads: set[asyncio.Future[bool | None]] = field(default_factory=set)
