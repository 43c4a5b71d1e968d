"""vLLM's JSON shapes: responses, stream chunks, errors and the model list (as vLLM 0.x emits them).

Field sets and order follow vLLM's pydantic models as they serialise: full dumps for
non-stream answers, ``exclude_unset`` for stream chunks, ``exclude_none`` for the final usage
chunk. Errors keep vLLM's deviation from OpenAI: ``code`` is the integer HTTP status.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Final, Literal

import orjson

Kind = Literal["chat", "completion"]
DONE_FRAME: Final = b"data: [DONE]\n\n"
_ERROR_TYPES: Final = {
    400: "BadRequestError",
    404: "NotFoundError",
    500: "InternalServerError",
    501: "NotImplementedError",
}


def request_id(kind: Kind) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def error_type(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def vllm_error(status: int, message: str, param: str | None = None) -> bytes:
    error = {"message": message, "type": error_type(status), "param": param, "code": status}
    return orjson.dumps({"error": error})


def detail_error(message: str) -> bytes:
    return orjson.dumps({"detail": message})


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


def chat_response(
    rid: str, model: str, texts: Sequence[str], finish_reason: str, usage_: dict[str, Any]
) -> dict[str, Any]:
    choices = [
        {
            "index": index,
            "message": {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning": None,
            },
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
            "token_ids": None,
            "routed_experts": None,
        }
        for index, text in enumerate(texts)
    ]
    extra = {"prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None}
    return _response(rid, "chat.completion", model, choices, usage_) | extra


def completion_response(
    rid: str, model: str, texts: Sequence[str], finish_reason: str, usage_: dict[str, Any]
) -> dict[str, Any]:
    choices = [
        {
            "index": index,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
            "token_ids": None,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "routed_experts": None,
        }
        for index, text in enumerate(texts)
    ]
    return _response(rid, "text_completion", model, choices, usage_)


def _response(
    rid: str, obj: str, model: str, choices: list[dict[str, Any]], usage_: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": None,
        "usage": usage_,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }


class Chunks:
    """The SSE frames of one streamed chat or text completion."""

    def __init__(self, kind: Kind, model: str, *, continuous_usage: bool) -> None:
        self.kind = kind
        self.head = {
            "id": request_id(kind),
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        self.continuous_usage = continuous_usage

    def role(self, index: int, prompt_tokens: int) -> bytes:
        choice = {
            "index": index,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        extra = {"prompt_token_ids": None, "prompt_text": None}
        return self._frame(choice, prompt_tokens, 0, extra)

    def token(
        self, index: int, text: str, finish: str | None, prompt_tokens: int, completion: int
    ) -> bytes:
        """One token of choice `index`; `completion` counts that choice's tokens so far."""
        choice: dict[str, Any] = {"index": index}
        if self.kind == "chat":
            choice |= {"delta": {"content": text}, "logprobs": None, "finish_reason": finish}
            if finish is not None:
                choice["stop_reason"] = None
        else:
            choice |= {"text": text, "logprobs": None, "finish_reason": finish}
            choice |= {"stop_reason": None, "prompt_token_ids": None}
        choice["token_ids"] = None
        return self._frame(choice, prompt_tokens, completion, {})

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The last frame before [DONE] when stream_options.include_usage is set."""
        final = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens}
        final["completion_tokens"] = completion_tokens
        return _sse(self.head | {"choices": [], "usage": final})

    def _frame(
        self, choice: dict[str, Any], prompt_tokens: int, completion: int, extra: dict[str, Any]
    ) -> bytes:
        chunk: dict[str, Any] = self.head | {"choices": [choice]} | extra
        if self.continuous_usage:
            chunk["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            }
        return _sse(chunk)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def embeddings_response(
    model: str, vectors: Sequence[list[float] | str], prompt_tokens: int
) -> dict[str, Any]:
    data = [
        {"index": index, "object": "embedding", "embedding": vector}
        for index, vector in enumerate(vectors)
    ]
    return {
        "id": f"embd-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": usage(prompt_tokens, 0),
    }


def model_list(models: Sequence[str], max_model_len: int) -> dict[str, Any]:
    created = int(time.time())
    cards = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": name,
            "parent": None,
            "max_model_len": max_model_len,
            "permission": [_permission(created)],
        }
        for name in models
    ]
    return {"object": "list", "data": cards}


def _permission(created: int) -> dict[str, Any]:
    return {
        "id": f"modelperm-{uuid.uuid4().hex}",
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
