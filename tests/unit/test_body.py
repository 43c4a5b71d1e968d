from __future__ import annotations

from typing import Any

import pytest

from gateway.api.body import (
    check_type,
    require,
    require_messages,
    require_model,
    require_nonempty_list,
    stream_flag,
)
from gateway.errors import InvalidRequest


def _error(fn: Any, *args: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        fn(*args)
    return info.value


def test_missing_field_names_the_field() -> None:
    err = _error(require, {}, "messages", list)
    assert err.param == "messages"
    assert err.code == "missing_required_parameter"
    assert "'messages'" in err.message
    assert err.status_code == 400


def test_wrong_type_names_expected_and_actual() -> None:
    err = _error(require, {"messages": "hi"}, "messages", list)
    assert err.message == (
        "Invalid type for 'messages': expected an array, but got a string instead."
    )
    assert err.code == "invalid_type"


def test_json_true_is_not_an_integer() -> None:
    err = _error(check_type, {"n": True}, "n", int)
    assert "got a boolean" in err.message


def test_model_must_be_a_non_empty_string() -> None:
    assert require_model({"model": "m"}) == "m"
    assert _error(require_model, {"model": ""}).param == "model"
    assert _error(require_model, {"model": 3}).code == "invalid_type"


def test_empty_messages_are_refused() -> None:
    assert _error(require_nonempty_list, {"messages": []}, "messages").code == "empty_array"


def test_stream_flag_checks_types() -> None:
    assert stream_flag({"stream": True}) is True
    assert stream_flag({}) is False
    assert _error(stream_flag, {"stream": "yes"}).param == "stream"
    assert _error(stream_flag, {"stream_options": 1}).param == "stream_options"
    assert stream_flag({"stream": True, "stream_options": {"include_usage": None}}) is True
    bad = _error(stream_flag, {"stream": True, "stream_options": {"include_usage": "garbage"}})
    assert (bad.param, bad.code) == ("stream_options.include_usage", "invalid_type")


def test_content_parts_of_openais_types_carry_their_field() -> None:
    def parts(*content: Any) -> dict[str, Any]:
        return {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "user", "content": list(content)},
            ]
        }

    missing = _error(require_messages, parts({"type": "text", "text": "a"}, {"type": "text"}))
    assert (missing.param, missing.code) == (
        "messages[1].content[1].text",
        "missing_required_parameter",
    )
    wrong = _error(require_messages, parts({"type": "image_url", "image_url": 3}))
    assert (wrong.param, wrong.code) == ("messages[1].content[0].image_url", "invalid_type")
    assert "an object or a string" in wrong.message
    accepted = parts(
        {"type": "image_url", "image_url": "data:image/png;base64,AA"},  # vLLM's short form
        {"type": "video_url", "video_url": {"url": "x"}},  # not OpenAI's: vLLM judges it
        {"type": "bogus"},
        {"type": ["text"]},  # not a type name: vLLM's to refuse, not a 500 here
        "a bare string",
    )
    assert require_messages(accepted) == accepted["messages"]


def test_max_completion_tokens_below_one_is_refused_naming_it() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}
    err = _error(require_messages, body)
    assert (err.param, err.code) == ("max_completion_tokens", "integer_below_min_value")
    assert "got 0" in err.message
    assert require_messages({**body, "max_completion_tokens": 1}) == body["messages"]
    many = _error(require_messages, {**body, "max_completion_tokens": 5, "top_logprobs": 21})
    assert (many.param, many.code) == ("top_logprobs", "integer_above_max_value")
    assert (
        require_messages({**body, "max_completion_tokens": 1, "top_logprobs": 20})
        == body["messages"]
    )
