"""A minimal Responses API, as vLLM 0.32 serves it with VLLM_ENABLE_RESPONSES_API_STORE=1.

`POST /v1/responses` answers one text message, as a body or as a stream of `event: <type>` +
`data: <json>` frames from `response.created` to `response.completed` (no `[DONE]`); stored
responses (`store`, the default) live in this process, so `previous_response_id`,
`GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel` find only this engine's (404
elsewhere, like vLLM). Tokens: the input costs 1 + its words (a string, or the text of every
item's content), plus, continuing a conversation, all of the previous response's input and
output tokens (vLLM re-reads the conversation); the output is `max_output_tokens` tokens
("incomplete"), else `SimConfig.max_tokens`. Faults (`sim`) and timings work as for chat:
`drop: "after_headers"` sends a stream's opening events (vLLM sends them as it takes the
request) and drops the connection at the first token, `cut_after` after that many deltas.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

from gateway.sim.asgi import SSE_HEADERS, DropConnection, Reply, until_disconnect
from gateway.sim.config import SimConfig
from gateway.sim.engine import faulty
from gateway.sim.faults import Faults
from gateway.sim.request import RequestError, Timing, admit, timing
from gateway.sim.state import SimState
from gateway.sim.stream import sleep_until
from gateway.sim.text import completion_tokens, words


@dataclass(frozen=True, slots=True)
class Turn:
    id: str
    model: str
    conversation: str  # every turn's text so far, this one's input included
    input_tokens: int
    output: list[str]  # the tokens to generate
    incomplete: bool
    previous: str | None
    store: bool
    stream: bool
    timing: Timing
    faults: Faults


class ResponsesApi:
    def __init__(self, config: SimConfig, state: SimState) -> None:
        self.config = config
        self.state = state
        self.stored: dict[str, dict[str, Any]] = {}  # id → the response object
        self.history: dict[str, tuple[str, int]] = {}  # id → (conversation, tokens in all)

    async def create(self, body: dict[str, Any], reply: Reply, receive: Receive) -> None:
        model, faults = admit(body, self.config)
        if self.state.next_fails():
            status = self.config.fail_status
            raise RequestError(status, f"Simulated engine failure ({status})")
        turn = self._turn(body, model, timing(self.config, faults), faults)
        work = faulty(faults, self.config, self.state) or (
            self._stream(turn, reply) if turn.stream else self._complete(turn, reply)
        )
        await until_disconnect(work, receive)

    def _turn(self, body: dict[str, Any], model: str, pace: Timing, faults: Faults) -> Turn:
        text = _input_text(body.get("input"))
        previous = body.get("previous_response_id")
        before, before_tokens = "", 0
        if previous is not None:
            if previous not in self.history:
                raise RequestError(404, f"Response with id '{previous}' not found.", "response_id")
            before, before_tokens = self.history[previous]
        limit = body.get("max_output_tokens")
        count = limit if isinstance(limit, int) and limit > 0 else self.config.max_tokens
        conversation = f"{before}\n{text}" if before else text
        input_tokens = before_tokens + 1 + words(text)
        most = self.config.max_model_len
        if input_tokens >= most:  # vLLM 0.32's words (responses/serving.py)
            raise RequestError(
                400,
                f"The engine prompt length {input_tokens} exceeds the max_model_len {most}. "
                "Please reduce prompt.",
                "input",
            )
        if count > most:
            raise RequestError(
                400,
                f"max_output_tokens={count} cannot be greater than max_model_len={most}. "
                "Please request fewer output tokens.",
                "max_output_tokens",
            )
        count = min(count, most - input_tokens)  # past the room left: clamped, as vLLM does
        return Turn(
            id=f"resp_{uuid.uuid4().hex}",
            model=model,
            conversation=conversation,
            input_tokens=input_tokens,
            output=completion_tokens(conversation, count),
            incomplete=limit is not None,
            previous=previous,
            store=body.get("store") is not False,
            stream=body.get("stream") is True,
            timing=pace,
            faults=faults,
        )

    async def _generate(self, turn: Turn) -> dict[str, Any]:
        pace = turn.timing
        with self.state.generation() as generation:
            started = asyncio.get_running_loop().time()
            await sleep_until(started + pace.ttft_s + (len(turn.output) - 1) * pace.itl_s)
            generation.prefilled(turn.input_tokens)
            generation.generated(len(turn.output))
        return self._done(turn)

    def _done(self, turn: Turn) -> dict[str, Any]:
        response = response_object(turn, "incomplete" if turn.incomplete else "completed")
        if turn.store:
            self.stored[turn.id] = response
            total = turn.input_tokens + len(turn.output)
            self.history[turn.id] = (turn.conversation + "".join(turn.output), total)
        return response

    async def _complete(self, turn: Turn, reply: Reply) -> None:
        response = await self._generate(turn)
        if turn.faults.drop == "after_headers":
            await reply.truncated_json(200, orjson.dumps(response))  # raises DropConnection
        await reply.json(200, orjson.dumps(response))

    async def _stream(self, turn: Turn, reply: Reply) -> None:
        events = Events()
        with self.state.generation() as generation:
            await reply.start(200, SSE_HEADERS)
            started = asyncio.get_running_loop().time()
            created = response_object(turn, "in_progress")
            await reply.body(events.opening(created), more=True)
            await sleep_until(started + turn.timing.ttft_s)
            if turn.faults.drop == "after_headers":
                raise DropConnection  # (an engine killed while the request waited its turn)
            generation.prefilled(turn.input_tokens)
            for k, token in enumerate(turn.output):
                await sleep_until(started + turn.timing.ttft_s + k * turn.timing.itl_s)
                if k == turn.faults.cut_after:
                    raise DropConnection
                generation.generated(1)
                first = events.item_added(turn) if k == 0 else b""  # with the first token
                await reply.body(first + events.delta(turn, token), more=True)
        await reply.body(events.closing(turn, self._done(turn)))

    async def retrieve(self, request: Request) -> Response:
        response_id = request.path_params["response_id"]
        found = self.stored.get(response_id)
        return _not_found(response_id) if found is None else _json(found)

    async def cancel(self, request: Request) -> Response:
        response_id = request.path_params["response_id"]
        if response_id not in self.stored:
            return _not_found(response_id)
        message = "Cannot cancel a synchronous response."  # vLLM's: only background ones can be
        return _json(_error(400, message, "response_id"), 400)


def _not_found(response_id: str) -> Response:
    message = f"Response with id '{response_id}' not found."
    return _json(_error(404, message, "response_id"), 404)


class Events:
    """vLLM's stream of one text message: numbered events, each its own frame."""

    def __init__(self) -> None:
        self.sequence = 0

    def event(self, kind: str, fields: dict[str, Any]) -> bytes:
        payload = {**fields, "sequence_number": self.sequence, "type": kind}
        self.sequence += 1
        return f"event: {kind}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"

    def opening(self, created: dict[str, Any]) -> bytes:
        """What vLLM sends as it takes the request, before the engine core has it."""
        return b"".join(
            [
                self.event("response.created", {"response": created}),
                self.event("response.in_progress", {"response": created}),
            ]
        )

    def item_added(self, turn: Turn) -> bytes:
        """What vLLM sends with the first token, before its delta."""
        item = _message(turn, "", "in_progress") | {"content": []}
        part: dict[str, Any] = {
            "annotations": [],
            "text": "",
            "type": "output_text",
            "logprobs": [],
        }
        place = {"item_id": _item_id(turn), "output_index": 0}
        return b"".join(
            [
                self.event("response.output_item.added", {"item": item, "output_index": 0}),
                self.event(
                    "response.content_part.added", {"content_index": 0, **place, "part": part}
                ),
            ]
        )

    def delta(self, turn: Turn, token: str) -> bytes:
        fields = {"content_index": 0, "delta": token, "item_id": _item_id(turn), "output_index": 0}
        return self.event("response.output_text.delta", fields | {"logprobs": []})

    def closing(self, turn: Turn, done: dict[str, Any]) -> bytes:
        text = "".join(turn.output)
        place = {"content_index": 0, "item_id": _item_id(turn), "output_index": 0}
        part: dict[str, Any] = {
            "annotations": [],
            "text": text,
            "type": "output_text",
            "logprobs": [],
        }
        return b"".join(
            [
                self.event("response.output_text.done", {**place, "text": text, "logprobs": []}),
                self.event("response.content_part.done", {**place, "part": part}),
                self.event(
                    "response.output_item.done",
                    {"item": _message(turn, text, "completed"), "output_index": 0},
                ),
                self.event("response.completed", {"response": done}),
            ]
        )


