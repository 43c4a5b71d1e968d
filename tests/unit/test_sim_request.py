"""gateway/sim/request.py: the simulator reads a request's numbers as vLLM's pydantic does."""

from __future__ import annotations

import pytest

from gateway.sim.config import SimConfig
from gateway.sim.faults import NO_FAULTS
from gateway.sim.request import RequestError, plan_generation

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("given", [20, "20", 20.0, " 20 "])
def test_max_tokens_is_read_as_vllm_reads_it(given: object) -> None:
    """The README says vLLM reads "20" and 20.0 as 20; the simulator refused both."""
    plan = plan_generation("chat", {**CHAT, "max_tokens": given}, "m", NO_FAULTS, SimConfig())
    assert plan.tokens == 20


@pytest.mark.parametrize("given", [20.5, "20.5", "twenty", True, 0, "-3"])
def test_what_is_no_whole_number_above_0_is_refused(given: object) -> None:
    with pytest.raises(RequestError, match=r"max_tokens: expected an integer >= 1"):
        plan_generation("chat", {**CHAT, "max_tokens": given}, "m", NO_FAULTS, SimConfig())
