"""A non-streaming answer assembled from the engine's stream, as vLLM 0.32 builds it itself.

The gateway streams every generation from the engine, with usage in every chunk, so that a
client who hangs up is billed for what the engine generated until then (a non-streaming
answer from vLLM says nothing when it is aborted). For a client that asked for one JSON body,
the chunks are put together here into the body vLLM would have sent: text and reasoning
concatenated, logprobs and token ids joined, tool calls merged by index, choices in index
order, and the null fields of vLLM's response models (`ChatCompletionResponse`,
`CompletionResponse`, vllm/entrypoints/openai/*/protocol.py) in their places. The end-to-end
tests compare it with vLLM's own non-streaming body, field by field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

Json = dict[str, Any]


_Choice = TypeVar("_Choice")


def _of_index(choices: dict[int, _Choice], choice: Json, new: Callable[[], _Choice]) -> _Choice:
    """The choice a chunk's choice continues (made on its first chunk, and only then)."""
    index = choice.get("index", 0)
    found = choices.get(index)
    if found is None:
        found = choices[index] = new()
    return found


class _Common:
    """What every chunk carries: the id, time, model; the final usage chunk's extras."""

    def __init__(self) -> None:
        self.head: Json = {}
        self.usage: Json | None = None
        self.fingerprint: str | None = None
        self.metrics: Any = None

    def top(self, kind: str) -> Json:
        """The body's first members, in vLLM's order."""
        head = self.head
        return {
            "id": head.get("id"),
            "object": kind,
            **{k: head.get(k) for k in ("created", "model")},
        }

    def feed_common(self, chunk: Json) -> None:
        if not self.head:
            self.head = {k: chunk.get(k) for k in ("id", "created", "model")}
        if chunk.get("system_fingerprint") is not None:
            self.fingerprint = chunk["system_fingerprint"]
        if not chunk.get("choices") and isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
            self.metrics = chunk.get("metrics")

    def usage_body(self) -> Json:
        usage = self.usage or {}
        return {
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0),
            "completion_tokens": usage.get("completion_tokens", 0),
            "prompt_tokens_details": usage.get("prompt_tokens_details"),
            "completion_tokens_details": usage.get("completion_tokens_details"),
        }


def answered_arguments(streamed: str, required: bool) -> str:
    """A tool call's arguments as vLLM's non-streaming answer gives them. With `tool_choice`
    "required" it parses the model's calls and writes each one's arguments again with
    `json.dumps(..., ensure_ascii=False)`, where its stream passes on the model's own text
    (`{\n    "city" : "paris"\n}` against `{"city": "paris"}`); named and auto calls are the
    model's text both ways. Arguments that are not a whole JSON object (a call cut by
    max_tokens) stay as streamed: vLLM's answer has no call then (README). The Responses API
    parses the same way (collect_events.py)."""
    if not required:
        return streamed
    try:
        parsed = json.loads(streamed)
    except ValueError:
        return streamed
    return json.dumps(parsed, ensure_ascii=False) if isinstance(parsed, dict) else streamed


class _ChatChoice:
    __slots__ = ("content", "finish", "logprobs", "reasoning", "role", "stop", "token_ids", "tools")

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tools: dict[int, Json] = {}
        self.logprobs: list[Any] = []
        self.token_ids: list[int] = []
        self.finish: str | None = None
        self.stop: Any = None

    def feed(self, choice: Json) -> None:
        delta = choice.get("delta")
        if delta:
            role = delta.get("role")
            if role:
                self.role = role
            content = delta.get("content")
            if isinstance(content, str):
                self.content.append(content)
            reasoning = delta.get("reasoning")
            if isinstance(reasoning, str):
                self.reasoning.append(reasoning)
            for call in delta.get("tool_calls") or ():
                self._feed_tool(call)
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            self.logprobs.extend(logprobs.get("content") or ())
        token_ids = choice.get("token_ids")
        if token_ids:
            self.token_ids.extend(token_ids)
        finish = choice.get("finish_reason")
        if finish is not None:
            self.finish = finish
            self.stop = choice.get("stop_reason")

    def _feed_tool(self, call: Json) -> None:
        tool = self.tools.setdefault(call.get("index", 0), {"id": None, "name": [], "args": []})
        if call.get("id") and tool["id"] is None:
            tool["id"] = call["id"]
        function = call.get("function") or {}
        if function.get("name"):
            tool["name"].append(function["name"])
        if function.get("arguments"):
            tool["args"].append(function["arguments"])

    def body(
        self,
        index: int,
        want_logprobs: bool,
        want_token_ids: bool,
        auto_tools: bool,
        required: bool,
    ) -> Json:
        content = "".join(self.content) if self.content else None
        if auto_tools and self.tools and not content:
            content = None  # only tool calls: vLLM's parser says no content, its stream ""
        message: Json = {
            "role": self.role,
            "content": content,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
        }
        if self.tools:
            message["tool_calls"] = [
                {
                    "id": tool["id"],
                    "type": "function",
                    "function": {
                        "name": "".join(tool["name"]),
                        "arguments": answered_arguments("".join(tool["args"]), required),
                    },
                }
                for _, tool in sorted(self.tools.items())
            ]
        message["reasoning"] = "".join(self.reasoning) if self.reasoning else None
        return {
            "index": index,
            "message": message,
            "logprobs": {"content": self.logprobs} if want_logprobs else None,
            "finish_reason": self.finish or "stop",
            "stop_reason": self.stop,
            "token_ids": self.token_ids if want_token_ids else None,
            "routed_experts": None,
        }