def response_object(turn: Turn, status: str) -> dict[str, Any]:
    """vLLM's ResponsesResponse, in its field order (the fields a text answer sets)."""
    done = status != "in_progress"
    text = "".join(turn.output)
    return {
        "id": turn.id,
        "created_at": int(time.time()),
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": None,
        "metadata": None,
        "model": turn.model,
        "object": "response",
        "output": [_message(turn, text, "completed")] if done else [],
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "background": False,
        "max_output_tokens": len(turn.output),
        "max_tool_calls": None,
        "previous_response_id": turn.previous,
        "prompt": None,
        "reasoning": None,
        "service_tier": "auto",
        "status": status,
        "text": None,
        "top_logprobs": None,
        "truncation": "disabled",
        "usage": _usage(turn.input_tokens, len(turn.output)) if done else None,
        "user": None,
    }


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0, "tool_output_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _message(turn: Turn, text: str, status: str) -> dict[str, Any]:
    part: dict[str, Any] = {
        "annotations": [],
        "text": text,
        "type": "output_text",
        "logprobs": None,
    }
    return {
        "id": _item_id(turn),
        "content": [part],
        "role": "assistant",
        "status": status,
        "type": "message",
    }


def _item_id(turn: Turn) -> str:
    return "msg_" + turn.id.removeprefix("resp_")


def _input_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise RequestError(400, "input: expected a string or a list of items", "input")
    texts: list[str] = []
    for i, item in enumerate(value):
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or "text" not in part:
                    continue
                if not isinstance(part["text"], str):  # vLLM's pydantic answers a 400
                    param = f"input[{i}].content[{j}].text"
                    raise RequestError(400, f"{param}: expected a string", param)
                texts.append(part["text"])
    return " ".join(texts)


def _error(status: int, message: str, param: str | None) -> dict[str, Any]:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": status}
    return {"error": error}


def _json(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")
