"""The tests never write into the user's home: the session runs in a temporary one, and every
gateway the test helpers start spills under the test's own directory."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import aiohttp
import pytest

from gateway.embedded.paths import EmbeddedPaths
from gateway.metering.spill import count_lines
from gateway.netutil import free_port
from gateway.settings import MeteringSettings
from gateway.sim.config import SimConfig
from tests.conftest import ENV_BEFORE
from tests.integration.conftest import MODEL, auth_settings, gateway_settings
from tests.integration.sim_fixture import running_sim
from tests.support.gateways import gateway_process, shared_config


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else []


def test_the_session_runs_in_a_temporary_home_but_keeps_the_engine_cache(
    real_home: Path, pytestconfig: pytest.Config
) -> None:
    assert not Path.home().is_relative_to(real_home)
    assert not MeteringSettings().spill_dir.is_relative_to(real_home)
    before = pytestconfig.stash[ENV_BEFORE]
    engine_home = Path(before["LLMAAS_HOME"] or real_home / ".cache" / "llmaas")
    assert EmbeddedPaths.resolve().home == engine_home.expanduser().resolve()
    cache = before["XDG_CACHE_HOME"] or str(real_home / ".cache")
    assert os.environ["XDG_CACHE_HOME"] == cache  # vLLM's and Hugging Face's caches stay warm


def test_in_process_gateways_spill_where_the_test_says(tmp_path: Path) -> None:
    redis = f"redis://127.0.0.1:{free_port()}/0"
    for settings in (
        auth_settings("http://127.0.0.1:9", redis, tmp_path / "a"),
        gateway_settings("http://127.0.0.1:9", tmp_path / "b"),
    ):
        assert settings.metering.spill_dir.is_relative_to(tmp_path)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_gateway_process_from_the_helpers_spills_under_the_tests_directory(
    tmp_path: Path, real_home: Path
) -> None:
    """The Redis-down case that once left a record in ~/.local/state/llmaas/usage-spill."""
    default = real_home / ".local" / "state" / "llmaas"
    before = _files(default)
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    extra = "auth: {required: false}\nmetering: {flush_timeout_s: 0.2}\n"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
    async with running_sim(SimConfig(models=[MODEL])) as sim, aiohttp.ClientSession() as http:
        config = shared_config(
            tmp_path / "gw.yaml", redis_url=dead_redis, model=MODEL, sim=sim, extra=extra
        )
        async with gateway_process(config) as gw:
            async with http.post(f"{gw.url}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200  # served; its settlement waits for Redis
            gw.process.send_signal(signal.SIGTERM)
            assert await gw.process.wait() == -signal.SIGTERM
    (spilled,) = _files(tmp_path / "gw-spill")
    assert count_lines(spilled) == 1
    assert spilled.name.startswith("spill-unknown@")  # it never reached its ledger
    assert _files(default) == before
