"""Token usage as engines report it: in a non-streaming body, or in a stream's frames.

Chat and completions count `prompt_tokens` / `completion_tokens`; the Responses API counts
`input_tokens` / `output_tokens` (in its body, and in the `response` of its terminal stream
events); both put cached prompt tokens in a details object as `cached_tokens`.

Parsing is by regex on the bytes, never a JSON load: with `continuous_usage_stats` every frame
of a stream carries usage, and a frame costs microseconds only if nothing is deserialised. The
pattern `"usage":{` cannot occur inside a JSON string (its quotes would be escaped), so a match
is always the key itself. The one exception is a collected (non-streaming) answer, whose chunks
are loaded anyway to assemble its body: StreamUsage.feed_chunk reads their loaded usage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*(\{(?:[^{}]|\{[^{}]*\})*\})')
_COUNTS = re.compile(
    rb'"(prompt_tokens|completion_tokens|input_tokens|output_tokens|cached_tokens)"\s*:\s*(\d+)'
)
_COMPACT_INDEX = re.compile(rb'\{"index":(\d+)')
_CHOICE_INDEX = re.compile(rb'"choices"\s*:\s*\[\s*\{\s*"index"\s*:\s*(\d+)')
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_COMPACT = b'"usage":{'


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache, when reported
    # A stream cut before its final usage: the prompts (by index) some choice of which had
    # reported, the only ones in prompt_tokens. None: every prompt is in (a final report).
    # Not compared: two usages are equal when they count the same tokens.
    prompts: tuple[int, ...] | None = field(default=None, compare=False)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def parse_usage(obj: bytes) -> Usage:
    """A usage object's bytes (`{"prompt_tokens": …}` or the Responses API's
    `{"input_tokens": …}`) as Usage; absent counts are 0."""
    counts = {name: int(value) for name, value in _COUNTS.findall(obj)}
    return Usage(
        counts.get(b"prompt_tokens", counts.get(b"input_tokens", 0)),
        counts.get(b"completion_tokens", counts.get(b"output_tokens", 0)),
        counts.get(b"cached_tokens", 0),
    )


def json_usage(obj: dict[str, Any]) -> Usage:
    """A usage object already loaded from JSON (the collected path loads every chunk) as
    Usage: the same counts parse_usage reads from its bytes."""
    details = obj.get("prompt_tokens_details") or obj.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        obj.get("prompt_tokens", obj.get("input_tokens")) or 0,
        obj.get("completion_tokens", obj.get("output_tokens")) or 0,
        cached or 0,
    )


def _as_usage(raw: bytes | dict[str, Any]) -> Usage:
    return parse_usage(raw) if isinstance(raw, bytes) else json_usage(raw)


def find_usage(payload: bytes) -> tuple[int, int, int] | None:
    """Where the member `"usage":{…}` is: (member start, object start, end), or None.

    Compact JSON (what vLLM sends) is found with plain byte searches, from the end where vLLM
    puts usage; anything else falls back to a regex.
    """
    start = payload.rfind(_COMPACT)
    if start < 0:
        if b'"usage"' not in payload:
            return None
        found = USAGE_OBJECT.search(payload)
        return None if found is None else (found.start(), found.start(1), found.end())
    obj = start + len(_COMPACT) - 1
    end = payload.find(b"}", obj)
    nested = payload.find(b"{", obj + 1, end)
    while nested >= 0 and end >= 0:  # a nested *_tokens_details object: skip past its brace
        end = payload.find(b"}", end + 1)
        nested = payload.find(b"{", nested + 1, end)
    return None if end < 0 else (start, obj, end + 1)


def usage_of(body: bytes) -> Usage | None:
    """The top-level usage of a response body or stream payload, if it carries one."""
    span = find_usage(body)
    return None if span is None else parse_usage(body[span[1] : span[2]])


class StreamUsage:
    """The tokens a stream has used so far.

    vLLM's final usage frame (`"choices": []`) is authoritative. Before it, with
    `continuous_usage_stats`, each frame holds one choice and that choice's running usage: its
    prompt (for /v1/completions, the prompt it continues) and its completion tokens so far. So
    a stream cut short is billed for every choice's last report: completions summed, each
    prompt once (`n` choices share one prompt).
    """

    def __init__(self, n: int = 1) -> None:
        self.n = max(1, n)
        # Usage objects as found (bytes of a relayed frame, or a collected chunk's loaded
        # object), turned into Usage only when asked: a frame costs a slice, not a parse.
        self.final: bytes | dict[str, Any] | None = None
        self.choices: dict[int, bytes | dict[str, Any]] = {}

    def feed(self, payload: bytes, span: tuple[int, int, int] | None = None) -> bool:
        """Note one payload's usage; `span` is its find_usage() if the caller has it. True for
        the final usage frame (is_final_usage's answer, found on the way)."""
        span = span or find_usage(payload)
        if span is None:
            return False
        usage = payload[span[1] : span[2]]
        index = choice_of(payload)
        if index is None:
            self.final = usage
            return True
        self.choices[index] = usage
        return False

    def feed_chunk(self, chunk: dict[str, Any]) -> None:
        """Note the usage of a chunk already loaded from JSON: the same reading as feed()."""
        usage = chunk.get("usage")
        if not isinstance(usage, dict):
            return
        choices = chunk.get("choices")
        if not choices:
            self.final = usage
        elif isinstance(choices, list) and isinstance(choices[0], dict):
            self.choices[choices[0].get("index", 0)] = usage

    @property
    def usage(self) -> Usage | None:
        if self.final is not None:
            return _as_usage(self.final)
        if not self.choices:
            return None
        parsed = {index: _as_usage(raw) for index, raw in self.choices.items()}
        prompts: dict[int, Usage] = {}
        for index, usage in parsed.items():
            prompts.setdefault(index // self.n, usage)
        return Usage(
            prompt_tokens=sum(u.prompt_tokens for u in prompts.values()),
            completion_tokens=sum(u.completion_tokens for u in parsed.values()),
            cached_tokens=sum(u.cached_tokens for u in prompts.values()),
            prompts=tuple(sorted(prompts)),
        )


def is_final_usage(payload: bytes) -> bool:
    """The usage-only frame that ends a stream with include_usage (no choices, usage)."""
    return b'"usage"' in payload and choice_of(payload) is None


def choice_of(payload: bytes) -> int | None:
    """The index of the one choice a frame with usage holds; None for the final usage frame,
    which holds none. Compact JSON (vLLM's) costs one search and one anchored match."""
    at = payload.find(b'"choices":[')
    if at >= 0:
        if payload[at + 11 : at + 12] == b"]":
            return None
        found = _COMPACT_INDEX.match(payload, at + 11)
        if found is not None:
            return int(found.group(1))
    elif _NO_CHOICES.search(payload) is not None:
        return None
    found = _CHOICE_INDEX.search(payload)
    return int(found.group(1)) if found else 0
