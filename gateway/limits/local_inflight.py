"""A key's (and its tenant's) requests in flight in this process, held to their max_concurrency
before a body is read.

Redis's leases hold a concurrency limit across replicas, but a request takes its lease only once
its body is read (admission reserves tokens by the prompt). Until then it holds a slot of the
process's max_inflight_requests, memory and a task; and the body deadline lets a body that
keeps arriving at 500 bytes a second go on (a 4 MiB one for two hours), so a key sending bodies
slowly could take every slot of the process. A request of a key or tenant with a concurrency
limit is therefore counted here from its authentication to its end, and one past the limit is
refused at once, as Redis would refuse it (429, concurrency), before its body is read. This
process's requests are a part of all the replicas' ones, so this only refuses what Redis would,
but for a request whose body arrives while another of its key is just finishing.

Plain ints per scope, touched only by the event loop's thread; nothing for a caller without
a concurrency limit.
"""

from __future__ import annotations

from gateway.auth.principal import Principal
from gateway.limits.limiter import concurrency_refused
from gateway.metrics import Metrics

_Scope = tuple[str, str]  # (tenant, Principal.scope_id), or (tenant, "") for the tenant scope


class Held:
    """One request's place in its scopes' counts, given back once by `release`."""

    __slots__ = ("counts", "scopes")

    def __init__(self, counts: dict[_Scope, int], scopes: list[_Scope]) -> None:
        self.counts = counts
        self.scopes = scopes

    def release(self) -> None:
        for scope in self.scopes:
            left = self.counts[scope] - 1
            if left:
                self.counts[scope] = left
            else:
                del self.counts[scope]
        self.scopes = []


class LocalInflight:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.counts: dict[_Scope, int] = {}

    def hold(self, caller: Principal) -> Held | None:
        """Count a request of `caller` (its limits with defaults applied), or raise the 429 a
        concurrency lease would meet; None when no concurrency limit applies to it."""
        key_max = caller.key_limits.max_concurrency
        tenant_max = caller.tenant_limits.max_concurrency
        if key_max is None and tenant_max is None:
            return None
        scopes: list[_Scope] = []
        for scope, name, limit in (
            ("key", (caller.tenant, caller.scope_id), key_max),
            ("tenant", (caller.tenant, ""), tenant_max),
        ):
            if limit is None:
                continue
            if self.counts.get(name, 0) >= limit:
                self.metrics.ratelimit_rejections.labels(caller.tenant, scope, "concurrency").inc()
                raise concurrency_refused(scope, limit)
            scopes.append(name)
        for name in scopes:
            self.counts[name] = self.counts.get(name, 0) + 1
        return Held(self.counts, scopes)
