"""Requests that make the engine compute prompt logprobs, refused where the engines cannot
(`request_policy.prompt_logprobs: false`).

vLLM 0.32's CPU build started with LoRA (`--enable-lora`: `llmaas up`'s engine, for fine-tuned
models) crashes its engine core on prompt logprobs for more than one sequence in a batch
(its CPU LoRA logits path): one completions request of two prompts with `echo` and
`logprobs`, or a few such requests at once, took the shared engine down for every tenant
until it was restarted, again and again. vLLM computes them for `prompt_logprobs`, for a
completion's `echo` with `logprobs`, and for a chat's `echo` (with its `top_logprobs`, 0 if
not given).
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest

_WHY = (
    "this gateway's engines cannot compute prompt logprobs (vLLM's CPU build with LoRA "
    "adapters fails on them)"
)


def check_prompt_logprobs(route: str, body: dict[str, Any]) -> None:
    """A 400 naming the field that would make the engine compute prompt logprobs. `echo` is
    set unless it is absent, null or false: vLLM's pydantic reads 1, "true" or "yes" as true."""
    if body.get("prompt_logprobs") is not None:
        raise _refused("prompt_logprobs")
    if body.get("echo") in (None, False):
        return
    if route == "completions" and body.get("logprobs") is not None:
        raise _refused("echo", "with 'logprobs'")
    if route == "chat/completions" and (
        "top_logprobs" not in body or body["top_logprobs"] is not None
    ):
        raise _refused("echo")


def _refused(param: str, said: str = "") -> InvalidRequest:
    return InvalidRequest(
        f"'{param}'{' ' + said if said else ''} is not supported here: {_WHY}.",
        param=param,
        code="unsupported_parameter",
    )
