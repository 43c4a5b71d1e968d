from __future__ import annotations

from gateway.limits.estimate import (
    output_field_of,
    positive_int,
    prompt_tokens,
    reserved_tokens,
    response_tokens,
)


def test_a_short_chat_is_reserved_at_least_what_the_template_makes_of_it() -> None:
    """SmolLM2's template made 8 prompt tokens of "hello there" (vLLM's usage, 2026-12-03)."""
    assert prompt_tokens({"messages": [{"role": "user", "content": "hello there"}]}) >= 8


def test_prompt_estimate_reads_message_text_only() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "x" * 40},
            {"role": "system", "content": [{"type": "text", "text": "y" * 8}]},
        ]
    }
    assert prompt_tokens(body) == 48 // 4 + 1 + 2 * 4 + 3  # + the template's, per message
    assert prompt_tokens({"prompt": [1, 2, 3]}) == 3  # token ids as they are
    assert prompt_tokens({"prompt": "abcd"}) == 2 + 2  # + a tokenizer's special tokens


def test_reservation_is_prompt_plus_max_tokens_times_n() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 100, "n": 2}
    assert reserved_tokens(body, 1024) == 11 + 4 + 3 + 200
    chat = {"messages": body["messages"], "max_completion_tokens": 7, "max_tokens": 70}
    assert reserved_tokens(chat, 1024) == 11 + 4 + 3 + 7  # chat's own name wins, as in vLLM
    text = {"prompt": "abcd", "max_completion_tokens": 7, "max_tokens": 70}
    assert reserved_tokens(text, 1024) == 4 + 70  # vLLM's completions ignore it (made 50 of 5)
    assert reserved_tokens({"prompt": "abcd"}, 50) == 4 + 50
    assert reserved_tokens({"prompt": "abcd", "max_tokens": True}, 50) == 4 + 50
    assert reserved_tokens({"input": "abcd"}, 50) == 4  # embeddings generate nothing


def test_numbers_are_read_as_the_engine_reads_them() -> None:
    # vLLM's pydantic models take 3.0 and "3" as 3: a float n was reserved one choice (a tpm
    # overrun), a float max_tokens the whole default (a refusal far below the limit).
    chat = {"messages": [{"role": "user", "content": "x" * 40}]}
    exact = reserved_tokens({**chat, "max_tokens": 9, "n": 20}, 1024)
    for n, max_tokens in ((20.0, 9.0), ("20", "9"), (" 20 ", "9.0")):
        assert reserved_tokens({**chat, "max_tokens": max_tokens, "n": n}, 1024) == exact
    responses = {"input": "hi", "max_output_tokens": 5}
    assert response_tokens({**responses, "max_output_tokens": 5.0}, 1024) == response_tokens(
        responses, 1024
    )
    assert positive_int(2.5) is None
    assert positive_int("many") is None
    assert positive_int(False) is None
    assert positive_int(-3.0) is None


def test_default_completion_is_capped_by_the_context_left() -> None:
    body = {"prompt": "x" * 388}  # 100 tokens estimated (98 and the special tokens)
    assert reserved_tokens(body, 1024, context_length=612) == 100 + 512
    assert reserved_tokens(body, 256, context_length=8192) == 100 + 256
    # A max_tokens past what the context leaves: the engine's 400, not a reservation of 2,100
    assert reserved_tokens({**body, "max_tokens": 2000}, 256, context_length=612) == 100 + 512
    assert reserved_tokens({**body, "max_tokens": 2000}, 256) == 2100  # context unknown
    assert reserved_tokens({**body, "max_tokens": 300}, 256, context_length=612) == 400


