"""schemathesis against the gateway's own /openapi.json: every operation under /v1 and /admin/v1,
fuzzed over real HTTP (real Redis, a simulator engine, a tenant key and the admin token), never
answers 5xx and never breaks a response schema the document declares."""

from __future__ import annotations

import asyncio
import traceback
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import hypothesis
import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.core.result import Ok

from gateway.app import create_app
from gateway.embedded.redis_server import running_redis
from gateway.settings import Settings
from gateway.sim.config import SimConfig
from tests.integration.conftest import ADMIN, MODEL
from tests.integration.sim_fixture import running_sim
from tests.support.gateways import ADMIN_TOKEN, PEPPER, tenant_key
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="session")

EXAMPLES = 20  # per operation; derandomized, so every run sends the same cases
PREFIXES = r"^/(v1|admin/v1)/"


@dataclass(frozen=True, slots=True)
class Target:
    gateway: str
    tenant_auth: dict[str, str]


@dataclass(slots=True)
class Fuzzed:
    calls: Counter[str]
    statuses: Counter[tuple[str, int]]
    failures: list[str]


@pytest_asyncio.fixture(name="target", scope="module", loop_scope="session")
async def target_fixture(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Target]:
    spill = tmp_path_factory.mktemp("fuzz-spill")
    async with (
        running_redis(None) as redis_url,
        running_sim(SimConfig(models=[MODEL], max_tokens=4)) as sim,
    ):
        settings = Settings.model_validate(
            {
                "models": [{"name": MODEL, "engines": [sim]}],
                "redis_url": redis_url,
                # Conformance, not timeouts: a Redis reply late on a busy machine is no 5xx here.
                "redis_timeout_s": 5.0,
                "admin_token": ADMIN_TOKEN,
                "key_pepper": PEPPER,
                "metering": {"spill_dir": str(spill)},
                "files": {"dir": str(tmp_path_factory.mktemp("fuzz-files"))},
            }
        )
        async with serve_asgi(create_app(settings)) as gateway, aiohttp.ClientSession() as http:
            yield Target(gateway, await tenant_key(http, gateway, "fuzz"))


def _fuzz(target: Target) -> Fuzzed:
    """Runs in a thread (schemathesis calls are blocking); the gateway serves on the test loop."""
    document = schemathesis.openapi.from_url(f"{target.gateway}/openapi.json")
    schema = document.include(path_regex=PREFIXES)
    fuzzed = Fuzzed(Counter(), Counter(), [])
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the document itself is valid
        operation = result.ok()
        auth = ADMIN if operation.path.startswith("/admin/") else target.tenant_auth
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(operation, mode, target.gateway, auth, fuzzed)
    return fuzzed


def _fuzz_operation(
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    base: str,
    auth: dict[str, str],
    fuzzed: Fuzzed,
) -> None:
    """Valid inputs (must be served or refused cleanly) or invalid ones (must be refused 4xx)."""
    label = operation.label

    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failure is reported
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(mode))
    def run(case: schemathesis.Case[Any]) -> None:
        fuzzed.calls[label] += 1
        if isinstance(case.body, dict) and "model" in case.body and fuzzed.calls[label] % 2:
            case.body["model"] = MODEL  # half the bodies name the served model: they reach it
        response = case.call_and_validate(
            base_url=base,
            headers=auth,
            checks=[not_a_server_error, response_schema_conformance],
            timeout=30,
        )
        fuzzed.statuses[label, response.status_code] += 1

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE, label  # no invalid input exists for it
    except Exception:
        fuzzed.failures.append(f"{label} ({mode.value}):\n{traceback.format_exc(limit=3)}")


async def test_every_operation_answers_without_5xx_and_within_its_schema(target: Target) -> None:
    fuzzed = await asyncio.wait_for(asyncio.to_thread(_fuzz, target), 600)
    assert not fuzzed.failures, "\n\n".join(fuzzed.failures)
    operations = set(fuzzed.calls)
    assert any(op.startswith("POST /v1/chat/completions") for op in operations)
    assert any(op.startswith("PUT /admin/v1/tenants") for op in operations)
    assert len(operations) >= 25, sorted(operations)
    for route in ("chat/completions", "completions", "embeddings", "responses"):
        assert fuzzed.statuses[f"POST /v1/{route}", 200] > 0, (route, fuzzed.statuses)
    print(f"schemathesis: {len(operations)} operations, {sum(fuzzed.calls.values())} calls")
    print(sorted(fuzzed.statuses.items()))


async def test_limits_beyond_what_json_and_lua_hold_are_refused_not_stored(target: Target) -> None:
    """Found by the fuzzer: rpm 2**113 was stored, then every view of the tenant failed 500."""
    async with aiohttp.ClientSession(headers=ADMIN) as http:
        url = f"{target.gateway}/admin/v1/tenants/huge"
        async with http.put(url, json={"rpm": 2**64}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == "rpm"
        async with http.get(url) as resp:
            assert resp.status == 404
        async with http.put(url, json={"rpm": 2**53 - 1}) as resp:
            assert (resp.status, (await resp.json())["rpm"]) == (200, 2**53 - 1)


async def test_the_document_declares_the_errors_the_gateway_gives(target: Target) -> None:
    """Found by review: every operation declared FastAPI's 422 `{"detail": [...]}`, which the
    gateway never sends, and no error it does send (so the fuzzing above checked no error's
    body); OpenAI's routes vLLM does not serve were listed as 200s."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{target.gateway}/openapi.json") as resp,
    ):
        document = await resp.json()
    api = {p: ops for p, ops in document["paths"].items() if p.startswith(("/v1/", "/admin/v1/"))}
    assert len(api) >= 25, sorted(api)
    for path, operations in api.items():
        for method, operation in operations.items():
            answers = operation["responses"]
            assert "422" not in answers, (method, path)
            schema = answers["default"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path)
    error = document["components"]["schemas"]["ErrorResponse"]["properties"]["error"]
    assert error["required"] == ["message", "type", "param", "code"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert "/v1/responses/compact" not in api
    assert "/v1/responses/input_tokens" not in api
