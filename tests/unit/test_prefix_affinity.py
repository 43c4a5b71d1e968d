from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.routing.balancer import (
    BLOCK_BYTES,
    MAX_BLOCKS,
    LeastLoaded,
    PrefixAffinity,
    affinity_key,
    block_hashes,
    home,
)
from gateway.routing.engines import Engine, EngineLoad, ModelPool

SYSTEM = "You answer questions about the fleet. " * 40  # ~1.5 KiB: six whole blocks


def pool(n: int = 2) -> ModelPool:
    return ModelPool("m", [Engine(f"http://e{i}") for i in range(n)])


def urls(engines: list[Engine]) -> list[str]:
    return [e.url for e in engines]


def chat(*turns: str, system: str = SYSTEM) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}]
    messages += [{"role": "user", "content": t} for t in turns]
    return {"model": "m", "messages": messages}


def scraped(
    running: float = 0.0, waiting: float = 0.0, kv: float = 0.0, own: int = 0
) -> EngineLoad:
    """A fresh scrape; `own`: this replica's requests in flight there when it answered."""
    return EngineLoad(
        running=running,
        waiting=waiting,
        kv_usage=kv,
        scraped_at=time.monotonic(),
        own_at_scrape=own,
    )


def test_a_conversations_next_turn_extends_its_key() -> None:
    first = affinity_key("chat/completions", chat("hello"))
    second = affinity_key("chat/completions", chat("hello", "and now?"))
    assert first.startswith(b"system\x1f" + SYSTEM.encode())
    assert second.startswith(first)
    as_user = {"model": "m", "messages": [{"role": "user", "content": SYSTEM}]}
    assert not affinity_key("chat/completions", as_user).startswith(first[:20])  # roles count


def test_content_parts_tool_calls_and_cache_salt_are_part_of_the_key() -> None:
    parts = {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "x", "y": 1}]}
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}
    key = affinity_key("chat/completions", {"messages": [parts, call]})
    assert key == b'user\x1fa\x1f{"type": "x", "y": 1}\x1eassistant\x1f[{"id": "c1"}]\x1e'
    salted = affinity_key("chat/completions", {**chat("hi"), "cache_salt": "t1"})
    assert salted == b"t1\x1d" + affinity_key("chat/completions", chat("hi"))


def test_completions_keys_from_text_token_ids_and_first_of_a_batch() -> None:
    assert affinity_key("completions", {"prompt": "once upon"}) == b"once upon"
    ids = affinity_key("completions", {"prompt": [1, 2, 70000]})
    assert len(ids) == 12
    assert ids.startswith(affinity_key("completions", {"prompt": [1, 2]}))
    assert affinity_key("completions", {"prompt": ["first", "second"]}) == b"first"
    assert affinity_key("completions", {"prompt": [[5, 6], [7]]}) == affinity_key(
        "completions", {"prompt": [5, 6]}
    )


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("embeddings", {"input": SYSTEM}),
        ("completions", {"prompt": [-1, 2]}),
        ("completions", {"prompt": [1.5]}),
        ("completions", {"prompt": []}),
        ("completions", {"prompt": None}),
        ("chat/completions", {"messages": "not a list"}),
        ("chat/completions", {}),
    ],
)
def test_no_key_without_a_usable_prompt(route: str, body: dict[str, Any]) -> None:
    assert affinity_key(route, body) == b""


def test_block_hashes_name_whole_prefixes() -> None:
    key = bytes(range(256)) * 3 + b"tail"
    hashes = block_hashes(key)
    assert len(hashes) == 3  # the partial last block has none
    assert len(set(hashes)) == 3  # equal blocks at different places: different prefixes
    assert block_hashes(key[: 2 * BLOCK_BYTES]) == hashes[:2]
    changed_first = b"X" + key[1:]
    assert not set(block_hashes(changed_first)) & set(hashes)
    assert block_hashes(b"short") == []
    assert len(block_hashes(b"x" * BLOCK_BYTES * (MAX_BLOCKS + 5))) == MAX_BLOCKS


