"""A training child's JSON lines (train_lora.py's start, step, paused, done and error), as
its job's events: a message for each, the steps at most once a second as `metrics` events
(OpenAI's step metrics), and what the run ended with for the trainer."""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson

from gateway.finetune.job_store import JobStore
from gateway.finetune.jobs import Event, Job

EVENT_EVERY_S = 1.0  # step events, at most this often (and always the last)


class Progress:
    """The child's JSON lines, as job events (steps throttled to one a second)."""

    def __init__(self, store: JobStore, job: Job) -> None:
        self.store = store
        self.job = job
        self.done: dict[str, Any] | None = None
        self.error: str | None = None
        self.steps = 0
        self.tokens = 0  # trained on so far (steps before a pause included)
        self.loss: float | None = None
        self.stopping = False  # the trainer stops: a pause is its checkpoint before it goes
        self.checkpointed = False  # the run said it paused after a step: its checkpoint is kept
        self._last_event = 0.0
        self._pending: dict[str, Any] | None = None

    async def line(self, raw: bytes) -> None:
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return  # a stray print from a library
        if not isinstance(item, dict):
            return
        kind = item.get("type")
        if kind == "start":
            examples, epochs, steps = (item.get(k) for k in ("examples", "epochs", "steps"))
            resumed = f", from step {item['resumed_at'] + 1}" if item.get("resumed_at") else ""
            await self._event(
                f"Training {_counted(examples, 'example')} for {_counted(epochs, 'epoch')} "
                f"on the {_device(item.get('device'))} "
                f"({_counted(steps, 'step')}{resumed})"
            )
        elif kind == "step":
            self.steps = int(item.get("step", 0))
            self.tokens = int(item.get("tokens", self.tokens))
            loss = item.get("loss")  # (null: not a number, the run diverged and stops)
            self.loss = None if loss is None else float(loss)
            self._pending = item
            if time.monotonic() - self._last_event >= EVENT_EVERY_S:
                await self.flush()
        elif kind == "done":
            await self.flush()
            self.done = item
        elif kind == "error":
            self.error = str(item.get("message", "unknown error"))
        elif kind == "paused":
            await self.flush()
            step = item.get("step")
            self.tokens = int(item.get("tokens", self.tokens))
            self.error = "paused"
            self.checkpointed = bool(step)
            if self.stopping:
                await self._event(
                    f"Training stopped after step {step}, its checkpoint written"
                    if step
                    else "Training stopped before its first step"
                )
                return
            await self._event(
                f"Training paused after step {step}; resuming goes on from there"
                if step
                else "Training paused before its first step"
            )

    async def flush(self) -> None:
        item, self._pending = self._pending, None
        if item is None:
            return
        self._last_event = time.monotonic()
        step, steps, loss = item.get("step"), item.get("steps"), item.get("loss")
        data = {
            "step": step,
            "total_steps": steps,
            "train_loss": loss,
            "tokens": item.get("tokens"),
        }
        said = "not a number" if loss is None else f"{loss:.4f}"
        await self._event(f"Step {step}/{steps}: training loss={said}", "metrics", data)

    async def _event(
        self, message: str, kind: Literal["message", "metrics"] = "message", data: Any = None
    ) -> None:
        event = Event(id="", created_at=int(time.time()), message=message, type=kind, data=data)
        await self.store.add_event(self.job, event)


def _counted(number: object, noun: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _device(kind: object) -> str:
    """torch's device type as an event says it: the CPU, the GPU (`cuda`), …"""
    kind = str(kind or "cpu")
    return "GPU" if kind == "cuda" else kind.upper()
