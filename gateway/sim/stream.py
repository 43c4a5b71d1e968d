"""One streamed generation: SSE frames on vLLM's schedule, cut short when a fault asks for it."""

from __future__ import annotations

import asyncio

from gateway.sim.asgi import DropConnection, Reply
from gateway.sim.protocol import DONE_FRAME, Chunks
from gateway.sim.request import Plan
from gateway.sim.state import Generation


async def sleep_until(deadline: float) -> None:
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


class StreamRun:
    """Token k of every choice goes out at ttft + k * itl (a later prompt's `stagger` steps
    later per prompt before it); frames due together share a write."""

    def __init__(self, plan: Plan, reply: Reply, generation: Generation) -> None:
        self.plan = plan
        self.reply = reply
        self.generation = generation
        self.chunks = Chunks(plan.kind, plan.model, continuous_usage=plan.continuous_usage)
        self.pending: list[bytes] = []

    async def run(self, started: float) -> None:
        """Stream every token after the prefill (at `started` + ttft), then usage and [DONE]."""
        plan, timing, cut_after = self.plan, self.plan.timing, self.plan.faults.cut_after
        choices = plan.choice_tokens()
        if plan.kind == "chat":
            for index in range(plan.choices):
                self.pending.append(self.chunks.role(index, plan.choice_prompt_tokens(index)))
        steps = plan.tokens + plan.faults.stagger * (len(plan.prompts) - 1)
        for step in range(steps):
            if step == cut_after:
                await self._cut()
            if step and timing.itl_s > 0:
                await self._flush()
                await sleep_until(started + timing.ttft_s + step * timing.itl_s)
            self._emit(step, choices)
        if cut_after is not None:
            await self._cut()
        if plan.include_usage:
            self.pending.append(self.chunks.usage(plan.prompt_tokens, plan.tokens * plan.choices))
        self.pending.append(DONE_FRAME)
        await self.reply.body(b"".join(self.pending))

    def _emit(self, step: int, choices: list[list[str]]) -> None:
        plan = self.plan
        for index, tokens in enumerate(choices):
            at = step - plan.faults.stagger * (index // plan.n)  # this choice's own step
            if not 0 <= at < plan.tokens:
                continue
            self.generation.generated(1)
            finish = plan.finish_reason if at == plan.tokens - 1 else None
            prompt_tokens = plan.choice_prompt_tokens(index)
            frame = self.chunks.token(index, tokens[at], finish, prompt_tokens, at + 1)
            self.pending.append(frame)

    async def _flush(self) -> None:
        if self.pending:
            data, self.pending = b"".join(self.pending), []
            await self.reply.body(data, more=True)

    async def _cut(self) -> None:
        await self._flush()
        raise DropConnection
