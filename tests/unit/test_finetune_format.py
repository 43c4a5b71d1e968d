"""The check of a fine-tune upload refuses, naming line and field, what the trainer would fail
a job on later (each of these used to be stored, then fail its job at training time): the
trainer's own reader (gateway/finetune/train_examples.py) is asked too."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.files.finetune_format import FileFormatError, check_chat_jsonl
from gateway.finetune.train_examples import TrainError, read_conversations

USER = b'{"role":"user","content":"hi"}'
ASSISTANT = b'{"role":"assistant","content":"x"}'


def example(*messages: bytes) -> bytes:
    return b'{"messages":[' + b",".join(messages) + b"]}\n"


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (
            example(USER, b'{"role":"assistant","content":"x","weight":0}'),
            "Line 1 has no assistant message to learn from (one without 'weight': 0).",
        ),
        (
            example(USER, b'{"role":"assistant","content":"x","weight":2}'),
            "Line 1, messages[1]: 'weight' must be 0 or 1.",
        ),
        (
            example(USER, b'{"role":"assistant","content":"x","weight":"1"}'),
            "Line 1, messages[1]: 'weight' must be 0 or 1.",
        ),
        (
            example(USER, b'{"role":"assistant","content":"x","weight":true}'),
            "Line 1, messages[1]: 'weight' must be 0 or 1.",
        ),
        (
            example(b'{"content":"hi"}', b'{"role":"assistant","content":"x"}'),
            "Line 1, messages[0]: 'role' is missing (system, user, assistant).",
        ),
        (
            example(b'{"role":"user","content":"caf\xe9"}', b'{"role":"assistant","content":"x"}'),
            "Line 1 is not UTF-8 (at byte 43).",  # the é, after 42 bytes
        ),
        (
            b'{"messages": [}\n',
            "Line 1 is not valid JSON (column 15: unexpected character, expected a JSON value).",
        ),
        (  # the trainer's chat template renders nothing before it: the job failed
            example(b'{"role":"assistant","content":"Hello!"}', USER, ASSISTANT),
            "Line 1, messages[0]: an assistant message to learn from cannot come first (nothing "
            "asks for it): start with a system or user message, or give it 'weight': 0.",
        ),
        (  # it was trained as an empty answer (content "") or refused (content null)
            example(USER, b'{"role":"assistant","content":"","tool_calls":[{"id":"c"}]}'),
            "Line 1, messages[1]: 'tool_calls': tool and function calls are not trained yet (an "
            "assistant turn that calls one would be learnt as its text alone).",
        ),
        (
            b'{"tools":[{"type":"function"}],"messages":[' + USER + b"," + ASSISTANT + b"]}\n",
            "Line 1: 'tools': tool and function calls are not trained yet (an assistant turn "
            "that calls one would be learnt as its text alone).",
        ),
    ],
)
def test_what_the_trainer_would_refuse_is_refused_at_upload(
    tmp_path: Path, line: bytes, says: str
) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(line)
    with pytest.raises(FileFormatError) as refused:
        check_chat_jsonl(path)
    assert str(refused.value) == says
    with pytest.raises(TrainError, match=r"^line 1: "):
        read_conversations(path)


def test_a_line_nested_past_what_the_trainer_reads_is_refused(tmp_path: Path) -> None:
    """orjson reads 1,024 levels, the trainer's json fewer: the job failed in a RecursionError
    naming no line."""
    path = tmp_path / "t.jsonl"
    deep = b"[" * 999 + b"]" * 999
    path.write_bytes(b'{"extra":' + deep + b',"messages":[' + USER + b"," + ASSISTANT + b"]}\n")
    with pytest.raises(FileFormatError, match=r"^Line 1 is nested deeper than 100 levels\.$"):
        check_chat_jsonl(path)
    with pytest.raises(TrainError, match=r"^line 1: nested too deeply$"):
        read_conversations(path)
    path.write_bytes(
        b'{"extra":' + b"[" * 98 + b"]" * 98 + b',"messages":[' + USER + b"," + ASSISTANT + b"]}\n"
    )
    assert check_chat_jsonl(path) == 1  # 100 levels: the object, "extra"'s 98, none deeper


def test_a_weight_of_0_keeps_a_turn_out_and_1_keeps_it_in(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(
        example(
            USER,
            b'{"role":"assistant","content":"no","weight":0}',
            USER,
            b'{"role":"assistant","content":"yes","weight":1}',
        )
    )
    assert check_chat_jsonl(path) == 1


def test_a_byte_order_mark_before_the_first_line_is_taken(tmp_path: Path) -> None:
    """As Windows editors save UTF-8; it used to be 'Line 1 is not valid JSON'. Only there: a
    mark inside the file is still refused."""
    path = tmp_path / "t.jsonl"
    good = example(USER, b'{"role":"assistant","content":"x"}')
    path.write_bytes(b"\xef\xbb\xbf" + good + good)
    assert check_chat_jsonl(path) == 2
    path.write_bytes(good + b"\xef\xbb\xbf" + good)
    with pytest.raises(FileFormatError, match=r"^Line 2 is not valid JSON"):
        check_chat_jsonl(path)