def test_what_keeps_the_engine_generating_without_max_tokens_is_reserved() -> None:
    """Without max_tokens vLLM generates to the context's end unless the model stops: with
    ignore_eos it never does, and min_tokens holds it that long (both were reserved the
    default, 1024, until 2026-12-05: a request that ran to 8,000 tokens was admitted on a
    tpm limit with room for 1,124)."""
    body = {"prompt": "x" * 388}  # 100 tokens estimated (98 and the special tokens)
    for yes in (True, "true", 1, "yes"):
        ignoring = {**body, "ignore_eos": yes}
        assert reserved_tokens(ignoring, 1024, context_length=8192) == 8192
        assert reserved_tokens({**ignoring, "n": 2}, 1024, context_length=8192) == 100 + 2 * 8092
    for no in (False, "false", 0, None, "maybe"):
        assert reserved_tokens({**body, "ignore_eos": no}, 1024, context_length=8192) == 1124
    ignoring = {**body, "ignore_eos": True, "max_tokens": 50}
    assert reserved_tokens(ignoring, 1024, context_length=8192) == 150  # max_tokens bounds it
    assert reserved_tokens({**body, "min_tokens": 3000}, 1024, context_length=8192) == 3100
    assert reserved_tokens({**body, "min_tokens": 3000}, 1024, context_length=612) == 612
    assert reserved_tokens({**body, "min_tokens": 3000}, 1024) == 3100  # context unknown
    assert reserved_tokens({**body, "min_tokens": 10}, 1024, context_length=8192) == 1124
    chat = {"messages": [{"role": "user", "content": "x" * 40}], "ignore_eos": True}
    assert reserved_tokens(chat, 1024, context_length=8192) == 8192


TOKEN_BATCH = [list(range(20)) for _ in range(200)]  # 200 prompts of 20 token ids


def test_every_prompt_of_a_batch_counts() -> None:
    assert prompt_tokens({"prompt": TOKEN_BATCH}) == 4000
    assert prompt_tokens({"prompt": ["x" * 40, "y" * 8, ""]}) == 11 + 3 + 1 + 3 * 2
    assert prompt_tokens({"prompt": [[1, 2], [3]]}) == 3
    assert prompt_tokens({"input": ["x" * 40] * 100}) == 1100 + 100 * 2
    assert prompt_tokens({"input": [[7] * 5] * 10}) == 50


def test_chat_counts_text_parts_of_every_message() -> None:
    parts = [{"type": "text", "text": "y" * 8}, {"type": "image_url", "image_url": {"url": "u"}}]
    body = {"messages": [{"role": "user", "content": "x" * 40}, {"role": "user", "content": parts}]}
    assert prompt_tokens(body) == 48 // 4 + 1 + 2 * 4 + 3
    assert prompt_tokens({"messages": [{"role": "assistant", "content": None}]}) == 1 + 4 + 3


def test_a_batch_reserves_a_completion_per_prompt_and_choice() -> None:
    assert reserved_tokens({"prompt": TOKEN_BATCH, "max_tokens": 1}, 1024) == 4000 + 200
    body = {"prompt": ["a", "b", "c"], "max_tokens": 10, "n": 2}
    assert reserved_tokens(body, 1024) == 3 * 3 + 10 * 3 * 2
    assert reserved_tokens({"prompt": ["a", "b"]}, 50) == 2 * 3 + 50 * 2
    single = {"prompt": list(range(20)), "max_tokens": 1}  # a flat id list is one prompt
    assert reserved_tokens(single, 1024) == 20 + 1


def test_the_default_completion_is_capped_per_prompt() -> None:
    body = {"prompt": ["x" * 392, "y" * 4]}  # 100 and 4 tokens estimated
    assert reserved_tokens(body, 1024, context_length=612) == 104 + 512 + 608


def test_embedding_batches_reserve_their_inputs_only() -> None:
    assert reserved_tokens({"input": TOKEN_BATCH, "n": 3}, 1024) == 4000
    assert reserved_tokens({"input": ["abcd"] * 3}, 1024) == 3 * 4


