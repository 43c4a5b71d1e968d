"""vLLM's /v1/models cards: base models, LoRA adapters, max_model_len."""

from __future__ import annotations

import pytest

from gateway.routing.model_cards import ServedModel, parse_model_list

VLLM_LIST = {
    "object": "list",
    "data": [
        {
            "id": "llama",
            "object": "model",
            "created": 1,
            "owned_by": "vllm",
            "root": "/models/llama",
            "parent": None,
            "max_model_len": 8192,
            "permission": [{"id": "modelperm-1"}],
        },
        {
            "id": "sql-lora",
            "object": "model",
            "root": "/adapters/sql",
            "parent": "llama",
            "max_model_len": None,
        },
    ],
}


def test_base_models_and_adapters_are_read() -> None:
    assert parse_model_list(VLLM_LIST) == (
        ServedModel("llama", None, 8192),
        ServedModel("sql-lora", "llama", None),
    )
    assert parse_model_list(VLLM_LIST)[1].is_adapter


def test_odd_cards_are_skipped_or_their_odd_fields_ignored() -> None:
    payload = {
        "data": [
            "not a card",
            {"object": "model"},  # no id
            {"id": 7},
            {"id": ""},
            {"id": "m", "parent": 3, "max_model_len": "8192"},
            {"id": "m", "max_model_len": 10},  # a duplicate: the first card counts
            {"id": "t", "max_model_len": True},
        ]
    }
    assert parse_model_list(payload) == (ServedModel("m"), ServedModel("t"))


@pytest.mark.parametrize("payload", [None, [], {"data": None}, {"object": "list"}, "x"])
def test_answers_of_another_shape_are_refused(payload: object) -> None:
    with pytest.raises(ValueError, match="data"):
        parse_model_list(payload)
