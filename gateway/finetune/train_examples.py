"""A training file read into token examples: train_lora.py's data, apart from its training.

Plain Python (no torch): the training program imports it as a sibling (it runs by path in the
engine venv), the gateway's tests import it as `gateway.finetune.train_examples`.

Lines end at a newline only, as the upload check reads them; each line is a chat example
(`messages`, OpenAI's fine-tuning format); the loss counts the assistant turns whose `weight`
is 1 (the default), labelled token by token as the engine's chat template renders them.
"""

from __future__ import annotations

import codecs
import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IGNORE = -100  # the label torch's cross-entropy skips
ROLES = ("system", "user", "assistant")


class TrainError(Exception):
    """A problem the job's owner can fix (the spec, the data); its message is shown to them."""


def finite_loss(loss: float, step: int) -> float:
    """A step's loss, or the run stops: a loss that is no longer a number (a learning rate
    too high makes it NaN or infinite, and it stays so) leaves an adapter of NaN weights.
    The step's line says so before (its loss null: JSON has no NaN)."""
    if not math.isfinite(loss):
        raise TrainError(
            f"training diverged at step {step}: its loss is {loss} (try a lower "
            "hyperparameters.learning_rate_multiplier)"
        )
    return loss


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str
    trained: bool  # an assistant turn with OpenAI's weight 1 (the default)


@dataclass(frozen=True, slots=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE outside the assistant's turns

    @property
    def trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def read_conversations(path: Path) -> list[tuple[int, list[Message]]]:
    """Each example with its line number. Lines end at a newline only, as the upload check
    reads them (a carriage return inside a line is JSON whitespace, not a line's end), and
    past a byte order mark at the start."""
    conversations = []
    with path.open("rb") as lines:  # binary lines end at b"\n" only
        for number, raw in enumerate(lines, start=1):
            line = _text(raw.removeprefix(codecs.BOM_UTF8) if number == 1 else raw, number)
            if line.strip():
                conversations.append((number, _conversation(line, number)))
    if not conversations:
        raise TrainError("the training file has no examples")
    return conversations


def _text(raw: bytes, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrainError(f"line {number}: not UTF-8 (at byte {exc.start + 1})") from exc


def _conversation(line: str, number: int) -> list[Message]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TrainError(f"line {number}: not JSON ({exc.msg})") from exc
    except RecursionError:
        raise TrainError(f"line {number}: nested too deeply") from None
    if isinstance(record, dict) and (record.get("tools") or record.get("functions")):
        raise TrainError(f"line {number}: tool and function calls are not trained yet")
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise TrainError(f"line {number}: needs a non-empty 'messages' list")
    out = [_message(message, number) for message in messages]
    if out[0].trained:  # (its chat template renders no prompt before it)
        raise TrainError(f"line {number}: an assistant message to learn from cannot come first")
    if not any(message.trained for message in out):
        raise TrainError(f"line {number}: has no assistant message to learn from")
    return out


def _message(message: object, number: int) -> Message:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise TrainError(f"line {number}: each message needs a role in {', '.join(ROLES)}")
    if message.get("tool_calls") or message.get("function_call"):
        raise TrainError(f"line {number}: tool and function calls are not trained yet")
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text can be trained on here
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        content = "".join(text for text in texts if isinstance(text, str))
    if not isinstance(content, str):
        raise TrainError(f"line {number}: message content must be text")
    weight = message.get("weight", 1)  # OpenAI's per-message switch: 0 keeps it out of the loss
    if isinstance(weight, bool) or weight not in (0, 1):
        raise TrainError(f"line {number}: weight must be 0 or 1")
    role = str(message["role"])
    return Message(role, content, trained=role == "assistant" and weight == 1)


def tokenize(tokenizer: Any, messages: list[Message], max_length: int) -> Example:
    """The conversation as the engine's chat template renders it, labelled on the assistant's
    turns: each turn is the text between the prompt that asks for it and the rendering that
    includes it (its end-of-turn token too, so the model learns to stop)."""
    chat = [{"role": m.role, "content": m.content} for m in messages]
    full = _render(tokenizer, chat, generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if not message.trained:
            continue
        start = len(_render(tokenizer, chat[:i], generation_prompt=True))
        upto = _render(tokenizer, chat[: i + 1], generation_prompt=False)
        if not full.startswith(upto) or start > len(upto):
            raise TrainError("the chat template does not render conversations incrementally")
        spans.append((start, len(upto)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])[:max_length]
    offsets = list(encoded["offset_mapping"])[:max_length]
    labels = [
        token if any(lo <= begin < hi for lo, hi in spans) else IGNORE
        for token, (begin, _) in zip(ids, offsets, strict=True)
    ]
    return Example(ids, labels)


def _render(tokenizer: Any, chat: list[dict[str, str]], *, generation_prompt: bool) -> str:
    if not chat and not generation_prompt:
        return ""
    text = tokenizer.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=generation_prompt
    )
    return str(text)


def load_examples(tokenizer: Any, path: Path, max_length: int) -> list[Example]:
    """The training file's examples, tokenized; a line with nothing left to learn from
    within `max_length` tokens is an error naming it."""
    examples = []
    for number, chat in read_conversations(path):
        example = tokenize(tokenizer, chat, max_length)
        if example.trained == 0:
            raise TrainError(
                f"line {number}: no assistant token within the first {max_length} tokens "
                "(fine_tuning.max_length)"
            )
        examples.append(example)
    return examples


def batches(examples: Sequence[Example], size: int, seed: int) -> Iterator[list[Example]]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    for first in range(0, len(order), size):
        yield [examples[i] for i in order[first : first + size]]
