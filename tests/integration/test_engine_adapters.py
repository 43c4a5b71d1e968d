"""An engine started without LoRA (the simulator has no adapter routes either, like vLLM then)
refuses adapters with an error that says why; unloading there is not mistaken for "already
gone". The success paths run against real vLLM in tests/e2e/test_train_lora_e2e.py."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.finetune.engine_adapters import AdapterError, load_adapter, unload_adapter
from gateway.sim.config import SimConfig
from tests.integration.sim_fixture import running_sim


async def test_an_engine_without_lora_refuses_adapters_and_says_why() -> None:
    async with running_sim(SimConfig()) as engine, aiohttp.ClientSession() as http:
        with pytest.raises(AdapterError, match="no LoRA endpoints") as load:
            await load_adapter(http, engine, "ft-a", "/adapters/a")
        with pytest.raises(AdapterError, match="no LoRA endpoints") as unload:
            await unload_adapter(http, engine, "ft-a")
    assert load.value.status == unload.value.status == 404
    assert "'ft-a'" in str(load.value)
