"""Token usage as engines report it: in a non-streaming body, or in a stream's frames.

Parsing is by regex on the bytes, never a JSON load: with `continuous_usage_stats` every frame
of a stream carries usage, and a frame costs microseconds only if nothing is deserialised. The
pattern `"usage":{` cannot occur inside a JSON string (its quotes would be escaped), so a match
is always the key itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*(\{(?:[^{}]|\{[^{}]*\})*\})')
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_CACHED = re.compile(rb'"cached_tokens"\s*:\s*(\d+)')
_CHOICE_INDEX = re.compile(rb'"choices"\s*:\s*\[\s*\{\s*"index"\s*:\s*(\d+)')
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache, when reported

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _int(pattern: re.Pattern[bytes], text: bytes) -> int:
    found = pattern.search(text)
    return int(found.group(1)) if found else 0


def parse_usage(obj: bytes) -> Usage:
    """A usage object's bytes (`{"prompt_tokens": …}`) as Usage; absent counts are 0."""
    return Usage(_int(_PROMPT, obj), _int(_COMPLETION, obj), _int(_CACHED, obj))


def usage_of(body: bytes) -> Usage | None:
    """The top-level usage of a response body or stream payload, if it carries one."""
    found = USAGE_OBJECT.search(body)
    return None if found is None else parse_usage(found.group(1))


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
        self.final: Usage | None = None
        self.choices: dict[int, Usage] = {}

    def feed(self, payload: bytes) -> None:
        found = USAGE_OBJECT.search(payload)
        if found is None:
            return
        usage = parse_usage(found.group(1))
        if _NO_CHOICES.search(payload) is not None:
            self.final = usage
            return
        index = _CHOICE_INDEX.search(payload)
        self.choices[int(index.group(1)) if index else 0] = usage

    @property
    def usage(self) -> Usage | None:
        if self.final is not None:
            return self.final
        if not self.choices:
            return None
        prompts: dict[int, Usage] = {}
        for index, usage in self.choices.items():
            prompts.setdefault(index // self.n, usage)
        return Usage(
            prompt_tokens=sum(u.prompt_tokens for u in prompts.values()),
            completion_tokens=sum(u.completion_tokens for u in self.choices.values()),
            cached_tokens=sum(u.cached_tokens for u in prompts.values()),
        )
