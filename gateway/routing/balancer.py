"""Balancing strategies: the order in which a request tries the engines of its model's pool.

Every strategy puts healthy engines first (an engine marked down goes last, still tried if
all else fails). The load of an engine is this replica's requests in flight there now plus
other replicas' at the last scrape: the engine's queue then (running + waiting) less this
replica's requests in flight when the scrape's answer came. Own requests change between two
scrapes (a burst, requests finishing) and are counted exactly; a scraped queue alone would be
up to a scrape interval old (bench/README.md, "Routing": a stale queue of 4 that was 3 moved
a conversation off its engine).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from array import array
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import Counter

from gateway.routing.engines import Engine, EngineLoad, ModelPool
from gateway.routing.overload import QueueBound, queue_bound
from gateway.settings import RoutingSettings

BLOCK_BYTES = 256  # affinity granularity: a prompt's key is hashed in blocks of this size
MAX_BLOCKS = 256  # keys beyond 64 KiB are matched on their first 64 KiB only
BLOCKS_PER_ENGINE = 50_000  # block hashes remembered per engine (~12 MiB of prompt), LRU
# A scraped queue older than this is no longer believed (the engine stopped answering /metrics).
STALE_AFTER_S = 10.0
# Score of an engine that holds a request's whole prefix, in queued requests: a full match is
# worth waiting behind up to this many more requests (within the load bound).
PREFIX_WEIGHT = 4.0
# Score of a prefix's home engine (rendezvous hashing of its first block over the engines' URLs)
# when this process has sent none of the prompt to any engine: every worker and replica picks the
# same home for a prompt none of them has seen, so a conversation whose turns reach different
# processes (a new connection each turn) still lands on one engine, not on each process's
# least loaded in rotation.
HOME_WEIGHT = 2.0
# Requests an engine may hold beyond the load bound's share. Loads are small integers: without
# it, two engines at 4 requests in flight move a third request off its engine whenever the other
# is idle (⌈1.25 x 3 / 2⌉ = 2), paying a cold prefill there for a queue of one request. As loads
# grow it weighs less: at a mean of 20 the cap is 26 rather than 25 (bench/README.md, "Routing").
LOAD_SLACK = 1


class Balancer(Protocol):
    def candidates(self, pool: ModelPool, affinity: bytes = b"") -> list[Engine]:
        """Engines to try, best first; engines marked down go last. `affinity` is the request's
        `affinity_key` (empty: none); strategies that do not use it ignore it."""
        ...


def affinity_key(route: str, body: dict[str, Any]) -> bytes:
    """The bytes a request's prompt starts with, in an order that keeps a conversation's next
    turn an extension of this one. Empty for routes without a reusable prefix (embeddings)."""
    if route == "chat/completions":
        key = _chat_text(body.get("messages"))
    elif route == "completions":
        return _salt(body) + _prompt_bytes(body.get("prompt"))
    else:
        return b""
    return _salt(body) + key.encode("utf-8", "surrogatepass")


def _salt(body: dict[str, Any]) -> bytes:
    """vLLM shares cached blocks only between requests with the same cache_salt."""
    salt = body.get("cache_salt")
    return salt.encode("utf-8", "surrogatepass") + b"\x1d" if isinstance(salt, str) else b""


def _chat_text(messages: object) -> str:
    if not isinstance(messages, list):
        return ""
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            break
        parts += (str(message.get("role")), "\x1f", _content_text(message.get("content")))
        if "tool_calls" in message:
            parts.append(json.dumps(message["tool_calls"], sort_keys=True))
        parts.append("\x1e")
    return "".join(parts)


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return "" if content is None else json.dumps(content, sort_keys=True)
    texts = []
    for part in content:
        text = part.get("text") if isinstance(part, dict) else None
        texts.append(text if isinstance(text, str) else json.dumps(part, sort_keys=True))
    return "\x1f".join(texts)


def _prompt_bytes(prompt: object) -> bytes:
    """A completions prompt: text or token ids; of a batch, its first prompt."""
    if isinstance(prompt, str):
        return prompt.encode("utf-8", "surrogatepass")
    if not isinstance(prompt, list) or not prompt:
        return b""
    if isinstance(prompt[0], str | list):
        return _prompt_bytes(prompt[0])
    try:
        return array("I", prompt).tobytes()
    except (TypeError, OverflowError):
        return b""


def block_hashes(key: bytes) -> list[int]:
    """Chained hashes of the key's whole blocks: the i-th names the key's first i + 1 blocks,
    so engines that were sent a hash were sent that whole prefix. A partial last block has
    none (the next turn of a conversation changes it). In-process only (`hash` is salted)."""
    end = min(len(key) // BLOCK_BYTES, MAX_BLOCKS) * BLOCK_BYTES
    hashes: list[int] = []
    chained = 0
    for start in range(0, end, BLOCK_BYTES):
        chained = hash((chained, key[start : start + BLOCK_BYTES]))
        hashes.append(chained)
    return hashes


def is_fresh(load: EngineLoad, now: float) -> bool:
    return load.scraped_at > 0.0 and now - load.scraped_at < STALE_AFTER_S


def engine_load(engine: Engine, now: float) -> float:
    """Requests at the engine (see the module's docstring)."""
    load = engine.load
    if not is_fresh(load, now):
        return float(engine.inflight)
    others = max(0.0, load.running + load.waiting - load.own_at_scrape)
    return engine.inflight + others


Order = Callable[[Engine], float]  # a sort key: lower first


class RoundRobin:
    """The engines that are up in turn, then those that are not (tried last). One turn per
    pool: with one count for all, a steady mix of models (an embedding, then a chat) gave each
    model the same engine every time. The turn goes round the engines that are up, so an
    ejected engine's share is spread over all the others, not handed to the one after it."""

    def __init__(self) -> None:
        self._turns: dict[str, itertools.count[int]] = {}

    def candidates(self, pool: ModelPool, affinity: bytes = b"") -> list[Engine]:
        engines = pool.engines
        if len(engines) <= 1:  # none: a dns:// entry that resolves to nothing (yet)
            return engines
        return self.in_turn(engines, pool.name, time.monotonic())

    def in_turn(
        self, engines: list[Engine], pool: str, now: float, order: Order | None = None
    ) -> list[Engine]:
        """`engines` that are up, rotated by the pool's turn (then sorted by `order`, which
        keeps the rotation among equals), followed by those that are down. After the first,
        the others are rotated by turns of their own: a request the first fails goes to each
        of them in turn (all to the one after it made it take 1.5x its share: 45 of 90)."""
        up = [e for e in engines if e.is_up(now)]
        first = up or engines  # (all down: every one in turn still)
        turn = self._turns.get(pool)
        if turn is None:
            turn = self._turns[pool] = itertools.count()
        n = next(turn)
        start = n % len(first)
        ranked = first[start:] + first[:start]
        if len(ranked) > 2:  # the rest in turn too: what fails over from the first is spread
            k = 1 + (n // len(first)) % (len(ranked) - 1)  # (over the others, not handed on
            ranked = ranked[:1] + ranked[k:] + ranked[1:k]  # to the one after it every time)
        if order is not None:
            ranked.sort(key=order)
        if len(first) == len(engines):
            return ranked
        return ranked + [e for e in engines if not e.is_up(now)]


class LeastLoaded:
    """Fewest requests at the engine; ties broken by the pool's rotation."""

    def __init__(self) -> None:
        self._rotate = RoundRobin()

    def candidates(self, pool: ModelPool, affinity: bytes = b"") -> list[Engine]:
        if len(pool.engines) <= 1:
            return pool.engines
        return self.ordered(pool.engines, time.monotonic(), pool.name)

    def ordered(self, engines: list[Engine], now: float, pool: str = "") -> list[Engine]:
        return self._rotate.in_turn(engines, pool, now, lambda e: engine_load(e, now))


class PrefixAffinity:
    """The engine that was sent the longest prefix of this prompt (its cache likely holds it),
    weighed against load, among engines within the load bound: an engine takes a request only
    if its load + 1 stays within `load_bound` x the pool's mean load with this request
    (rounded up) plus `LOAD_SLACK` requests, so one popular prefix cannot pile onto one engine
    while others have room (consistent hashing with bounded loads). Without a key: least
    loaded."""

    def __init__(
        self, load_bound: float = 1.25, blocks_per_engine: int = BLOCKS_PER_ENGINE
    ) -> None:
        self.load_bound = load_bound
        self.blocks_per_engine = blocks_per_engine
        self._least_loaded = LeastLoaded()

    def candidates(self, pool: ModelPool, affinity: bytes = b"") -> list[Engine]:
        if len(pool.engines) <= 1:
            return pool.engines
        now = time.monotonic()
        ranked = self._least_loaded.ordered(pool.engines, now, pool.name)
        blocks = block_hashes(affinity)
        if not blocks:
            return ranked
        up = [e for e in ranked if e.is_up(now)] or ranked
        chosen = self.choose(up, blocks, now, affinity[:BLOCK_BYTES])
        self.remember(chosen, blocks)
        return [chosen, *(e for e in ranked if e is not chosen)]

    def choose(
        self, engines: list[Engine], blocks: list[int], now: float, first_block: bytes = b""
    ) -> Engine:
        """The best-scoring engine within the load bound (`engines` least loaded first, so
        equal scores go to the less loaded, then in rotation). When no engine was sent any of
        the prompt, its home (`first_block`'s, see `home`) scores HOME_WEIGHT for it."""
        loads = [engine_load(e, now) for e in engines]
        cap = self.load_cap(sum(loads), len(engines))
        matches = [PREFIX_WEIGHT * self.matched(e, blocks) / len(blocks) for e in engines]
        if not any(matches):
            at_home = home(engines, first_block)
            matches = [HOME_WEIGHT if e is at_home else 0.0 for e in engines]
        best, best_score = engines[0], -math.inf
        for engine, load, affinity in zip(engines, loads, matches, strict=True):
            if load + 1 > cap:
                continue
            kv = engine.load.kv_usage if is_fresh(engine.load, now) else 0.0
            score = affinity - load - kv
            if score > best_score:
                best, best_score = engine, score
        return best

    def load_cap(self, total: float, engines: int) -> int:
        """The most requests an engine may hold with this one, given `total` in the pool before
        it: `load_bound` x the mean with this request, rounded up, plus `LOAD_SLACK`."""
        return math.ceil(self.load_bound * (total + 1) / engines) + LOAD_SLACK

    def matched(self, engine: Engine, blocks: list[int]) -> int:
        """How many leading blocks of the prompt this engine was sent recently. What an engine
        holds of one chain is always a run from its start (see `remember`): binary search."""
        sent = engine.prefix_blocks
        if not sent:
            return 0
        low, high = 0, len(blocks)  # blocks[:low] were sent; blocks[high:] were not
        while low < high:
            mid = (low + high + 1) // 2
            if blocks[mid - 1] in sent:
                low = mid
            else:
                high = mid - 1
        return low

    def remember(self, engine: Engine, blocks: list[int]) -> None:
        """Refresh the prompt's blocks last first, so that a prefix is always newer than its
        extensions and the LRU evicts a chain from its end."""
        sent = engine.prefix_blocks
        for block in reversed(blocks):
            sent[block] = None
            sent.move_to_end(block)
        while len(sent) > self.blocks_per_engine:
            sent.popitem(last=False)


def home(engines: list[Engine], first_block: bytes) -> Engine | None:
    """The engine whose URL hashed with the prompt's first block is highest (rendezvous
    hashing): the same in every process, and a prompt keeps its home while engines come and go
    unless its home is the one that left."""
    if not engines:
        return None
    return max(engines, key=lambda e: _weight(first_block, e.url))


def _weight(first_block: bytes, url: str) -> bytes:
    return hashlib.blake2b(first_block + b"\x00" + url.encode(), digest_size=8).digest()


class Shedding:
    """A strategy that chooses among the engines below the queue bound only, and refuses with
    EnginesOverloaded (raised from `candidates`) when there are none (gateway/routing/overload.py).
    """

    def __init__(self, strategy: Balancer, bound: QueueBound) -> None:
        self.strategy = strategy
        self.bound = bound

    def candidates(self, pool: ModelPool, affinity: bytes = b"") -> list[Engine]:
        return self.strategy.candidates(self.bound.admit(pool), affinity)


def make_balancer(settings: RoutingSettings, shed: Counter | None = None) -> Balancer:
    """The configured strategy; behind the queue bound when one is set and `shed` (the counter
    of requests shed) is given."""
    strategy = _strategy(settings)
    bound = None if shed is None else queue_bound(settings, shed)
    return strategy if bound is None else Shedding(strategy, bound)


def _strategy(settings: RoutingSettings) -> Balancer:
    if settings.strategy == "prefix_affinity":
        return PrefixAffinity(settings.load_bound)
    if settings.strategy == "least_loaded":
        return LeastLoaded()
    return RoundRobin()
