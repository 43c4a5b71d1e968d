"""The simulated engine: admit a request, pretend to run it, answer like vLLM.

Every generation runs inside `SimState.generation()`, so `running` counts it from admission
until it ends for any reason; whenever a request waits at all, `until_disconnect` races it
against the client going away, so a disconnect ends it at once (during the time to first
token, mid-stream, or while a non-stream answer is being "generated").
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from collections.abc import Coroutine
from typing import Any

import orjson
from starlette.types import Receive

from gateway.sim.asgi import SSE_HEADERS, DropConnection, Reply, until_disconnect
from gateway.sim.config import SimConfig
from gateway.sim.faults import Faults
from gateway.sim.protocol import (
    Kind,
    chat_response,
    completion_response,
    embeddings_response,
    request_id,
    usage,
)
from gateway.sim.request import (
    EmbeddingPlan,
    Plan,
    RequestError,
    admit,
    plan_embeddings,
    plan_generation,
)
from gateway.sim.state import Generation, SimState
from gateway.sim.stream import StreamRun, sleep_until
from gateway.sim.text import embedding


def tokens_by(elapsed_s: float, ttft_s: float, itl_s: float, total: int) -> int:
    """Tokens per choice produced `elapsed_s` after admission (token k at ttft + k * itl)."""
    if elapsed_s < ttft_s:
        return 0
    if itl_s <= 0:
        return total
    return min(total, math.floor((elapsed_s - ttft_s) / itl_s) + 1)


class Engine:
    def __init__(self, config: SimConfig, state: SimState) -> None:
        self.config = config
        self.state = state

    async def chat(self, body: dict[str, Any], reply: Reply, receive: Receive) -> None:
        await self._generate("chat", body, reply, receive)

    async def completion(self, body: dict[str, Any], reply: Reply, receive: Receive) -> None:
        await self._generate("completion", body, reply, receive)

    async def embeddings(self, body: dict[str, Any], reply: Reply, receive: Receive) -> None:
        model, faults = self._admit(body)
        plan = plan_embeddings(body, model, faults, self.config)
        work = self._faulty(faults) or self._embed(plan, reply)
        await self._run(work, plan.timing.ttft_s > 0 or faults.hang, receive)

    def _admit(self, body: dict[str, Any]) -> tuple[str, Faults]:
        model, faults = admit(body, self.config)
        if self.state.next_fails():
            status = self.config.fail_status
            raise RequestError(status, f"Simulated engine failure ({status})")
        return model, faults

    async def _generate(
        self, kind: Kind, body: dict[str, Any], reply: Reply, receive: Receive
    ) -> None:
        model, faults = self._admit(body)
        plan = plan_generation(kind, body, model, faults, self.config)
        work = self._faulty(faults) or (
            self._stream(plan, reply) if plan.stream else self._complete(plan, reply)
        )
        await self._run(work, plan.needs_watch, receive)

    async def _run(self, work: Coroutine[Any, Any, None], waits: bool, receive: Receive) -> None:
        if waits:
            await until_disconnect(work, receive)
        else:
            await work

    def _faulty(self, faults: Faults) -> Coroutine[Any, Any, None] | None:
        return faulty(faults, self.config, self.state)

    async def _stream(self, plan: Plan, reply: Reply) -> None:
        with self.state.generation() as generation:
            started = asyncio.get_running_loop().time()
            await reply.start(200, SSE_HEADERS)  # vLLM sends the headers before the first token
            await sleep_until(started + plan.timing.ttft_s)
            if plan.faults.drop == "after_headers":
                raise DropConnection
            generation.prefilled(plan.prompt_tokens)
            await StreamRun(plan, reply, generation).run(started)

    async def _complete(self, plan: Plan, reply: Reply) -> None:
        with self.state.generation() as generation:
            await self._wait_generation(plan, generation)
            choices = ["".join(tokens) for tokens in plan.choice_tokens()]
            build = chat_response if plan.kind == "chat" else completion_response
            answer = build(
                request_id(plan.kind),
                plan.model,
                choices,
                plan.finish_reason,
                usage(plan.prompt_tokens, plan.tokens * plan.choices),
            )
        await _answer(reply, orjson.dumps(answer), plan.faults)

    async def _wait_generation(self, plan: Plan, generation: Generation) -> None:
        """Sleep through prefill and decoding; if cancelled, count the tokens made so far."""
        timing = plan.timing
        started = asyncio.get_running_loop().time()
        await sleep_until(started + timing.ttft_s)
        generation.prefilled(plan.prompt_tokens)
        generation.generated(plan.choices)  # the first token comes with the prefill
        try:
            await sleep_until(started + timing.ttft_s + (plan.tokens - 1) * timing.itl_s)
        except asyncio.CancelledError:
            elapsed = asyncio.get_running_loop().time() - started
            made = tokens_by(elapsed, timing.ttft_s, timing.itl_s, plan.tokens)
            generation.generated((max(made, 1) - 1) * plan.choices)
            raise
        generation.generated((plan.tokens - 1) * plan.choices)

    async def _embed(self, plan: EmbeddingPlan, reply: Reply) -> None:
        with self.state.generation() as generation:
            await sleep_until(asyncio.get_running_loop().time() + plan.timing.ttft_s)
            generation.prefilled(plan.prompt_tokens)
        vectors = [_encode(embedding(p.text, plan.dim), plan.base64) for p in plan.prompts]
        answer = embeddings_response(plan.model, vectors, plan.prompt_tokens)
        await _answer(reply, orjson.dumps(answer), plan.faults)


def faulty(faults: Faults, config: SimConfig, state: SimState) -> Coroutine[Any, Any, None] | None:
    """What a request asking to `hang` or `drop` its connection before the headers does
    instead of its answer (None: it answers)."""
    if faults.hang:
        return _hang(state)
    if faults.drop == "before_headers":
        return _drop_before_headers(faults, config, state)
    return None


async def _hang(state: SimState) -> None:
    with state.generation():
        await asyncio.Event().wait()  # until the client goes away and cancels us


async def _drop_before_headers(faults: Faults, config: SimConfig, state: SimState) -> None:
    with state.generation():
        ttft_ms = config.ttft_ms if faults.ttft_ms is None else faults.ttft_ms
        if ttft_ms > 0:
            await asyncio.sleep(ttft_ms / 1000.0)
        raise DropConnection


async def _answer(reply: Reply, payload: bytes, faults: Faults) -> None:
    if faults.drop == "after_headers":
        await reply.truncated_json(200, payload)  # raises DropConnection
    else:
        await reply.json(200, payload)


def _encode(vector: list[float], as_base64: bool) -> list[float] | str:
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
