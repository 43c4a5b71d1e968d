from __future__ import annotations

import math

import pytest

from gateway.sim.engine import tokens_by
from gateway.sim.text import (
    TOKENS,
    PromptError,
    chat_prompt,
    completion_tokens,
    count_prompt_tokens,
    embedding,
    message_text,
    stable_hash,
    text_prompts,
)


def test_the_hash_is_stable_across_processes() -> None:
    assert stable_hash("hello") == 12085107955937391741  # BLAKE2b, not the salted hash()


def test_a_completion_is_a_pure_function_of_prompt_and_length() -> None:
    assert completion_tokens("hello", 5) == completion_tokens("hello", 5)
    assert completion_tokens("hello", 40)[:5] == completion_tokens("hello", 5)
    assert len(completion_tokens("hello", 100)) == 100
    assert completion_tokens("hello", 0) == []


def test_a_token_is_one_word_with_its_leading_space() -> None:
    for token in completion_tokens("some prompt", 50):
        assert token in TOKENS
        assert token.startswith(" ")
        assert len(token.split()) == 1


def test_prompts_and_choices_start_at_different_words() -> None:
    firsts = {completion_tokens(f"prompt {i}", 1)[0] for i in range(50)}
    assert len(firsts) > 5
    assert completion_tokens("p", 3, choice=1) != completion_tokens("p", 3, choice=0)


def test_chat_prompt_tokens_are_four_per_message_plus_words_plus_two() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is  the time"},
        {"role": "assistant", "content": None},
    ]
    assert count_prompt_tokens({"messages": messages}) == (4 + 2) + (4 + 4) + (4 + 0) + 2
    assert chat_prompt(messages).text == "system: be brief\nuser: what is  the time\nassistant: "


def test_content_parts_count_their_text_only() -> None:
    content = [
        {"type": "text", "text": "two words"},
        {"type": "image_url", "image_url": {"url": "http://x"}},
        {"type": "text", "text": "three more words"},
    ]
    assert message_text(content) == "two words three more words"
    assert count_prompt_tokens({"messages": [{"role": "user", "content": content}]}) == 4 + 5 + 2


def test_text_prompts_cost_one_bos_token_plus_words() -> None:
    assert count_prompt_tokens({"prompt": "one two three"}) == 4
    assert count_prompt_tokens({"prompt": ""}) == 1
    assert count_prompt_tokens({"prompt": ["a b", "c"]}) == 3 + 2
    assert count_prompt_tokens({"input": "embed me"}) == 3


def test_token_id_prompts_cost_their_length() -> None:
    assert count_prompt_tokens({"prompt": [1, 2, 3]}) == 3
    assert count_prompt_tokens({"input": [[1, 2], [3]]}) == 3
    assert [p.tokens for p in text_prompts([[5, 6], [7]], "prompt")] == [2, 1]


@pytest.mark.parametrize(
    "messages",
    [None, [], "hi", [{"content": "no role"}], [{"role": "user", "content": 3}], ["x"]],
)
def test_malformed_messages_name_the_field(messages: object) -> None:
    with pytest.raises(PromptError, match="messages") as info:
        chat_prompt(messages)
    assert info.value.param == "messages"


@pytest.mark.parametrize("prompt", [None, [], 3, [1, "a"], [[1], []], [-1], [True], {"a": 1}])
def test_malformed_prompts_name_the_field(prompt: object) -> None:
    with pytest.raises(PromptError, match="prompt"):
        text_prompts(prompt, "prompt")


def test_embeddings_are_deterministic_unit_vectors() -> None:
    vector = embedding("hello", 16)
    assert len(vector) == 16
    assert math.isclose(math.fsum(v * v for v in vector), 1.0)
    assert vector == embedding("hello", 16)
    assert vector != embedding("hello!", 16)
    assert len(embedding("x", 1)) == 1


def test_tokens_by_follows_ttft_then_one_token_per_itl() -> None:
    assert tokens_by(0.05, ttft_s=0.1, itl_s=0.01, total=10) == 0
    assert tokens_by(0.1, ttft_s=0.1, itl_s=0.01, total=10) == 1
    assert tokens_by(0.135, ttft_s=0.1, itl_s=0.01, total=10) == 4
    assert tokens_by(5.0, ttft_s=0.1, itl_s=0.01, total=10) == 10
    assert tokens_by(0.2, ttft_s=0.1, itl_s=0.0, total=10) == 10
