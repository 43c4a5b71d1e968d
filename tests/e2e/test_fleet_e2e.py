"""Two real vLLM engines serve one model behind one gateway: both take requests, and killing one
leaves the model served with no request lost that had not started answering."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

from gateway.app import create_app
from gateway.embedded.engine import EngineProcess, launched
from gateway.embedded.paths import EmbeddedPaths
from gateway.embedded.prepare import prepare
from gateway.settings import Settings
from tests.e2e.conftest import CHAT, Engines, chat_engine
from tests.e2e.metering import counter
from tests.support.servers import serve_asgi

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

FRANCE: Any = [{"role": "user", "content": "What is the capital of France?"}]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def second_chat(
    engines: Engines, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[EngineProcess]:
    """Another engine with the same model, started after the session's (one after the other)."""
    log = tmp_path_factory.mktemp("engine-logs") / "chat-2.log"
    spec = chat_engine(await prepare(EmbeddedPaths.resolve()), log)
    async with launched(spec, timeout_s=600) as engine:
        yield engine


async def _served(http: aiohttp.ClientSession, engine: str) -> float:
    async with http.get(f"{engine}/metrics") as resp:
        return counter(await resp.text(), "vllm:request_success_total")


async def _ask(oai: openai.AsyncOpenAI, stream: bool) -> str:
    if not stream:
        reply = await oai.chat.completions.create(
            model=CHAT, messages=FRANCE, temperature=0, max_tokens=12
        )
        return reply.choices[0].message.content or ""
    chunks = await oai.chat.completions.create(
        model=CHAT, messages=FRANCE, temperature=0, max_tokens=12, stream=True
    )
    return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


async def test_two_engines_serve_a_model_and_one_can_die(
    engines: Engines, second_chat: EngineProcess, tmp_path: Path
) -> None:
    first, second = engines.chat, second_chat.url
    settings = Settings.model_validate(
        {
            "models": [{"name": CHAT, "engines": [first, second]}],
            "routing": {"strategy": "round_robin"},
            "admin_token": "e2e-admin-token-0123456789",
            "auth": {"required": False},
            "metering": {"spill_dir": str(tmp_path / "spill")},
        }
    )
    async with (
        serve_asgi(create_app(settings)) as gateway,
        aiohttp.ClientSession() as http,
        openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0) as oai,
    ):
        before = {url: await _served(http, url) for url in (first, second)}
        answers = await asyncio.gather(*(_ask(oai, stream=i % 2 == 1) for i in range(8)))
        assert all("Paris" in a for a in answers), answers
        after = {url: await _served(http, url) for url in (first, second)}
        took = {url: after[url] - before[url] for url in (first, second)}
        print(f"\nrequests per engine with both up: {took}")
        assert all(n >= 2 for n in took.values()), took  # both engines take work

        os.killpg(second_chat.pgid, signal.SIGKILL)  # no goodbye: connections are refused
        answers = await asyncio.gather(*(_ask(oai, stream=i % 2 == 1) for i in range(8)))
        assert all("Paris" in a for a in answers), answers  # the model is still served
        assert await _served(http, first) - after[first] == 8
