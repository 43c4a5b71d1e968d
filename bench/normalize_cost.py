"""What bringing vLLM's bodies in line with OpenAI's schema costs, per body and per stream frame.

The bodies are shaped exactly like vLLM 0.32's answers (the nulls included). Prints the time of
each path in microseconds, beside the cost of simply parsing and re-serialising the same bytes.

    .venv/bin/python -m bench.normalize_cost
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

import orjson

from gateway.proxy.frame_filter import transform_frame
from gateway.proxy.normalize import normalize_error, normalize_success

CHAT_BODY = (
    b'{"id":"chatcmpl-92eff0f4208c4fef","object":"chat.completion","created":1795347754,'
    b'"model":"smollm2-135m-instruct","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"The capital of France is Paris.","refusal":null,"annotations":null,'
    b'"audio":null,"function_call":null,"reasoning":null},"logprobs":null,'
    b'"finish_reason":"stop","stop_reason":null,"token_ids":null,"routed_experts":null}],'
    b'"service_tier":null,"system_fingerprint":"vllm-0.32.0-f184e509","usage":{'
    b'"prompt_tokens":37,"total_tokens":45,"completion_tokens":8,"prompt_tokens_details":null,'
    b'"completion_tokens_details":null},"prompt_logprobs":null,"prompt_token_ids":null,'
    b'"prompt_text":null,"kv_transfer_params":null,"ec_transfer_params":null,"metrics":null}'
)
TOKEN_FRAME = (
    b'data: {"id":"chatcmpl-ad66c813e730ffd4","object":"chat.completion.chunk",'
    b'"created":1795347754,"model":"smollm2-135m-instruct","choices":[{"index":0,'
    b'"delta":{"content":" Paris"},"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
)
ERROR_BODY = (
    b'{"error":{"message":"max_tokens=100000 cannot be greater than max_model_len=8192.",'
    b'"type":"BadRequestError","param":"max_tokens","code":400}}'
)


def per_call_us(fn: Callable[[], object], number: int = 20000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    rows = [
        ("chat body: parse + dump only (reference)", lambda: orjson.dumps(orjson.loads(CHAT_BODY))),
        ("chat body: normalize (5 nulls dropped)", lambda: normalize_success(CHAT_BODY)),
        ("stream token frame: transform (nothing to drop)", lambda: transform_frame(TOKEN_FRAME)),
        ("stream [DONE] frame: transform", lambda: transform_frame(b"data: [DONE]\n\n")),
        ("error body: normalize", lambda: normalize_error(400, ERROR_BODY)),
    ]
    for name, fn in rows:
        print(f"{name:<50} {per_call_us(fn):6.2f} us")


if __name__ == "__main__":
    main()
