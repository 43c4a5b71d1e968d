"""Requests in flight per limited scope in one process, held before a body is read."""

from __future__ import annotations

import pytest

from gateway.auth.principal import Limits, Principal
from gateway.errors import RateLimited
from gateway.limits.local_inflight import LocalInflight
from gateway.metrics import Metrics


def caller(key_id: str, key: int | None, tenant: int | None, source: str = "api_key") -> Principal:
    return Principal(
        tenant="t",
        key_id=key_id,
        source=source,  # type: ignore[arg-type]
        key_limits=Limits(max_concurrency=key),
        tenant_limits=Limits(max_concurrency=tenant),
    )


def test_a_key_is_held_to_its_limit_and_gets_its_slots_back() -> None:
    local = LocalInflight(Metrics())
    a = caller("a", 2, None)
    held = [local.hold(a), local.hold(a)]
    with pytest.raises(RateLimited) as info:
        local.hold(a)
    assert (info.value.scope, info.value.limit_kind, info.value.status) == (
        "key",
        "concurrency",
        429,
    )
    assert info.value.headers == {"retry-after": "1"}
    first = held[0]
    assert first is not None
    first.release()
    first.release()  # once only: a second release gives back nothing more
    assert local.hold(a) is not None
    with pytest.raises(RateLimited):
        local.hold(a)


def test_the_tenant_scope_counts_every_key_and_a_refusal_holds_nothing() -> None:
    local = LocalInflight(Metrics())
    one, two = caller("a", 5, 2), caller("b", None, 2)
    assert local.hold(one) is not None
    held = local.hold(two)
    assert held is not None
    with pytest.raises(RateLimited) as info:
        local.hold(one)
    assert info.value.scope == "tenant"
    assert local.counts == {("t", "a"): 1, ("t", ""): 2}  # the refused one took nothing
    held.release()
    assert local.counts == {("t", "a"): 1, ("t", ""): 1}


def test_nothing_is_counted_without_a_concurrency_limit_and_scopes_stay_apart() -> None:
    local = LocalInflight(Metrics())
    assert local.hold(caller("a", None, None)) is None
    assert local.counts == {}
    assert local.hold(caller("0123456789ab", 1, None)) is not None
    # a JWT subject spelled like the key id has a scope of its own (Principal.scope_id)
    assert local.hold(caller("0123456789ab", 1, None, source="jwt")) is not None
