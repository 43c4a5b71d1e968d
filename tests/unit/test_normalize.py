from __future__ import annotations

import orjson

from gateway.proxy.normalize import normalize_error, normalize_success
from gateway.proxy.stream import transform_frame


def test_body_without_forbidden_nulls_is_returned_as_the_same_bytes() -> None:
    body = b'{"id":"x","choices":[{"index":0,"logprobs":null,"finish_reason":"stop"}]}'
    assert normalize_success(body) is body


def test_forbidden_nulls_are_dropped_and_allowed_ones_kept() -> None:
    body = orjson.dumps(
        {
            "id": "chatcmpl-1",
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": "stop",
                    "message": {
                        "role": "assistant",
                        "content": "hi",
                        "refusal": None,
                        "tool_calls": None,
                        "function_call": None,
                        "annotations": None,
                    },
                }
            ],
            "usage": {"prompt_tokens": 1, "prompt_tokens_details": None},
            "kv_transfer_params": None,
        }
    )
    out = orjson.loads(normalize_success(body))
    assert "system_fingerprint" not in out
    message = out["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "hi", "refusal": None}
    assert out["choices"][0]["logprobs"] is None
    assert out["usage"] == {"prompt_tokens": 1}
    # Fields the spec does not know pass through untouched.
    assert out["kv_transfer_params"] is None


def test_stream_chunk_usage_null_is_dropped() -> None:
    frame = (
        b'data: {"id":"c","choices":[{"index":0,"delta":{"role":null,"content":"a"}}],'
        b'"usage":null}\n\n'
    )
    out = transform_frame(frame)
    assert orjson.loads(out[6:]) == {
        "id": "c",
        "choices": [{"index": 0, "delta": {"content": "a"}}],
    }


def test_vllm_integer_error_code_becomes_openai_shape() -> None:
    body = (
        b'{"error":{"message":"bad max_tokens","type":"BadRequestError","param":null,"code":400}}'
    )
    assert orjson.loads(normalize_error(400, body)) == {
        "error": {
            "message": "bad max_tokens",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def test_model_404_gets_model_not_found_code() -> None:
    body = (
        b'{"error":{"message":"no such model","type":"NotFoundError","param":"model","code":404}}'
    )
    err = orjson.loads(normalize_error(404, body))["error"]
    assert err["code"] == "model_not_found"
    assert err["param"] == "model"


def test_fastapi_detail_bodies_are_rewritten() -> None:
    err = orjson.loads(normalize_error(404, b'{"detail":"Not Found"}', "embeddings"))["error"]
    assert err["message"] == "The model's engine does not serve /v1/embeddings."
    assert err["type"] == "not_found_error"
    detail = b'{"detail":[{"loc":["body","messages"],"msg":"Field required"}]}'
    err = orjson.loads(normalize_error(422, detail))["error"]
    assert err["message"] == "messages: Field required"


def test_non_json_error_body_keeps_its_text() -> None:
    err = orjson.loads(normalize_error(502, b"upstream exploded"))["error"]
    assert err == {
        "message": "upstream exploded",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_mid_stream_vllm_error_frame_is_normalised() -> None:
    frame = (
        b'data: {"error":{"message":"boom","type":"InternalServerError","param":null,'
        b'"code":500}}\n\n'
    )
    err = orjson.loads(transform_frame(frame)[6:])["error"]
    assert err["code"] is None
    assert err["type"] == "server_error"
    assert err["message"] == "boom"


def test_spaced_json_nulls_are_found_too() -> None:
    body = b'{"id": "x", "usage": null, "choices": []}'
    assert orjson.loads(normalize_success(body)) == {"id": "x", "choices": []}


def test_token_frames_with_only_allowed_nulls_pass_as_the_same_object() -> None:
    frame = (
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":" Paris"},'
        b'"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
    )
    assert transform_frame(frame) is frame


def test_a_frame_after_an_event_line_is_normalised_with_its_event_line_kept() -> None:
    frame = b'event: chunk\ndata: {"id":"x","system_fingerprint":null,"choices":[]}\n\n'
    assert transform_frame(frame) == b'event: chunk\ndata: {"id":"x","choices":[]}\n\n'
