"""What a request is reserved against a tpm limit (limits/estimate.py), through the gateway and
the simulator (2,048 tokens of context; a text prompt is its words and a BOS)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.integration.conftest import MODEL, AuthStack

pytestmark = pytest.mark.asyncio(loop_scope="session")

WORDS = "hello " * 3000  # 3,001 tokens to the simulator, estimated 4,503 (characters / 4)


async def test_a_truncated_prompt_is_reserved_what_the_engine_keeps(auth: AuthStack) -> None:
    """Found by review: vLLM's truncate_prompt_tokens k keeps a prompt's last k tokens, but the
    whole text was reserved: a 429 "Request too large" (never retried) for a completion the
    engine served with 15 tokens, on a tpm of 3,000; likewise on chat and embeddings."""
    key = await auth.new_key(tpm=3000)
    five: dict[str, Any] = {"truncate_prompt_tokens": 5}
    async with auth.client(key) as oai:
        completion = await oai.completions.create(
            model=MODEL, prompt=WORDS, max_tokens=10, extra_body=five
        )
        chat = await oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": WORDS}],
            max_tokens=10,
            extra_body=five,
        )
        embedding = await oai.embeddings.create(
            model=MODEL, input=[WORDS, WORDS], extra_body={"truncate_prompt_tokens": 256}
        )
    assert completion.usage is not None
    assert completion.usage.total_tokens == 15
    assert chat.usage is not None
    assert chat.usage.total_tokens == 15
    assert embedding.usage.prompt_tokens == 2 * 256


async def test_a_prompt_over_the_context_is_the_engines_400_not_too_large(
    auth: AuthStack,
) -> None:
    """Found by review: an embeddings input longer than the model's context was reserved
    whole, a 429 "Request too large" where vLLM answers 400 (the prompt's field named), as a
    max_tokens past the context already was; a completion's prompt likewise."""
    key = await auth.new_key(tpm=3000)
    async with auth.client(key) as oai:
        with pytest.raises(openai.BadRequestError) as embedding:
            await oai.embeddings.create(model=MODEL, input=WORDS)
        with pytest.raises(openai.BadRequestError) as completion:
            await oai.completions.create(model=MODEL, prompt=WORDS, max_tokens=10)
    assert embedding.value.param == "input"
    assert completion.value.param == "prompt"


async def test_inputs_are_reserved_the_special_tokens_a_tokenizer_adds(auth: AuthStack) -> None:
    """Found by review: 2,048 one-letter inputs were reserved 2,048 tokens and admitted on a
    tpm of 3,000; the engine counted 6,144 (a BERT embedder's [CLS] and [SEP] around each; the
    simulator's BOS, 4,096). A request that alone exceeds the limit is refused at once."""
    key = await auth.new_key(tpm=3000)
    async with auth.client(key) as oai:
        with pytest.raises(openai.RateLimitError) as info:
            await oai.embeddings.create(model=MODEL, input=["a"] * 2048)
    assert "Request too large" in info.value.message
    assert info.value.response.headers["x-should-retry"] == "false"


async def test_a_refusal_as_too_large_names_the_field_the_client_sent(auth: AuthStack) -> None:
    """Found by review: "Lower max_tokens or the prompt." to a chat that sent only
    max_completion_tokens, a completion that sent only min_tokens, and on embeddings, which
    have no such field."""
    key = await auth.new_key(tpm=1500)
    async with auth.client(key) as oai:
        with pytest.raises(openai.RateLimitError) as chat:
            await oai.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_completion_tokens=800,
                n=2,
            )
        with pytest.raises(openai.RateLimitError) as completion:
            await oai.completions.create(model=MODEL, prompt="hi", extra_body={"min_tokens": 1600})
        with pytest.raises(openai.RateLimitError) as embedding:
            await oai.embeddings.create(model=MODEL, input=["hello " * 1000] * 2)
    assert "Lower max_completion_tokens or the prompt." in chat.value.message
    assert "Lower min_tokens or the prompt." in completion.value.message
    assert "Send fewer or shorter inputs." in embedding.value.message
    assert "max_tokens" not in embedding.value.message
