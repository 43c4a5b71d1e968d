"""The inference routes served past FastAPI (gateway/api/hot_routes.py) answer what FastAPI's
error handlers would: through real HTTP, with the real `openai` client and a real Redis."""

from __future__ import annotations

from pathlib import Path

import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import MODEL
from tests.integration.tenant_stack import tenant_stack

pytestmark = pytest.mark.asyncio(loop_scope="session")

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


async def test_a_fine_tuned_model_read_while_redis_is_away_is_a_retryable_503(
    tmp_path: Path,
) -> None:
    """Found by review: a fine-tuned model no engine has loaded is looked up in Redis on the
    hot route; with Redis away that was a 500 "failed unexpectedly" (and a traceback logged per
    request) where GET /v1/models/{id} answered 503 store_unavailable."""
    model = f"ft:{MODEL}:hot-redis:sfx:abc123"
    async with tenant_stack(tmp_path) as stack:
        client = await stack.tenant("hot-redis")
        await stack.cache_key(client, "hot-redis")
        with pytest.raises(openai.NotFoundError):  # Redis up: no such model
            await client.chat.completions.create(model=model, messages=HI, max_tokens=1)
        await stack.redis.client_pause(3000)  # Redis takes no command for 3 s
        try:
            for call in (
                lambda: client.chat.completions.create(model=model, messages=HI, max_tokens=1),
                lambda: client.embeddings.create(model=model, input="hi"),
            ):
                with pytest.raises(openai.InternalServerError) as refused:
                    await call()
                assert refused.value.status_code == 503
                body = refused.value.body
                assert isinstance(body, dict)
                assert body["code"] == "store_unavailable", body
                assert refused.value.response.headers["retry-after"] == "1"
        finally:
            await stack.redis.client_unpause()
        with pytest.raises(openai.NotFoundError):  # and back once Redis is
            await client.chat.completions.create(model=model, messages=HI, max_tokens=1)


async def test_a_body_sent_as_a_form_is_refused_as_on_the_other_json_routes(
    tmp_path: Path,
) -> None:
    """Found by review: `curl -d` (a form's content type) was served on the inference routes
    and refused on the fine-tuning ones. Both refuse it alike now; JSON under another content
    type (or none) is still read."""
    async with tenant_stack(tmp_path) as stack:
        key = await stack.key("hot-form")
        chat = orjson.dumps({"model": MODEL, "messages": HI, "max_tokens": 1})
        job = orjson.dumps({"model": MODEL, "training_file": "file-abc"})
        errors = []
        for path, body in (("chat/completions", chat), ("fine_tuning/jobs", job)):
            for kind in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
                headers = {"authorization": f"Bearer {key}", "content-type": kind}
                url = f"{stack.gateway}/v1/{path}"
                async with stack.http.post(url, data=body, headers=headers) as resp:
                    errors.append((resp.status, (await resp.json())["error"]))
        assert {status for status, _ in errors} == {400}, errors
        assert {e["message"] for _, e in errors} == {
            "The request body must be a JSON object sent with 'Content-Type: application/json'."
        }, errors
        for kind in ("application/json; charset=utf-8", "text/plain"):
            headers = {"authorization": f"Bearer {key}", "content-type": kind}
            url = f"{stack.gateway}/v1/chat/completions"
            async with stack.http.post(url, data=chat, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
