"""Liveness, readiness and logs."""

from __future__ import annotations

import pytest

from gateway.logs import ACCESS_LOGGER, JsonFormatter
from tests.integration.conftest import DEAD_MODEL, MODEL, Stack
from tests.support.logs import collected

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_healthz(stack: Stack) -> None:
    async with stack.http.get(f"{stack.gateway}/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def test_readyz_names_what_is_not_ready(stack: Stack) -> None:
    async with stack.http.get(f"{stack.gateway}/readyz") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["status"] == "not_ready"
    assert body["models"] == {MODEL: True, DEAD_MODEL: False}
    assert body["redis"] == "not_configured"


async def test_access_log_is_json_with_request_id_and_no_prompt(stack: Stack) -> None:
    secret_prompt = "my-very-private-prompt-text"
    body = {"model": MODEL, "messages": [{"role": "user", "content": secret_prompt}]}
    with collected(ACCESS_LOGGER) as collect:
        async with stack.http.post(
            f"{stack.gateway}/v1/chat/completions", json=body, headers={"x-request-id": "log-1"}
        ) as resp:
            assert resp.status == 200
            await resp.read()
        records = await collect.wait_for(
            lambda r: getattr(r, "fields", {}).get("request_id") == "log-1"
        )
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    assert '"request_id":"log-1"' in line
    assert '"status":200' in line
    assert f'"model":"{MODEL}"' in line
    assert secret_prompt not in line
