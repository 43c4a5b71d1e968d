"""`llmaas jobs follow`'s display of a job's events: a bar on a terminal, lines elsewhere."""

from __future__ import annotations

import io
from typing import Any

import pytest

from gateway.finetune_cli import _show


def metrics(step: int, total: int = 4) -> dict[str, Any]:
    data = {"step": step, "total_steps": total, "train_loss": 2.0}
    return {"type": "metrics", "message": f"Step {step}/{total}", "data": data}


DONE = {"type": "message", "message": "The job has successfully completed", "data": {}}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_each_step_is_a_line_without_carriage_returns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bar = None
    for event in (metrics(1), metrics(4), DONE):
        bar = _show(event, bar, as_json=False)
    out, err = capsys.readouterr()
    assert err == "training: step 1/4, loss 2.0000\ntraining: step 4/4, loss 2.0000\n"
    assert out == "The job has successfully completed\n"
    assert bar is None


def test_on_a_terminal_the_bar_counts_from_its_first_step_and_is_not_drawn_again_when_done(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    bar = _show(metrics(1), None, as_json=False)
    assert bar is not None
    assert bar.initial == 1  # the rate counts the steps it saw, not 1 step in no time
    bar = _show(metrics(4), bar, as_json=False)
    drawn = screen.getvalue().count("\r")
    bar = _show(DONE, bar, as_json=False)
    assert bar is None  # closed, not drawn again under the message
    assert screen.getvalue().count("\r") <= drawn + 1  # (closing draws it a last time)
    assert capsys.readouterr().out == "The job has successfully completed\n"