def test_remembered_blocks_are_bounded_oldest_first() -> None:
    balancer = PrefixAffinity(blocks_per_engine=10)
    e0, e1 = Engine("http://e0"), Engine("http://e1")
    old, new = block_hashes(b"a" * 256 * 6), block_hashes(b"b" * 256 * 6)
    balancer.remember(e0, old)
    balancer.remember(e0, new)
    assert balancer.matched(e0, new) == 6
    assert balancer.matched(e0, old) == 4  # a chain is evicted from its end
    balancer.remember(e0, old)
    assert (balancer.matched(e0, old), balancer.matched(e0, new)) == (6, 4)
    balancer.remember(e0, block_hashes(b"c" * 256 * 10))
    assert balancer.matched(e0, new) == 0
    assert balancer.matched(e1, new) == 0


def test_a_prefix_sticks_to_the_engine_it_was_sent_to() -> None:
    p, balancer = pool(3), PrefixAffinity()
    p.engines[2].inflight = 1  # another conversation runs there
    key = affinity_key("chat/completions", chat("q1"))
    first = balancer.candidates(p, key)[0]
    for turns in (("q1", "q2"), ("q1", "q2", "q3")):  # turns follow one another
        assert balancer.candidates(p, affinity_key("chat/completions", chat(*turns)))[0] is first
    first.inflight = 1
    other = affinity_key("chat/completions", chat("q1", system="Another system prompt. " * 60))
    assert balancer.candidates(p, other)[0] not in (first, p.engines[2])  # least loaded


def test_the_load_bound_leaves_one_request_of_slack() -> None:
    p, balancer = pool(), PrefixAffinity(load_bound=1.25)
    home, other = p.engines
    key = affinity_key("chat/completions", chat("q"))
    balancer.remember(home, block_hashes(key))
    home.inflight = 1
    assert balancer.candidates(p, key)[0] is home
    home.inflight = 3  # 4 with this one, the other idle: ⌈1.25 x 4 / 2⌉ + 1 = 4
    assert balancer.candidates(p, key)[0] is home  # not a cold prefill for a queue of one
    assert balancer.matched(other, block_hashes(key)) == 0
    assert balancer.load_cap(3, 2) == 4
    assert balancer.load_cap(39, 2) == 26  # a mean of 20 with this request: 1.3x
    assert PrefixAffinity(load_bound=2.0).load_cap(3, 2) == 5


def test_an_engine_past_the_load_bound_is_skipped_while_another_has_room() -> None:
    p, balancer = pool(3), PrefixAffinity(load_bound=1.25)
    home, other, third = p.engines
    key = affinity_key("chat/completions", chat("q"))
    balancer.remember(home, block_hashes(key))
    home.inflight = 2  # 3 with this one: ⌈1.25 x 3 / 3⌉ + 1 = 3
    assert balancer.candidates(p, key)[0] is home
    home.inflight = 3  # 4 > ⌈1.25 x 4 / 3⌉ + 1 = 3, though its match outweighs its queue
    moved = balancer.candidates(p, key)
    assert moved[0] is not home
    assert moved[-1] is home
    assert balancer.matched(moved[0], block_hashes(key)) == len(block_hashes(key))
    key = affinity_key("chat/completions", chat("q", system="Another system prompt. " * 60))
    balancer.remember(home, block_hashes(key))
    home.inflight, home.load = 0, scraped(running=2, waiting=1)  # the engine's own queue
    assert balancer.candidates(p, key)[0] is not home
    key = affinity_key("chat/completions", chat("q", system="A third system prompt. " * 60))
    balancer.remember(home, block_hashes(key))
    other.load = third.load = scraped(running=3)  # all busy: home is within the bound again
    assert balancer.candidates(p, key)[0] is home


def test_kv_usage_and_load_break_equal_matches() -> None:
    p, balancer = pool(), PrefixAffinity()
    a, b = p.engines
    key = affinity_key("chat/completions", chat("q"))
    for engine in p.engines:
        balancer.remember(engine, block_hashes(key))
    a.load, b.load = scraped(kv=0.9), scraped(kv=0.1)
    assert balancer.candidates(p, key)[0] is b
    b.inflight = 1
    assert balancer.candidates(p, key)[0] is a


def test_a_stale_scrape_is_not_believed() -> None:
    p = pool()
    a, b = p.engines
    a.load = EngineLoad(running=9, scraped_at=time.monotonic() - 60)
    b.inflight = 1
    assert urls(LeastLoaded().candidates(p)) == [a.url, b.url]


