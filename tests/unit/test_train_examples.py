"""The training file as the training program reads it (gateway/finetune/train_examples.py, run
in the engine venv beside train_lora.py): line numbers, refusals that name their line, and the
seeded batches a paused run skips again. Tokenizing needs the real tokenizer: that part is
tested through train_lora.py's dry run in tests/e2e/test_train_lora_e2e.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gateway.files.finetune_format import check_chat_jsonl
from gateway.finetune.train_examples import (
    Example,
    Message,
    TrainError,
    batches,
    finite_loss,
    read_conversations,
)

USER = '{"role":"user","content":"hi"}'


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "t.jsonl"
    path.write_bytes(data)
    return path


def test_what_the_upload_check_accepts_the_trainer_reads_alike(tmp_path: Path) -> None:
    """The same examples, line for line: a carriage return inside a line is JSON whitespace to
    both (the trainer used to split there, failing a job on a file the upload had accepted),
    a byte order mark before the first line is no text to both (the upload refused it), and a
    line's number is the same in both's errors."""
    lines = [
        b'\xef\xbb\xbf{"messages":[{"role":"user","content":"hi"},\r{"role":"assistant","content":"yo"}]}',
        b"",
        b'{"messages":[{"role":"user","content":"a","weight":0},'
        b'{"role":"assistant","content":"b","weight":1}]}',
    ]
    path = write(tmp_path, b"\n".join(lines) + b"\n")
    assert check_chat_jsonl(path) == 2
    assert [number for number, _ in read_conversations(path)] == [1, 3]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "the training file has no examples"),
        (b"\n  \n", "the training file has no examples"),
        (b'{"messages": [}\n', "line 1: not JSON (Expecting value)"),
        (b"[1]\n", "line 1: needs a non-empty 'messages' list"),
        (b'{"messages": []}\n', "line 1: needs a non-empty 'messages' list"),
        (f'{{"messages":[{USER}]}}\n'.encode(), "line 1: has no assistant message to learn from"),
        (
            f'{{"messages":[{USER},{{"role":"assistant","content":"x","weight":0}}]}}\n'.encode(),
            "line 1: has no assistant message to learn from",
        ),
        (
            f'{{"messages":[{USER},{{"role":"assistant","content":"x","weight":true}}]}}\n'.encode(),
            "line 1: weight must be 0 or 1",
        ),
        (
            b'{"messages":[{"role":"tool","content":"x"}]}\n',
            "line 1: each message needs a role in system, user, assistant",
        ),
        (
            f'{{"messages":[{USER},{{"role":"assistant","content":7}}]}}\n'.encode(),
            "line 1: message content must be text",
        ),
        (
            b'\n{"messages":[{"role":"user","content":"caf\xe9"}]}\n',
            "line 2: not UTF-8 (at byte 43)",  # the é, after 42 bytes: as the upload check counts
        ),
    ],
)
def test_a_refusal_names_its_line(tmp_path: Path, data: bytes, says: str) -> None:
    with pytest.raises(TrainError) as refused:
        read_conversations(write(tmp_path, data))
    assert str(refused.value) == says


def test_text_parts_are_joined_and_a_weight_0_turn_is_context(tmp_path: Path) -> None:
    line = (
        '{"messages":[{"role":"system","content":[{"type":"text","text":"be "},'
        '{"type":"text","text":"brief"}]},'
        f'{USER},{{"role":"assistant","content":"no","weight":0}},'
        f'{USER},{{"role":"assistant","content":"yes"}}]}}\n'
    )
    [(number, messages)] = read_conversations(write(tmp_path, line.encode()))
    assert number == 1
    assert messages == [
        Message("system", "be brief", trained=False),
        Message("user", "hi", trained=False),
        Message("assistant", "no", trained=False),
        Message("user", "hi", trained=False),
        Message("assistant", "yes", trained=True),
    ]


def test_batches_are_the_same_seeded_permutation_every_time() -> None:
    """A resumed run skips the batches it trained before its pause: they must be the same."""
    examples = [Example([i], [i]) for i in range(10)]
    first = [[e.input_ids[0] for e in batch] for batch in batches(examples, 3, seed=8)]
    again = [[e.input_ids[0] for e in batch] for batch in batches(examples, 3, seed=8)]
    other = [[e.input_ids[0] for e in batch] for batch in batches(examples, 3, seed=9)]
    assert first == again
    assert first != other
    assert [len(batch) for batch in first] == [3, 3, 3, 1]
    assert sorted(i for batch in first for i in batch) == list(range(10))
    assert Example([1, 2, 3], [-100, 2, 3]).trained == 2


def test_a_loss_that_is_no_longer_a_number_stops_the_run_naming_the_step() -> None:
    assert finite_loss(0.25, 3) == 0.25
    for loss in (math.nan, math.inf, -math.inf):
        with pytest.raises(TrainError, match=r"^training diverged at step 4: its loss is "):
            finite_loss(loss, 4)
