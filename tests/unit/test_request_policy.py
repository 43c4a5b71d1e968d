"""Tenant policy on a request body: engine-internal fields, size bounds, cache salts."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from gateway.api.engine_fields import (
    REFUSED,
    REMOVED,
    FieldBounds,
    check_engine_fields,
    grammar_field,
)
from gateway.api.media_ids import media_id
from gateway.api.policy import (
    SALT_KEPT_CHARS,
    SALTS_KEPT,
    TenantPolicy,
    cache_salt,
    salt_key_from,
    session_id,
)
from gateway.api.prompt_logprobs import check_prompt_logprobs
from gateway.auth.principal import Principal
from gateway.errors import InvalidRequest
from gateway.settings import RequestPolicySettings

BOUNDS = FieldBounds(max_schema_bytes=200, max_logit_bias=3, max_stop=2)
KEY = salt_key_from("a-pepper-of-sixteen-chars")
ACME = Principal(tenant="acme", key_id="k1", source="api_key", priority=2)
CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def refusal(body: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        check_engine_fields(body, BOUNDS)
    return info.value


@pytest.mark.parametrize("field", sorted(REFUSED))
def test_engine_internal_fields_are_refused_by_name(field: str) -> None:
    err = refusal({**CHAT, field: {"x": 1}})
    assert err.param == field
    assert err.code == "unsupported_parameter"


@pytest.mark.parametrize("field", sorted(REMOVED))
def test_guided_decoding_fields_the_engine_ignores_are_refused_by_name(field: str) -> None:
    """vLLM 0.32 ignores them (the output would come back unconstrained): the 400 says what
    asks for the same now."""
    err = refusal({**CHAT, field: "[0-9]+"})
    assert (err.param, err.code) == (field, "unsupported_parameter")
    assert "'structured_outputs': {'" in err.message
    check_engine_fields({**CHAT, field: None}, BOUNDS)  # null asks for nothing


def test_every_field_that_steers_engine_internals_is_refused() -> None:
    """vLLM 0.32's chat, completions and responses fields that reach past the request: the
    connectors moving KV and encoder caches between engines, plugins, templates, tensors."""
    steering = {
        "kv_transfer_params",
        "ec_transfer_params",
        "vllm_xargs",
        "request_id",
        "chat_template",
        "logits_processors",
        "prompt_embeds",
        "mm_processor_kwargs",
        "media_io_kwargs",
    }
    assert steering <= set(REFUSED)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("structured_outputs", {"json": {"description": "x" * 200}}),
        ("structured_outputs", {"regex": "a" * 200}),
        ("structured_outputs", {"choice": ["x" * 100, "y" * 100]}),
        ("response_format", {"type": "json_schema", "json_schema": {"d": "x" * 200}}),
        ("logit_bias", {"1": 1, "2": 1, "3": 1, "4": 1}),
        ("stop", ["a", "b", "c"]),
        ("bad_words", ["a", "b", "c"]),
    ],
)
def test_oversized_fields_are_refused_by_name(field: str, value: object) -> None:
    assert refusal({**CHAT, field: value}).param == field


def test_the_responses_text_format_is_bounded() -> None:
    body = {"input": "x", "text": {"format": {"type": "json_schema", "schema": "x" * 200}}}
    assert refusal(body).param == "text.format"


def test_fields_within_bounds_pass() -> None:
    check_engine_fields(
        {
            **CHAT,
            "logit_bias": {"1": 1, "2": 1, "3": 1},
            "stop": "a string is one sequence",
            "structured_outputs": {"choice": ["yes", "no"]},
            "chat_template_kwargs": {"enable_thinking": False},
        },
        BOUNDS,
    )


def test_salts_differ_per_tenant_and_client_salts_stay_within_the_tenant() -> None:
    acme, other = cache_salt(KEY, "acme", None), cache_salt(KEY, "other", None)
    assert acme != other
    assert len(acme) == 64
    assert set(acme) <= set("0123456789abcdef")  # vLLM refuses '@', '/', '\\' and NUL
    # A client choosing its salt cannot land on another tenant's (plain or salted) partition.
    for chosen in ("other", acme, other, "cache_salt:5:other"):
        assert cache_salt(KEY, "acme", chosen) not in {acme, other, cache_salt(KEY, "other", "u")}
    assert cache_salt(KEY, "acme", "user-1") == cache_salt(KEY, "acme", "user-1")
    assert cache_salt(KEY, "acme", "user-1") != cache_salt(KEY, "acme", "user-2")
    # Another pepper, other salts: a salt learnt from one deployment says nothing of another.
    assert cache_salt(salt_key_from("another-pepper-16chars"), "acme", None) != acme


async def test_apply_sets_salt_and_priority_and_re_serialises_once() -> None:
    policy = TenantPolicy(RequestPolicySettings(), KEY)
    body = {**CHAT, "priority": -100, "cache_salt": "mine"}
    raw, out = await policy.apply("chat/completions", orjson.dumps(body), body, ACME)
    assert out["priority"] == 2
    assert out["cache_salt"] == cache_salt(KEY, "acme", "mine")
    assert orjson.loads(raw) == out
    assert body["cache_salt"] == "mine"  # the caller's dict is not changed


@pytest.mark.parametrize("route", ["chat/completions", "completions", "responses"])
async def test_a_session_id_reaches_the_engine_as_the_tenants_own(route: str) -> None:
    """vLLM tags its KV-cache events with a request's `session_id`: a client's id is renamed
    within its tenant, so another tenant cannot send (or be taken for) the same session."""
    policy = TenantPolicy(RequestPolicySettings(), KEY)
    other = Principal(tenant="other", key_id="k2", source="api_key")
    sent = {}
    for caller in (ACME, other):
        body = {**CHAT, "session_id": "chat-42"}
        raw, out = await policy.apply(route, orjson.dumps(body), body, caller)
        assert orjson.loads(raw) == out
        assert body["session_id"] == "chat-42"  # the caller's dict is not changed
        sent[caller.tenant] = out["session_id"]
    assert sent["acme"] == session_id(KEY, "acme", "chat-42")
    assert len({sent["acme"], sent["other"], "chat-42"}) == 3
    assert session_id(KEY, "acme", "chat-43") != sent["acme"]


@pytest.mark.parametrize("value", ["", 5, None])
async def test_a_session_id_that_names_no_session_is_left_to_the_engine(value: object) -> None:
    """vLLM reads an empty one as none and refuses a non-string itself (naming the field)."""
    policy = TenantPolicy(RequestPolicySettings(), KEY)
    body = {**CHAT, "session_id": value}
    _, out = await policy.apply("chat/completions", orjson.dumps(body), body, ACME)
    assert out["session_id"] == value


def test_salts_are_remembered_within_a_bound_and_stay_the_same() -> None:
    policy = TenantPolicy(RequestPolicySettings(), KEY)
    assert policy.salt("acme", None) == cache_salt(KEY, "acme", None)
    assert policy.salt("acme", "mine") == cache_salt(KEY, "acme", "mine")
    assert policy.salts == {
        ("acme", None): cache_salt(KEY, "acme", None),
        ("acme", "mine"): cache_salt(KEY, "acme", "mine"),
    }
    for i in range(SALTS_KEPT + 10):  # clients' own salts, as many as they like
        assert policy.salt("acme", f"user-{i}") == cache_salt(KEY, "acme", f"user-{i}")
        assert len(policy.salts) <= SALTS_KEPT
    assert policy.salt("acme", None) == cache_salt(KEY, "acme", None)  # made again, the same


def test_long_client_salts_are_hashed_each_time_not_kept() -> None:
    """Found by review: 30 requests with 4 MB salts of their own left a gateway 118 MiB larger
    (kept in the memo past their requests; refused 429 ones too). Up to SALTS_KEPT are kept, so
    only short salts may be: a long one is hashed again each time, to the same salt."""
    policy = TenantPolicy(RequestPolicySettings(), KEY)
    long = "x" * (SALT_KEPT_CHARS + 1)
    assert policy.salt("acme", long) == cache_salt(KEY, "acme", long)
    assert policy.salt("acme", long) == cache_salt(KEY, "acme", long)
    short = "x" * SALT_KEPT_CHARS
    assert policy.salt("acme", short) == cache_salt(KEY, "acme", short)
    assert list(policy.salts) == [("acme", short)]


async def test_embeddings_are_salted_like_generation() -> None:
    """vLLM caches the prefixes of a decoder embedding model too: another tenant's embedded
    documents must not be probed by timing, and a client's own salt stays within its tenant."""
    policy = TenantPolicy(RequestPolicySettings(), KEY)
    for client_salt in (None, "shared-by-two-tenants"):
        body: dict[str, Any] = {"model": "m", "input": "hi", "priority": 2}
        if client_salt is not None:
            body["cache_salt"] = client_salt
        _, out = await policy.apply("embeddings", orjson.dumps(body), body, ACME)
        assert out["cache_salt"] == cache_salt(KEY, "acme", client_salt)


