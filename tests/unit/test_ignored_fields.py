"""OpenAI fields vLLM would drop unread, refused by name where that changes the answer."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.api.ignored_fields import IGNORED, check_ignored_fields
from gateway.errors import InvalidRequest


def refusal(route: str, body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        check_ignored_fields(route, body)
    return info.value


@pytest.mark.parametrize(
    ("route", "field"), [(route, field) for route, fields in IGNORED.items() for field in fields]
)
def test_a_field_the_engine_would_drop_is_refused_by_name(route: str, field: str) -> None:
    err = refusal(route, {"model": "m", field: 3})
    assert (err.param, err.code, err.status) == (field, "unsupported_parameter", 400)
    assert err.message.startswith(f"'{field}' is not supported: ")
    check_ignored_fields(route, {"model": "m", field: None})  # null asks for nothing


def test_each_refusal_says_what_to_send_instead() -> None:
    said = {
        field: refusal(route, {field: {}}).message for route in IGNORED for field in IGNORED[route]
    }
    assert "'tools'" in said["functions"]
    assert "'tool_choice'" in said["function_call"]
    assert "'n' completions" in said["best_of"]
    assert "'previous_response_id'" in said["conversation"]


@pytest.mark.parametrize("route", ["completions", "chat/completions"])
def test_best_of_n_is_n_and_passes(route: str) -> None:
    for body in ({"best_of": 1}, {"best_of": 3, "n": 3}, {"best_of": 1, "n": None}):
        check_ignored_fields(route, body)
    assert refusal(route, {"best_of": 3}).param == "best_of"
    assert refusal(route, {"best_of": 2, "n": 3}).param == "best_of"


def test_modalities_other_than_text_are_refused_naming_the_item() -> None:
    check_ignored_fields("chat/completions", {"modalities": ["text"]})
    check_ignored_fields("chat/completions", {"modalities": None})
    err = refusal("chat/completions", {"modalities": ["text", "audio"]})
    assert err.param == "modalities[1]"
    assert "'audio' output" in err.message


def test_the_fields_are_refused_on_their_route_only() -> None:
    """Each field is checked on the route whose OpenAI request has it; a route without such
    fields (embeddings) checks nothing."""
    check_ignored_fields("chat/completions", {"conversation": "c"})
    check_ignored_fields("completions", {"functions": [], "conversation": "c"})
    check_ignored_fields("embeddings", {"functions": [], "modalities": ["audio"]})
    check_ignored_fields("responses", {"functions": [], "best_of": 3})