def test_least_loaded_counts_own_requests_now_and_other_replicas_at_the_scrape() -> None:
    p = pool(3)
    e0, e1, e2 = p.engines
    e0.load = scraped(running=2, waiting=2)  # other replicas' requests: 4
    e1.inflight, e1.load = 3, scraped(running=1, own=1)  # a burst the last scrape did not see: 3
    e2.inflight, e2.load = 2, scraped(running=2, own=2)  # the same requests, not twice: 2
    assert urls(LeastLoaded().candidates(p)) == [e2.url, e1.url, e0.url]
    e2.load = scraped(running=5, own=5)  # three of ours finished since the scrape: still 2
    assert urls(LeastLoaded().candidates(p)) == [e2.url, e1.url, e0.url]


def test_least_loaded_ties_rotate_and_down_engines_go_last() -> None:
    p, balancer = pool(3), LeastLoaded()
    assert [balancer.candidates(p)[0].url for _ in range(3)] == urls(p.engines)
    p.engines[0].mark_down()
    for _ in range(3):
        assert balancer.candidates(p)[-1] is p.engines[0]


def test_prefix_affinity_leaves_a_down_engine_for_last() -> None:
    p, balancer = pool(), PrefixAffinity()
    home, other = p.engines
    key = affinity_key("chat/completions", chat("q"))
    balancer.remember(home, block_hashes(key))
    home.mark_down()
    assert urls(balancer.candidates(p, key)) == [other.url, home.url]
    assert balancer.matched(other, block_hashes(key)) == len(block_hashes(key))


def test_without_a_key_prefix_affinity_is_least_loaded() -> None:
    p, balancer = pool(), PrefixAffinity()
    p.engines[0].inflight = 2
    assert urls(balancer.candidates(p)) == [p.engines[1].url, p.engines[0].url]
    assert balancer.candidates(ModelPool("one", p.engines[:1]), b"x" * 1024) == p.engines[:1]


def test_what_was_sent_to_an_engine_goes_with_it() -> None:
    """The blocks sent to each engine were kept by URL in the balancer, never forgotten: every
    engine that ever left DNS (a pod replaced: a new address) kept up to 50,000 hashes. They
    are the engine's own now, dropped with it."""
    p, balancer = pool(2), PrefixAffinity()
    key = affinity_key("chat/completions", chat("q"))
    chosen = balancer.candidates(p, key)[0]
    assert balancer.matched(chosen, block_hashes(key)) == len(block_hashes(key))
    assert vars(balancer).keys() == {"load_bound", "blocks_per_engine", "_least_loaded"}


def test_processes_that_share_no_memory_agree_on_a_new_prompts_engine() -> None:
    """Each worker and replica remembers only what it sent. A conversation whose turns reach
    different processes (a new connection each turn) went to each one's least loaded engine in
    rotation, a cold prefill at every switch (4 of 10 conversations moved between engines with
    `--workers 2`); a prompt no engine was sent now goes to the home its first block hashes to,
    the same in every process."""
    a, b = PrefixAffinity(), PrefixAffinity()
    pools = (pool(3), pool(3))  # the same engines, as each process knows them
    b.candidates(pools[1])  # b answered a request without a prompt: its rotation moved on
    homes = set()
    for n in range(8):
        system = f"Conversation {n} has its own system prompt. " * 20
        turns = [f"question {i}" for i in range(4)]
        chosen = set()
        for i in range(4):  # turns alternate between the two processes
            key = affinity_key("chat/completions", chat(*turns[: i + 1], system=system))
            chosen.add((a, b)[i % 2].candidates(pools[i % 2], key)[0].url)
        assert len(chosen) == 1, (n, chosen)
        homes |= chosen
    assert len(homes) > 1  # prompts spread over the engines, not all on one


def test_a_busy_home_is_left_for_a_less_loaded_engine() -> None:
    p, balancer = pool(2), PrefixAffinity()
    key = affinity_key("chat/completions", chat("q", system="A prompt of its own. " * 30))
    at_home = home(p.engines, key[:BLOCK_BYTES])
    assert at_home is not None
    at_home.inflight = 2  # HOME_WEIGHT: worth waiting behind fewer than two requests
    assert balancer.candidates(p, key)[0] is not at_home