async def test_a_non_string_client_salt_is_refused() -> None:
    policy = TenantPolicy(RequestPolicySettings(), KEY)
    for salt in (1, "", ["x"]):
        body = {**CHAT, "cache_salt": salt}
        with pytest.raises(InvalidRequest) as info:
            await policy.apply("completions", orjson.dumps(body), body, ACME)
        assert info.value.param == "cache_salt"


async def test_media_ids_are_renamed_within_the_tenant_even_when_escaped() -> None:
    policy = TenantPolicy(RequestPolicySettings(), KEY)
    part = '{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"},"%s":"cat"}'
    for key in ("uuid", "\\u0075uid"):  # JSON may spell the key with an escape
        raw = ('{"model":"m","messages":[{"role":"user","content":[%s]}]}' % (part % key)).encode()
        _, out = await policy.apply("chat/completions", raw, orjson.loads(raw), ACME)
        assert out["messages"][0]["content"][0]["uuid"] == media_id(KEY, "acme", "cat")


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


async def test_a_body_nested_deeper_than_can_be_rewritten_is_a_400() -> None:
    """orjson reads 1,024 levels of nesting but writes 254: the body the policy rewrites, or a
    schema it measures, nested deeper is the client's error, not the gateway's 500."""
    policy = TenantPolicy(RequestPolicySettings(), KEY)
    for route, body, param in (
        ("chat/completions", {**CHAT, "extra": nested(300)}, None),
        ("embeddings", {"model": "m", "input": "hi", "extra": nested(300)}, None),
        (
            "chat/completions",
            {**CHAT, "structured_outputs": {"json": nested(300)}},
            "structured_outputs",
        ),
    ):
        with pytest.raises(InvalidRequest) as info:
            await policy.apply(route, json.dumps(body).encode(), body, ACME)  # as it came
        assert (info.value.code, info.value.param) == ("invalid_json", param)
    body = {**CHAT, "extra": nested(253)}
    raw, out = await policy.apply("completions", json.dumps(body).encode(), body, ACME)
    assert orjson.loads(raw) == out  # 253 levels inside the body: 254 in all, still written