def test_a_responses_request_reserves_its_input_and_max_output_tokens() -> None:
    template = 4 + 3  # one turn, and the reply's
    assert response_tokens({"input": "x" * 40, "max_output_tokens": 30}, 1024) == 11 + template + 30
    items = [
        {"role": "user", "content": "x" * 20},
        {"role": "user", "content": [{"type": "input_text", "text": "y" * 16}]},
        {"type": "function_call_output", "call_id": "c", "output": "z" * 4},
    ]
    body = {"input": items, "instructions": "w" * 8, "max_output_tokens": 5}
    turns = 3 + 1  # the items and the instructions
    assert response_tokens(body, 1024) == (20 + 16 + 4 + 8) // 4 + 1 + 4 * turns + 3 + 5


def test_a_responses_request_without_max_output_tokens_reserves_the_capped_default() -> None:
    body = {"input": "x" * 396}  # 100 tokens of text, 107 with the template's
    assert response_tokens(body, 1024, context_length=612) == 107 + 505
    assert response_tokens(body, 256) == 107 + 256


def test_a_prompt_is_counted_no_further_than_the_engine_reads_it() -> None:
    """Found by review: vLLM keeps the last k tokens of a prompt with truncate_prompt_tokens k
    (-1: the context's worth), and refuses one over the context; the estimate counted the whole
    text (4,511 tokens for 3,000 words truncated to 5), a 429 "Request too large" for what the
    engine served with 15 tokens, or refused with a 400."""
    words = {"prompt": "hello " * 3000, "max_tokens": 10}
    assert reserved_tokens(words, 1024) == 4503 + 10
    for five in (5, 5.0, "5"):
        assert reserved_tokens({**words, "truncate_prompt_tokens": five}, 1024) == 5 + 10
    batch = {"input": ["x" * 25_000] * 3, "truncate_prompt_tokens": 256}
    assert prompt_tokens(batch) == 3 * 256
    assert prompt_tokens({**batch, "truncate_prompt_tokens": -1}, 2048) == 3 * 2048
    assert prompt_tokens({**batch, "truncate_prompt_tokens": -1}) == 3 * 6253  # context unknown
    assert prompt_tokens({"input": "x" * 25_000}, 2048) == 2048  # over it: the engine's 400
    chat = {"messages": [{"role": "user", "content": "x" * 40}], "truncate_prompt_tokens": 3}
    assert prompt_tokens(chat) == 3
    for not_one in (0, -2, True, "many"):  # the engine refuses these or keeps nothing
        assert prompt_tokens({**batch, "truncate_prompt_tokens": not_one}) == 3 * 6253
    long = {"input": "x" * 40_000, "max_output_tokens": 10}
    assert response_tokens(long, 1024, context_length=2048) == 2048 + 10


def test_a_text_prompt_counts_what_the_tokenizer_adds() -> None:
    """Found by review: 2,048 inputs of "a" were estimated 2,048 tokens and admitted on a tpm
    of 3,000; a BERT embedder counted 6,144 ([CLS] and [SEP] around each)."""
    assert prompt_tokens({"input": ["a"] * 2048}) == 3 * 2048
    assert prompt_tokens({"input": [[7]] * 2048}) == 2048  # token ids get none


def test_a_refusal_as_too_large_names_the_field_the_client_sent() -> None:
    """Found by review: it said "Lower max_tokens" to a client that sent only
    max_completion_tokens, or only min_tokens."""
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert output_field_of({**chat, "max_completion_tokens": 9, "n": 5}, 1024) == (
        "max_completion_tokens"
    )
    assert output_field_of({**chat, "max_tokens": 9}, 1024) == "max_tokens"
    assert output_field_of({"prompt": "hi", "max_completion_tokens": 9}, 1024) == "max_tokens"
    assert output_field_of({"prompt": "hi", "min_tokens": 3500}, 1024) == "min_tokens"
    assert output_field_of({"prompt": "hi", "min_tokens": 10}, 1024) == "max_tokens"  # the default
    ignoring = {"prompt": "hi", "min_tokens": 3500, "ignore_eos": True}  # the context's end
    assert output_field_of(ignoring, 1024) == "max_tokens"
