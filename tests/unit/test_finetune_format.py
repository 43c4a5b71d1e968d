"""The check of a fine-tune upload refuses, naming line and field, what the trainer would fail
a job on later (each of these used to be stored, then fail its job at training time): the
trainer's own reader (gateway/finetune/train_examples.py) is asked too."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.files.finetune_format import FileFormatError, check_chat_jsonl
from gateway.finetune.train_examples import TrainError, read_conversations

USER = b'{"role":"user","content":"hi"}'


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
