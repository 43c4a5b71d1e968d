from __future__ import annotations

from typing import Any

import orjson

from gateway.proxy.frame_filter import transform_frame
from gateway.proxy.normalize import normalize_error, normalize_success, strip_forbidden_nulls


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


def test_a_body_stripped_before_it_is_serialised_is_the_same_bytes_as_one_normalised() -> None:
    """A collected answer is stripped as a dict (one serialisation, no scan): the bytes must be
    normalize_success's, with forbidden nulls or without."""
    message = {"role": "assistant", "content": "hi", "function_call": None, "annotations": None}
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "prompt_tokens_details": None}
    bodies: list[dict[str, Any]] = [
        {"id": "c", "choices": [{"index": 0, "message": message}], "usage": usage},
        {"id": "c", "system_fingerprint": None, "choices": [], "usage": None},
        {"id": "c", "choices": [{"index": 0, "text": "t", "logprobs": None}], "usage": {}},
    ]
    for body in bodies:
        normalized = normalize_success(orjson.dumps(body))
        strip_forbidden_nulls(body)
        assert orjson.dumps(body) == normalized
    assert bodies[0]["choices"][0]["message"] == {"role": "assistant", "content": "hi"}


def test_a_null_multimodal_count_is_left_out_as_vllms_streams_leave_it() -> None:
    # (vLLM's plain answer has it null, its stream's usage has it not: a collected answer was
    # then not the body vLLM sends; with --enable-prompt-tokens-details on every answer)
    usage = {"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 0}}
    plain = {
        "usage": {
            **usage,
            "prompt_tokens_details": {
                "cached_tokens": 0,
                "multimodal_tokens": None,
                "created_cache_tokens": None,
            },
        }
    }
    assert orjson.loads(normalize_success(orjson.dumps(plain))) == {"usage": usage}
    counted = {"usage": {"prompt_tokens_details": {"multimodal_tokens": {"image": 5}}}}
    assert normalize_success(orjson.dumps(counted)) == orjson.dumps(counted)  # (kept)


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


def test_an_engines_model_not_found_reads_as_the_gateways_own() -> None:
    """vLLM's 404 named the models the engine serves ("Valid aliases: …", which a key may not
    be allowed to know) and had type not_found_error where the gateway's own 404 for an
    unknown model has OpenAI's invalid_request_error."""
    for param in ("model", None):  # vLLM of today, and one that left param empty
        error = {"message": "The model `ad1` does not exist. Valid aliases: smol.",
                 "type": "NotFoundError", "param": param, "code": 404}  # fmt: skip
        err = orjson.loads(normalize_error(404, orjson.dumps({"error": error})))["error"]
        assert err == {
            "message": "The model 'ad1' does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }


def test_fastapi_detail_bodies_are_rewritten() -> None:
    err = orjson.loads(normalize_error(404, b'{"detail":"Not Found"}', "embeddings"))["error"]
    assert err["message"] == "The model's engine does not serve /v1/embeddings."
    # OpenAI's shape for a model on a route it does not serve: the field, no code
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", "model", None)
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


def _vllm_400(message: str, param: str | None) -> bytes:
    error = {"message": message, "type": "Bad Request", "param": param, "code": 400}
    return orjson.dumps({"error": error})


def test_vllm_validation_errors_name_the_field_as_openai_does() -> None:
    """vLLM 0.32's answers to `"max_tokens": "ten"` and `"messages": ["hi"]`, as it sends them."""
    wrong_type = _vllm_400(
        "1 validation error:\n  {'type': 'int_parsing', 'loc': 'body.max_tokens', 'msg': "
        "'Input should be a valid integer, unable to parse string as an integer', "
        "'input': 'ten'}",
        "body.max_tokens",
    )
    err = orjson.loads(normalize_error(400, wrong_type, "chat/completions"))["error"]
    assert err == {
        "message": "Invalid value for 'max_tokens': Input should be a valid integer, unable to "
        "parse string as an integer (got 'ten').",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": None,
    }
    union = _vllm_400(
        "8 validation errors:\n  {'type': 'dict_type', 'loc': "
        "'body.messages.0.ChatCompletionDeveloperMessageParam', 'msg': 'Input should be a "
        "valid dictionary', 'input': 'hi'}\n  {'type': 'dict_type', 'loc': "
        "'body.messages.0.ChatCompletionSystemMessageParam', 'msg': 'Input should be a valid "
        "dictionary', 'input': 'hi'}",
        "body.messages.0.ChatCompletionDeveloperMessageParam",
    )
    err = orjson.loads(normalize_error(400, union, "chat/completions"))["error"]
    assert err["param"] == "messages[0]"
    assert err["message"] == (
        "Invalid value for 'messages[0]': Input should be a valid dictionary (got 'hi')."
    )
    nested = _vllm_400("bad name", "body.tools.0.function.name")
    err = orjson.loads(normalize_error(400, nested))["error"]
    assert (err["param"], err["message"]) == ("tools[0].function.name", "bad name")
    cut = _vllm_400(
        "1 validation error:\n  {'type': 'x', 'loc': 'body.stop', 'msg...[trunc", "body.stop"
    )
    err = orjson.loads(normalize_error(400, cut))["error"]  # not a literal: the message stays
    assert err["param"] == "stop"
    assert err["message"].startswith("1 validation error:")


def test_a_value_that_is_not_a_string_is_quoted_as_the_json_sent() -> None:
    """vLLM writes a complaint's input as str(value): a null sent is 'None', which quoted read
    as the string "None" (as vLLM 0.32 answers `"content": null` in a user message)."""
    for sent, kind, shown in (
        ("None", "string_type", "null"),
        ("True", "string_type", "true"),
        ("None", "int_type", "null"),
        ("2.5", "int_from_float", "2.5"),
        ("None", "string_too_short", "'None'"),  # (a string's own complaint: it was a string)
        ("None", "float_parsing", "'None'"),
    ):
        dump = (
            "1 validation error:\n"
            f"  {{'type': '{kind}', 'loc': 'body.user', 'msg': 'Input is wrong',"
            f" 'input': '{sent}'}}"
        )
        error = orjson.loads(normalize_error(400, _vllm_400(dump, "body.user")))["error"]
        assert error["message"] == f"Invalid value for 'user': Input is wrong (got {shown}).", kind


def test_a_union_the_value_is_not_the_type_of_names_what_is_wrong_inside_it() -> None:
    """vLLM 0.32's answer to a response's `"input": [{"role": "user", "content": 5}]`: its
    first complaint is the string branch of `input`, which a list is not; the message said
    'Input should be a valid string' of an array. The complaint inside the list is named."""
    dump = (
        "234 validation errors:\n"
        "  {'type': 'string_type', 'loc': 'body.input', 'msg': 'Input should be a valid string', "
        "'input': '<list of 1 items>'}\n"
        "  {'type': 'string_type', 'loc': 'body.input.0.EasyInputMessageParam.content', 'msg': "
        "'Input should be a valid string', 'input': '5'}\n"
        "  {'type': 'missing', 'loc': 'body.input.0.Message.content', 'msg': 'Field required', ..."
    )
    error = orjson.loads(normalize_error(400, _vllm_400(dump, "body.input"), "responses"))["error"]
    assert error["param"] == "input[0].content"
    assert error["message"] == (
        "Invalid value for 'input[0].content': Input should be a valid string (got 5)."
    )
    stop = (
        "2 validation errors:\n"
        "  {'type': 'string_type', 'loc': 'body.stop', 'msg': 'Input should be a valid string', "
        "'input': '5'}\n"
        "  {'type': 'list_type', 'loc': 'body.stop', 'msg': 'Input should be a valid list', "
        "'input': '5'}"
    )
    error = orjson.loads(normalize_error(400, _vllm_400(stop, "body.stop")))["error"]
    assert error["param"] == "stop"  # no branch took it: the first complaint stands
    assert error["message"] == "Invalid value for 'stop': Input should be a valid string (got 5)."
    five = (  # the list branch took it, and found it too long (said "a valid string" until
        "2 validation errors:\n"  # 2026-12-05, of a list, quoting vLLM's stand-in for it)
        "  {'type': 'string_type', 'loc': 'body.stop', 'msg': 'Input should be a valid string', "
        "'input': '<list of 5 items>'}\n"
        "  {'type': 'too_long', 'loc': 'body.stop', 'msg': 'List should have at most 4 items "
        "after validation, not 5', 'input': '<list of 5 items>', 'ctx': {'max_length': 4}}"
    )
    error = orjson.loads(normalize_error(400, _vllm_400(five, "body.stop")))["error"]
    assert (error["param"], error["message"]) == (
        "stop",
        "Invalid value for 'stop': List should have at most 4 items after validation, not 5.",
    )


def test_a_prompt_over_the_context_is_context_length_exceeded_on_the_prompts_field() -> None:
    """vLLM names the count it refused: `input_tokens`, or `input_text` when a text has more
    characters than the context could hold (its first check, which embeddings' inputs meet)."""
    for counted in ("input_tokens", "input_text"):
        body = _vllm_400(
            "This model's maximum context length is 8192 tokens. However, ...", counted
        )
        for route, field in (
            ("chat/completions", "messages"),
            ("completions", "prompt"),
            ("embeddings", "input"),
        ):
            err = orjson.loads(normalize_error(400, body, route))["error"]
            assert (err["param"], err["code"]) == (field, "context_length_exceeded")
            assert err["message"].startswith("This model's maximum context length is 8192")


def test_a_sampling_refusal_without_param_gets_the_field_its_message_names() -> None:
    """vLLM 0.32's SamplingParams checks set `parameter` for some fields, not for `n`,
    `top_k`, `presence_penalty`, ...: their message names the field first."""
    for message, field in (
        ("n must be at least 1, got 0.", "n"),
        ("top_k must be 0 (disable), or at least 1, got -5.", "top_k"),
        ("presence_penalty must be in [-2, 2], got 3.0.", "presence_penalty"),
        ("`thinking_token_budget` must be a non-negative integer", "thinking_token_budget"),
    ):
        err = orjson.loads(normalize_error(400, _vllm_400(message, None)))["error"]
        assert (err["param"], err["message"]) == (field, message)
    for message in ("max_pattern_size, min_pattern_size must be >=0, got -1.", "Bad request"):
        err = orjson.loads(normalize_error(400, _vllm_400(message, None)))["error"]
        assert err["param"] is None  # no single field named first
    server = orjson.loads(normalize_error(500, _vllm_400("n must be at least 1, got 0.", None)))
    assert server["error"]["param"] is None  # only a refusal of the request names a field


def test_a_grammar_the_engine_cannot_compile_names_the_field_it_came_from() -> None:
    """vLLM's structured-output backends refuse a schema or regex without `param`
    ("Grammar error: Invalid type: bogus"): the field the request carried it in is named."""
    for message in (
        "Grammar error: Invalid type: bogus",
        "Failed to transform regex into a grammar: unclosed group",
        "The provided JSON schema contains features not supported by xgrammar.",
        "Invalid JSON grammar specification.",
    ):
        body = _vllm_400(message, None)
        err = orjson.loads(normalize_error(400, body, "chat/completions", "response_format"))
        assert err["error"]["param"] == "response_format"
        assert err["error"]["message"] == f"Invalid value for 'response_format': {message}"
        assert (
            orjson.loads(normalize_error(400, body, "chat/completions"))["error"]["param"] is None
        )
    other = _vllm_400("Cannot apply chat template to an empty conversation.", None)
    err = orjson.loads(normalize_error(400, other, "chat/completions", "response_format"))
    assert err["error"]["param"] is None  # not a grammar's refusal


def test_an_embeddings_dimensions_refusal_names_dimensions() -> None:
    """vLLM 0.32's three refusals of `dimensions` (pooling_params.py) set no `parameter`."""
    for message in (
        "Model 'all-minilm-l6-v2' does not support Matryoshka embeddings; dimensions must be "
        "unset (received dimensions=8).",
        "Model 'm' only supports dimensions in range [1, 768], got 0.",
        "Model 'm' only supports Matryoshka dimensions [64, 128], got 100.",
    ):
        err = orjson.loads(normalize_error(400, _vllm_400(message, None), "embeddings"))["error"]
        assert (err["param"], err["message"]) == ("dimensions", message)


def test_a_token_id_outside_the_vocabulary_names_the_prompts_field() -> None:
    refusal = _vllm_400("Token id 999999999 is out of vocabulary", None)
    for route, field in (("completions", "prompt"), ("embeddings", "input")):
        error = orjson.loads(normalize_error(400, refusal, route))["error"]
        assert (error["param"], error["message"]) == (
            field,
            "Token id 999999999 is out of vocabulary",
        )


def test_an_empty_prompt_among_several_names_the_prompts_field() -> None:
    """vLLM 0.32's answer to `prompt: ["", "hi"]` names no field (found by review)."""
    refusal = _vllm_400("The decoder prompt cannot be empty", None)
    for route, field in (("completions", "prompt"), ("embeddings", "input")):
        error = orjson.loads(normalize_error(400, refusal, route))["error"]
        assert (error["param"], error["message"]) == (field, "The decoder prompt cannot be empty")


def test_an_engine_limit_is_told_without_the_advice_to_its_operator() -> None:
    """vLLM tells the client to set a setting of the engine's (found by review: a completions
    batch of 1,025 to 2,048 prompts, within the gateway's own bound, or `n` over 16,384; an
    image over VLLM_MAX_IMAGE_PIXELS, more images than `--limit-mm-per-prompt`). The messages
    as vLLM 0.32 sends them: str() of its VLLMValidationError adds ` (parameter=…)`."""
    batch = (
        "prompt list length 1500 exceeds the maximum allowed count of 1024. To increase this "
        "limit, set the VLLM_MAX_COMPLETION_PROMPTS environment variable. (parameter=prompt)"
    )
    error = orjson.loads(normalize_error(400, _vllm_400(batch, "prompt"), "completions"))["error"]
    assert (error["param"], error["message"]) == (
        "prompt",
        "prompt list length 1500 exceeds the maximum allowed count of 1024. (parameter=prompt)",
    )
    n = (
        "n must be at most 16384, got 20000. To increase this limit, set the "
        "VLLM_MAX_N_SEQUENCES environment variable."
    )
    error = orjson.loads(normalize_error(400, _vllm_400(n, None), "chat/completions"))["error"]
    assert error["param"] == "n"
    assert error["message"].startswith("n must be at most 16384, got 20000.")
    for told, kept in (
        (
            "Image dimensions 10000x10000 (100000000 pixels) exceed the maximum of 89478485 "
            "pixels. Set VLLM_MAX_IMAGE_PIXELS to increase this limit.",
            "Image dimensions 10000x10000 (100000000 pixels) exceed the maximum of 89478485 "
            "pixels.",
        ),
        (
            "At most 1 image(s) may be provided in one prompt. Set `--limit-mm-per-prompt` to "
            "increase this limit. (parameter=image)",
            "At most 1 image(s) may be provided in one prompt. (parameter=image)",
        ),
    ):
        error = orjson.loads(normalize_error(400, _vllm_400(told, None), "chat/completions"))
        assert kept in error["error"]["message"]
        assert "increase this limit" not in error["error"]["message"]


def test_a_content_part_vllm_cannot_read_is_one_sentence_on_the_prompts_field() -> None:
    """vLLM 0.32's answer to `{"type": "text"}` without its text (parts are read lazily)."""
    dump = (
        "7 validation errors for ValidatorIterator\n0.ChatCompletionContentPartTextParam.text\n"
        "  Field required [type=missing, input_value={'type': 'text'}, input_type=dict]\n"
        "    For further information visit https://errors.pydantic.dev/2.14/v/missing\n"
        "0.ChatCompletionContentPartImageParam.image_url\n  Field required [type=missing, ...]"
    )
    err = orjson.loads(normalize_error(400, _vllm_400(dump, None), "chat/completions"))["error"]
    assert err["param"] == "messages"
    assert (
        err["message"] == "Invalid value for content part [0].text of 'messages': Field required."
    )
    cut = orjson.loads(normalize_error(400, _vllm_400("2 validation errors for X\n", None)))
    assert cut["error"]["message"] == "2 validation errors for X."  # no complaint to show


def test_chats_logprobs_count_is_named_top_logprobs() -> None:
    """vLLM maps chat's top_logprobs to its sampling `logprobs` and names that in its refusal."""
    refusal = _vllm_400(
        "Requested sample logprobs of 30, which is greater than max allowed: 20", "logprobs"
    )
    chat = orjson.loads(normalize_error(400, refusal, "chat/completions"))["error"]
    assert chat["param"] == "top_logprobs"
    completions = orjson.loads(normalize_error(400, refusal, "completions"))["error"]
    assert completions["param"] == "logprobs"  # completions' own field


def test_chats_own_logprobs_refused_by_its_schema_keeps_its_name() -> None:
    """A refusal of chat's boolean `logprobs` names its place in the body ("body.logprobs"),
    not vLLM's sampling field: the client was told 'top_logprobs' (found 2026-12-07)."""
    said = (
        "1 validation error:\n  {'type': 'bool_parsing', 'loc': 'body.logprobs', 'msg': 'Input"
        " should be a valid boolean, unable to interpret input', 'input': 'maybe'}"
    )
    for route in ("chat/completions", "responses"):
        error = orjson.loads(normalize_error(400, _vllm_400(said, "body.logprobs"), route))
        assert error["error"]["param"] == "logprobs"
        assert error["error"]["message"].startswith("Invalid value for 'logprobs': ")


def test_an_embeddings_truncation_over_the_model_names_truncate_prompt_tokens() -> None:
    """vLLM's pooling check sets no `param`; chat's and completions' name the field."""
    said = (
        "truncate_prompt_tokens value is greater than max_model_len. Please request a smaller"
        " truncation size."
    )
    error = orjson.loads(normalize_error(400, _vllm_400(said, None), "embeddings"))["error"]
    assert (error["param"], error["message"]) == ("truncate_prompt_tokens", said)


def test_responses_fields_vllm_checks_under_its_names_are_named_as_sent() -> None:
    """vLLM 0.32 turns a response's max_output_tokens and top_logprobs into its sampling
    `max_tokens` and `logprobs`, and names those when it refuses them: in `param` and in the
    message ("max_tokens must be at least 1" of a max_output_tokens of -1 until 2026-12-05)."""
    for message, vllm, sent, said in (
        (
            "max_tokens must be at least 1, got -1. (parameter=max_tokens, value=-1)",
            "max_tokens",
            "max_output_tokens",
            "max_output_tokens must be at least 1, got -1. (parameter=max_output_tokens, value=-1)",
        ),
        (
            "Requested sample logprobs of 30, which is greater than max allowed: 20",
            "logprobs",
            "top_logprobs",
            "Requested sample top_logprobs of 30, which is greater than max allowed: 20",
        ),
    ):
        refusal = _vllm_400(message, vllm)
        error = orjson.loads(normalize_error(400, refusal, "responses"))["error"]
        assert (error["param"], error["message"]) == (sent, said)
    said = "Requested sample logprobs of 50, which is greater than max allowed: 20"
    refusal = _vllm_400(said, "logprobs")
    error = orjson.loads(normalize_error(400, refusal, "chat/completions"))["error"]
    assert error["message"] == said.replace("logprobs", "top_logprobs")
    error = orjson.loads(normalize_error(400, refusal, "completions"))["error"]  # (its own name)
    assert (error["param"], error["message"]) == ("logprobs", said)


def test_a_union_branch_refusing_the_type_gives_way_to_the_branch_of_that_type() -> None:
    """vLLM 0.32's answer to a response's `"text": {"format": {"type": "json_schema"}}` (no name,
    no schema): its first complaint is the `text` branch saying "Input should be 'text'", which
    named the type the client had right. The json_schema branch's complaint is named."""
    dump = (
        "4 validation errors:\n"
        "  {'type': 'literal_error', 'loc': 'body.text.format.ResponseFormatText.type', 'msg': "
        "\"Input should be 'text'\", 'input': 'json_schema', 'ctx': {'expected': \"'text'\"}}\n"
        "  {'type': 'missing', 'loc': 'body.text.format.ResponseFormatTextJSONSchemaConfig.name', "
        "'msg': 'Field required', 'input': '<dict of 1 items>'}\n"
        "  {'type': 'missing', 'loc': 'body.text.format.ResponseFormatTextJSONSchemaConfig.schema',"
        " 'msg': 'Field required', 'input': '<dict of 1 items>'}\n"
        "  {'type': 'literal_error', 'loc': 'body.text.format.ResponseFormatJSONObject.type', "
        "'msg': \"Input should be 'json_object'\", 'input': 'json_schema', 'ctx': {'expected': "
        "\"'json_object'\"}}"
    )
    refusal = _vllm_400(dump, "body.text.format.ResponseFormatText.type")
    error = orjson.loads(normalize_error(400, refusal, "responses"))["error"]
    assert (error["param"], error["message"]) == (
        "text.format.name",
        "Missing required parameter: 'text.format.name'.",
    )
    unknown = (  # a type no branch has: every complaint refuses it, the first stands
        "2 validation errors:\n"
        "  {'type': 'literal_error', 'loc': 'body.text.format.ResponseFormatText.type', 'msg': "
        "\"Input should be 'text'\", 'input': 'yaml'}\n"
        "  {'type': 'literal_error', 'loc': 'body.text.format.ResponseFormatJSONObject.type', "
        "'msg': \"Input should be 'json_object'\", 'input': 'yaml'}"
    )
    refusal = _vllm_400(unknown, "body.text.format.ResponseFormatText.type")
    error = orjson.loads(normalize_error(400, refusal, "responses"))["error"]
    assert (error["param"], error["message"]) == (
        "text.format.type",
        "Invalid value for 'text.format.type': Input should be 'text' (got 'yaml').",
    )


def test_a_content_part_the_engine_refuses_names_the_prompts_field_not_type() -> None:
    """vLLM 0.32 refuses a `file` part with `param` "type" (which names no field of the
    request), and media sent to a text-only model with no `param` at all."""
    part = (
        "Unsupported chat content part type: 'file'. Supported types: image_url, text. "
        "(parameter=type, value=file)"
    )
    for route, field in (("chat/completions", "messages"), ("responses", "input")):
        error = orjson.loads(normalize_error(400, _vllm_400(part, "type"), route))["error"]
        assert (error["param"], error["message"]) == (field, part)
    text_only = _vllm_400("smollm2-135m-instruct is not a multimodal model", None)
    error = orjson.loads(normalize_error(400, text_only, "chat/completions"))["error"]
    assert error["param"] == "messages"
    other = orjson.loads(normalize_error(400, _vllm_400("Bad type.", "type")))["error"]
    assert other["param"] == "type"  # (only those two refusals)