class ChatAssembler(_Common):
    """Chunks of `/v1/chat/completions` in, vLLM's `chat.completion` body out."""

    def __init__(self, request: Json) -> None:
        super().__init__()
        self.want_logprobs = bool(request.get("logprobs"))
        self.want_token_ids = bool(request.get("return_token_ids"))
        # tools the model may call or not ("auto", the default with tools): vLLM's tool parser
        # decides, and says "no content" as null
        self.auto_tools = bool(request.get("tools")) and request.get("tool_choice") in (
            None,
            "auto",
        )
        self.required_tools = request.get("tool_choice") == "required"
        self.choices: dict[int, _ChatChoice] = {}
        self.prompt_token_ids: Any = None
        self.prompt_text: Any = None

    def feed(self, chunk: Json) -> None:
        self.feed_common(chunk)
        if chunk.get("prompt_token_ids") is not None:
            self.prompt_token_ids = chunk["prompt_token_ids"]
        if chunk.get("prompt_text") is not None:
            self.prompt_text = chunk["prompt_text"]
        for choice in chunk.get("choices") or ():
            _of_index(self.choices, choice, _ChatChoice).feed(choice)

    def body(self) -> Json:
        choices = [
            c.body(i, self.want_logprobs, self.want_token_ids, self.auto_tools, self.required_tools)
            for i, c in sorted(self.choices.items())
        ]
        return {
            **self.top("chat.completion"),
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": self.fingerprint,
            "usage": self.usage_body(),
            "prompt_logprobs": None,
            # (the gateway may have asked for ids the client did not: proxy/tool_ids.py)
            "prompt_token_ids": self.prompt_token_ids if self.want_token_ids else None,
            "prompt_text": self.prompt_text,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": self.metrics,
        }


class _TextChoice:
    __slots__ = ("finish", "logprobs", "prompt_token_ids", "stop", "text", "token_ids")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.logprobs: Json = {"text_offset": [], "token_logprobs": [], "tokens": []}
        self.logprobs["top_logprobs"] = []
        self.token_ids: list[int] = []
        self.prompt_token_ids: Any = None
        self.finish: str | None = None
        self.stop: Any = None

    def feed(self, choice: Json) -> None:
        self.text.append(choice.get("text") or "")
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            for name, joined in self.logprobs.items():
                joined.extend(logprobs.get(name) or ())
        self.token_ids.extend(choice.get("token_ids") or ())
        if choice.get("prompt_token_ids") is not None:
            self.prompt_token_ids = choice["prompt_token_ids"]
        if choice.get("finish_reason") is not None:
            self.finish = choice["finish_reason"]
            self.stop = choice.get("stop_reason")

    def body(self, index: int, want_logprobs: bool, want_token_ids: bool) -> Json:
        return {
            "index": index,
            "text": "".join(self.text),
            "logprobs": self.logprobs if want_logprobs else None,
            "finish_reason": self.finish,
            "stop_reason": self.stop,
            "token_ids": self.token_ids if want_token_ids else None,
            "prompt_logprobs": None,
            # vLLM streams them with an echo too, but puts them in a body only when asked
            "prompt_token_ids": self.prompt_token_ids if want_token_ids else None,
            "routed_experts": None,
        }


class CompletionAssembler(_Common):
    """Chunks of `/v1/completions` in, vLLM's `text_completion` body out."""

    def __init__(self, request: Json) -> None:
        super().__init__()
        self.want_logprobs = request.get("logprobs") is not None
        self.want_token_ids = bool(request.get("return_token_ids"))
        self.choices: dict[int, _TextChoice] = {}

    def feed(self, chunk: Json) -> None:
        self.feed_common(chunk)
        for choice in chunk.get("choices") or ():
            _of_index(self.choices, choice, _TextChoice).feed(choice)

    def body(self) -> Json:
        choices = [
            c.body(i, self.want_logprobs, self.want_token_ids)
            for i, c in sorted(self.choices.items())
        ]
        return {
            **self.top("text_completion"),
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": self.fingerprint,
            "usage": self.usage_body(),
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": self.metrics,
        }


Assembler = ChatAssembler | CompletionAssembler


def assembler_for(route: str, request: Json) -> Assembler:
    return ChatAssembler(request) if route == "chat/completions" else CompletionAssembler(request)
