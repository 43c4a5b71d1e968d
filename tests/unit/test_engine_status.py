"""What operators see of an engine's load: a load routing no longer trusts is not shown as now."""

from __future__ import annotations

import time

from gateway.engines_cli import _engine_row
from gateway.routing.balancer import STALE_AFTER_S
from gateway.routing.engines import EngineLoad, EngineRegistry
from gateway.routing.status import engines_status
from gateway.settings import ModelRoute


def test_a_load_not_scraped_lately_is_marked_and_shown_as_unknown() -> None:
    registry = EngineRegistry([ModelRoute(name="m", engines=["http://a:1", "http://b:1"])])
    now = time.monotonic()
    fresh, stale = registry.engines()
    fresh.load = EngineLoad(running=6, waiting=1, kv_usage=0.5, scraped_at=now)
    stale.load = EngineLoad(running=6, waiting=1, kv_usage=0.5, scraped_at=now - STALE_AFTER_S - 1)
    shown = {e["url"]: e for e in engines_status(registry)}
    assert shown["http://a:1"]["load"]["fresh"] is True
    assert shown["http://b:1"]["load"]["fresh"] is False
    row = _engine_row(shown["http://a:1"])
    assert (row["running"], row["waiting"], row["kv_usage"]) == ("6", "1", "50%")
    row = _engine_row(shown["http://b:1"])  # (an engine killed 2 minutes ago showed running 6)
    assert (row["running"], row["waiting"], row["kv_usage"]) == ("-", "-", "-")
