from __future__ import annotations

from gateway.limits.estimate import prompt_tokens, reserved_tokens


def test_prompt_estimate_reads_message_text_only() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "x" * 40},
            {"role": "system", "content": [{"type": "text", "text": "y" * 8}]},
        ]
    }
    assert prompt_tokens(body) == 48 // 4 + 1
    assert prompt_tokens({"prompt": [1, 2, 3]}) == 3
    assert prompt_tokens({"prompt": "abcd"}) == 2


def test_reservation_is_prompt_plus_max_tokens_times_n() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 100, "n": 2}
    assert reserved_tokens(body, 1024) == 11 + 200
    assert reserved_tokens({"prompt": "abcd", "max_completion_tokens": 7}, 1024) == 2 + 7
    assert reserved_tokens({"prompt": "abcd"}, 50) == 2 + 50
    assert reserved_tokens({"prompt": "abcd", "max_tokens": True}, 50) == 2 + 50
    assert reserved_tokens({"input": "abcd"}, 50) == 2  # embeddings generate nothing


def test_default_completion_is_capped_by_the_context_left() -> None:
    body = {"prompt": "x" * 396}  # 100 tokens estimated
    assert reserved_tokens(body, 1024, context_length=612) == 100 + 512
    assert reserved_tokens(body, 256, context_length=8192) == 100 + 256
    assert reserved_tokens({**body, "max_tokens": 2000}, 256, context_length=612) == 2100
