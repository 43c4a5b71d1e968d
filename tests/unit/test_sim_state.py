from __future__ import annotations

from typing import Any

import pytest

from gateway.sim.config import SimConfig
from gateway.sim.faults import NO_FAULTS, Faults
from gateway.sim.request import RequestError, admit, plan_generation
from gateway.sim.state import SimState

CONFIG = SimConfig(models=["m"], max_tokens=16, max_model_len=64)
CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def state() -> SimState:
    return SimState(model_name='m"x', kv_cache_tokens=100, fail_rate=0.5)


def fail_midway(sim: SimState) -> None:
    with sim.generation() as generation:
        generation.prefilled(10)
        generation.generated(5)
        assert (sim.running, sim.kv_tokens) == (1, 15)
        raise RuntimeError


def test_running_is_released_whatever_ends_the_generation() -> None:
    sim = state()
    with pytest.raises(RuntimeError):
        fail_midway(sim)
    assert (sim.running, sim.kv_tokens, sim.max_running_seen) == (0, 0, 1)
    assert (sim.prompt_tokens_total, sim.generation_tokens_total) == (10, 5)


def test_metrics_use_vllm_names_and_an_escaped_model_label() -> None:
    sim = state()
    with sim.generation() as generation:
        generation.prefilled(30)
        text = sim.metrics_text()
    labels = '{engine="0",model_name="m\\"x"}'
    assert f"vllm:num_requests_running{labels} 1.0\n" in text
    assert f"vllm:num_requests_waiting{labels} 0.0\n" in text
    assert f"vllm:kv_cache_usage_perc{labels} 0.3\n" in text
    assert f"vllm:prompt_tokens_total{labels} 30.0\n" in text
    assert f"vllm:generation_tokens_total{labels} 0.0\n" in text
    assert "# TYPE vllm:prompt_tokens_total counter\n" in text


def test_reset_zeroes_counters_but_keeps_live_requests() -> None:
    sim = state()
    sim.record({"x-request-id": "r1"}, {"a": 1}, b'{"a": 1}')
    assert [sim.next_fails(), sim.next_fails()] == [False, True]
    with sim.generation() as generation:
        generation.generated(3)
        sim.reset()
        assert sim.snapshot()["running"] == 1
        assert sim.snapshot()["max_running_seen"] == 1
    snapshot = sim.snapshot()
    assert snapshot["total_requests"] == snapshot["generation_tokens_total"] == 0
    assert snapshot["last_request"] is None
    assert sim.next_fails() is False  # the failure sequence restarts too


def test_max_tokens_gives_exactly_that_many_and_length() -> None:
    plan = plan_generation("chat", {**CHAT, "max_tokens": 5}, "m", NO_FAULTS, CONFIG)
    assert (plan.tokens, plan.finish_reason) == (5, "length")
    plan = plan_generation("chat", {**CHAT, "max_completion_tokens": 7}, "m", NO_FAULTS, CONFIG)
    assert (plan.tokens, plan.finish_reason) == (7, "length")


def test_no_max_tokens_gives_the_default_and_stop() -> None:
    plan = plan_generation("chat", CHAT, "m", NO_FAULTS, CONFIG)
    assert (plan.tokens, plan.finish_reason) == (16, "stop")


def test_the_context_window_caps_max_tokens_and_refuses_a_prompt_over_it() -> None:
    """As vLLM 0.32 (get_max_tokens, TokenizeParams): a max_tokens past the room left is
    clamped to it, one past the whole context refused, and so is a prompt over the context,
    with vLLM's `param` input_tokens (the sim refused the first with a message of its own)."""
    long = {"model": "m", "prompt": " ".join(["w"] * 55)}  # 56 prompt tokens, 8 left
    plan = plan_generation("completion", long, "m", NO_FAULTS, CONFIG)
    assert (plan.tokens, plan.finish_reason) == (8, "length")
    plan = plan_generation("completion", {**long, "max_tokens": 9}, "m", NO_FAULTS, CONFIG)
    assert (plan.tokens, plan.finish_reason) == (8, "length")
    with pytest.raises(RequestError, match="cannot be greater than max_model_len") as info:
        plan_generation("completion", {**long, "max_tokens": 65}, "m", NO_FAULTS, CONFIG)
    assert (info.value.status, info.value.param) == (400, "max_tokens")
    longer = {"model": "m", "prompt": " ".join(["w"] * 70)}
    with pytest.raises(RequestError, match="maximum context length is 64 tokens") as info:
        plan_generation("completion", longer, "m", NO_FAULTS, CONFIG)
    assert (info.value.status, info.value.param) == (400, "input_tokens")


def test_completion_choices_are_numbered_prompt_major() -> None:
    body = {"model": "m", "prompt": ["a", "b c"], "n": 2, "max_tokens": 3}
    plan = plan_generation("completion", body, "m", NO_FAULTS, CONFIG)
    assert plan.choices == 4
    assert [plan.choice_prompt_tokens(i) for i in range(4)] == [2, 2, 3, 3]
    assert len(plan.choice_tokens()) == 4


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({**CHAT, "model": "nope"}, 404, "model"),
        ({**CHAT, "sim": {"nope": 1}}, 400, "sim"),
        ({**CHAT, "sim": {"fail_status": 429}}, 429, None),
    ],
)
def test_admission_errors(body: dict[str, Any], status: int, param: str | None) -> None:
    with pytest.raises(RequestError) as info:
        admit(body, CONFIG)
    assert (info.value.status, info.value.param) == (status, param)


def test_a_request_without_model_gets_the_default_model() -> None:
    assert admit({"messages": []}, CONFIG) == ("m", Faults())


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 0},
        {"max_tokens": 0},
        {"max_tokens": "5.5"},  # ("5" is 5, as vLLM reads it)
        {"stream": "yes"},
        {"stream": True, "stream_options": 1},
        {"stream_options": {"include_usage": True}},  # only with stream=True, as vLLM says
    ],
)
def test_malformed_fields_are_a_400(extra: dict[str, Any]) -> None:
    with pytest.raises(RequestError) as info:
        plan_generation("chat", {**CHAT, **extra}, "m", NO_FAULTS, CONFIG)
    assert info.value.status == 400


def test_continuous_usage_needs_include_usage() -> None:
    options = {"stream": True, "stream_options": {"continuous_usage_stats": True}}
    plan = plan_generation("chat", {**CHAT, **options}, "m", NO_FAULTS, CONFIG)
    assert (plan.include_usage, plan.continuous_usage) == (False, False)