async def test_tenant_hosts_override_the_default() -> None:
    async def resolve(host: str) -> list[str]:
        return ["93.184.215.14"]

    policy = TenantPolicy(RequestPolicySettings(media_hosts=["Default.example"]), KEY, resolve)
    url = {"type": "image_url", "image_url": {"url": "https://default.example/x.png"}}
    body = {"model": "m", "messages": [{"role": "user", "content": [url]}]}
    await policy.apply("chat/completions", orjson.dumps(body), body, ACME)  # the default list
    own = Principal(tenant="t", key_id="k", source="api_key", media_hosts=frozenset())
    with pytest.raises(InvalidRequest) as info:
        await policy.apply("chat/completions", orjson.dumps(body), body, own)
    assert info.value.param == "messages[0].content[0].image_url.url"


def test_configured_hosts_are_normalised() -> None:
    settings = RequestPolicySettings(media_hosts=[" CDN.Example.com. ", "[2606:4700::1]", ""])
    assert settings.media_hosts == ["cdn.example.com", "2606:4700::1"]
    for private in ("10.0.0.1", "[::1]", "169.254.169.254"):  # always refused: a mistake
        with pytest.raises(ValidationError, match="is not a public address"):
            RequestPolicySettings(media_hosts=[private])
    assert RequestPolicySettings().media_hosts == []  # remote media off by default


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"structured_outputs": {"regex": "[0-9]+", "json": None}}, "structured_outputs.regex"),
        ({"structured_outputs": {"json": {"type": "object"}}}, "structured_outputs.json"),
        ({"structured_outputs": {"choice": ["a", "b"]}}, "structured_outputs.choice"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        ({"response_format": {"type": "text"}}, None),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format"),
        ({"tools": [{"type": "function"}], "tool_choice": "required"}, "tools"),
        ({"tools": [{"type": "function"}], "tool_choice": "auto"}, None),
        ({"messages": []}, None),
    ],
)
def test_the_field_a_grammar_is_compiled_from_is_found(body: Any, field: str | None) -> None:
    assert grammar_field(body) == field


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("completions", {"prompt_logprobs": 0}, "prompt_logprobs"),
        ("completions", {"echo": True, "logprobs": 0}, "echo"),
        ("completions", {"echo": True}, None),  # no logprobs: vLLM computes none
        # vLLM's pydantic reads these as true (found by review: they passed)
        ("completions", {"echo": 1, "logprobs": 1}, "echo"),
        ("completions", {"echo": "yes", "logprobs": 1}, "echo"),
        ("chat/completions", {"echo": "true"}, "echo"),
        ("chat/completions", {"echo": False}, None),
        ("completions", {"echo": False, "logprobs": 3}, None),
        ("chat/completions", {"echo": True}, "echo"),  # top_logprobs 0 by default: computed
        ("chat/completions", {"echo": True, "top_logprobs": None}, None),
        ("chat/completions", {"prompt_logprobs": None, "logprobs": True}, None),
        ("embeddings", {"prompt_logprobs": 1}, "prompt_logprobs"),
    ],
)
def test_what_makes_vllm_compute_prompt_logprobs_is_found(
    route: str, body: dict[str, Any], param: str | None
) -> None:
    if param is None:
        check_prompt_logprobs(route, body)
        return
    with pytest.raises(InvalidRequest) as refused:
        check_prompt_logprobs(route, body)
    assert refused.value.param == param
