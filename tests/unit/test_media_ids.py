"""Content parts' media ids (`uuid`) renamed within their tenant."""

from __future__ import annotations

from functools import partial
from typing import Any

from gateway.api.media_ids import media_id, tenant_media_ids
from gateway.api.policy import salt_key_from

KEY = salt_key_from("a-pepper-of-sixteen-chars")
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def chat(client_id: object) -> list[Any]:
    return [{"role": "user", "content": ["hi", {"type": "text"}, {**IMAGE, "uuid": client_id}]}]


def test_ids_are_the_tenants_own_and_stable() -> None:
    acme = tenant_media_ids(chat("cat"), partial(media_id, KEY, "acme"))
    again = tenant_media_ids(chat("cat"), partial(media_id, KEY, "acme"))
    other = tenant_media_ids(chat("cat"), partial(media_id, KEY, "other"))
    assert acme is not None
    assert again is not None
    assert other is not None
    acme_id, other_id = acme[0]["content"][2]["uuid"], other[0]["content"][2]["uuid"]
    assert acme_id == media_id(KEY, "acme", "cat") == again[0]["content"][2]["uuid"]
    assert len({acme_id, other_id, "cat"}) == 3
    # Another tenant's renamed id, sent as a client's own, lands somewhere new again.
    assert media_id(KEY, "acme", other_id) not in {acme_id, other_id}


def test_the_callers_items_are_not_changed() -> None:
    messages = chat("cat")
    renamed = tenant_media_ids(messages, partial(media_id, KEY, "acme"))
    assert renamed is not None
    assert renamed is not messages
    assert messages == chat("cat")
    assert renamed[0]["content"][:2] == messages[0]["content"][:2]


def test_responses_input_items_and_their_parts() -> None:
    items: list[Any] = [
        "plain text",
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "uuid": "a"},
        {"role": "user", "content": [{"type": "input_image", "uuid": "b"}]},
        {"type": "function_call_output", "output": [{"type": "input_image", "uuid": "c"}]},
    ]
    renamed = tenant_media_ids(items, partial(media_id, KEY, "acme"))
    assert renamed is not None
    assert renamed[0] == "plain text"
    assert renamed[1]["uuid"] == media_id(KEY, "acme", "a")
    assert renamed[2]["content"][0]["uuid"] == media_id(KEY, "acme", "b")
    assert renamed[3]["output"][0]["uuid"] == media_id(KEY, "acme", "c")


def test_nothing_to_rename() -> None:
    rename = partial(media_id, KEY, "acme")
    assert tenant_media_ids("a prompt", rename) is None
    assert tenant_media_ids([1, 2, 3], rename) is None
    assert tenant_media_ids([{"role": "user", "content": [IMAGE]}], rename) is None
    assert tenant_media_ids(chat(None), rename) is None
    assert tenant_media_ids(chat(7), rename) is None  # not a string: vLLM's to refuse
