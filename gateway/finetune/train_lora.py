"""Train a LoRA adapter on chat examples: the one program a fine-tuning job runs.

Run by the engine venv's python (torch, transformers and peft live there, not beside the
gateway), so it imports nothing from `gateway`, only its sibling `train_examples.py` (the
training file read into token examples):

    <engine python> train_lora.py --spec spec.json [--dry-run]   (--spec -: read from stdin)

Progress is one JSON object per stdout line (start, step, done, or error); the caller turns
them into job events. Loss counts the assistant tokens only: the prompt is context, not
something the model should learn to write. The adapter appears under `output_dir` whole or
not at all (written beside it, then renamed), so a stopped or failed run leaves none.

`trained_tokens` counts every token of every example once per epoch (prompt included, as
OpenAI bills fine-tuning); each step line carries the running total.

SIGUSR1 pauses: at the end of the step under way the adapter's weights, the optimizer's state
and the count of steps and tokens go to `checkpoint_dir` (written beside it, then renamed), a
`paused` line is printed and the program exits with EXIT_PAUSED. Run again with the same spec,
it goes on from there: the batches are the same seeded ones, those already trained are skipped,
and the adapter it ends with is the one an unpaused run makes (to float rounding: nearly
always bit for bit).
A SIGUSR1 that comes as the program exits is ignored: it ends as it would have.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

if TYPE_CHECKING:
    from gateway.finetune.train_examples import (
        IGNORE,
        Example,
        TrainError,
        batches,
        finite_loss,
        load_examples,
    )
else:  # run by path, in the engine venv: its sibling is a top-level module, llmaas is not there
    from train_examples import IGNORE, Example, TrainError, batches, finite_loss, load_examples

EXIT_STOPPED = 128 + signal.SIGTERM
EXIT_PAUSED = 3  # a checkpoint was written (or none was needed: paused before the first step)
CHECKPOINT = "checkpoint.pt"


class Stopped(BaseException):
    """SIGTERM: unwinds the training loop so the half-written adapter is removed."""


class Paused(BaseException):
    """SIGUSR1, acted on between steps: the checkpoint is written."""


PAUSE = {"asked": False}  # set by SIGUSR1; read between steps


@dataclass(frozen=True, slots=True)
class Spec:
    base_model_dir: Path
    training_file: Path
    output_dir: Path
    n_epochs: int = 3
    batch_size: int = 1
    learning_rate: float = 3e-3
    lora_rank: int = 8
    lora_alpha: int | None = None  # 2 * lora_rank
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    seed: int = 0
    max_length: int = 1024
    threads: int = 0  # 0: torch's default
    checkpoint_dir: Path | None = None  # where a pause leaves its checkpoint (and a run finds it)

    @classmethod
    def load(cls, path: Path) -> Spec:
        raw = json.loads(sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes())
        if not isinstance(raw, dict):
            raise TrainError("the spec must be a JSON object")
        raw = {name: value for name, value in raw.items() if value is not None}  # null: default
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise TrainError(f"unknown spec fields: {', '.join(unknown)}")
        for name in ("base_model_dir", "training_file", "output_dir"):
            if name not in raw:
                raise TrainError(f"the spec needs {name}")
            raw[name] = Path(raw[name])
        if "target_modules" in raw:
            raw["target_modules"] = tuple(raw["target_modules"])
        if "checkpoint_dir" in raw:
            raw["checkpoint_dir"] = Path(raw["checkpoint_dir"])
        spec = cls(**raw)
        spec.check()
        return spec

    def check(self) -> None:
        for name in ("n_epochs", "batch_size", "lora_rank", "max_length"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be at least 1")
        if not self.learning_rate > 0:
            raise TrainError("learning_rate must be positive")

    @property
    def alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank


@dataclass(slots=True)
class Progress:
    steps: int
    step: int = 0
    tokens: int = 0


def emit(event: dict[str, Any]) -> None:
    """One JSON line to the trainer (progress.py), strict JSON: a NaN printed as `NaN` was a
    line the trainer could not read, dropped with the step it carried."""
    print(json.dumps(event, allow_nan=False), flush=True)


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(example.input_ids) for example in batch)
    ids, labels, mask = [], [], []
    for example in batch:
        pad = width - len(example.input_ids)
        ids.append(example.input_ids + [pad_id] * pad)
        labels.append(example.labels + [IGNORE] * pad)
        mask.append([1] * len(example.input_ids) + [0] * pad)
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
    }


def device() -> torch.device:
    """A GPU when the process sees one (the trainer pod's `nvidia.com/gpu`), else the CPU.
    float32 on either: the adapter a paused run ends with is an unpaused run's."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(spec: Spec, on: torch.device) -> Any:
    torch.manual_seed(spec.seed)  # the adapter's initial weights
    base = AutoModelForCausalLM.from_pretrained(spec.base_model_dir, dtype=torch.float32)
    base.to(on)
    base.config.use_cache = False
    config = LoraConfig(
        r=spec.lora_rank,
        lora_alpha=spec.alpha,
        target_modules=list(spec.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config).to(on)


def train(model: Any, examples: list[Example], spec: Spec, pad_id: int, on: torch.device) -> int:
    per_epoch = math.ceil(len(examples) / spec.batch_size)
    progress = Progress(steps=per_epoch * spec.n_epochs)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=spec.learning_rate)
    done = restore(spec, trainable, optimizer, progress, on)
    start = {
        "examples": len(examples),
        "steps": progress.steps,
        "epochs": spec.n_epochs,
        "device": on.type,
    }
    emit({"type": "start", **start, **({"resumed_at": done} if done else {})})
    model.train()
    for epoch in range(1, spec.n_epochs + 1):
        for batch in batches(examples, spec.batch_size, spec.seed + epoch):
            if done:  # trained before the pause: the same seeded batches, skipped
                done -= 1
                continue
            if PAUSE["asked"]:
                checkpoint(spec, trainable, optimizer, progress)
                raise Paused
            inputs = {name: t.to(on) for name, t in collate(batch, pad_id).items()}
            loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            progress.step += 1
            progress.tokens += sum(len(example.input_ids) for example in batch)
            value = loss.item()
            emit(
                {
                    "type": "step",
                    "step": progress.step,
                    "steps": progress.steps,
                    "epoch": epoch,
                    "loss": round(value, 6) if math.isfinite(value) else None,
                    "tokens": progress.tokens,
                }
            )
            finite_loss(value, progress.step)
    return progress.tokens


def restore(
    spec: Spec, trainable: dict[str, Any], optimizer: Any, progress: Progress, on: torch.device
) -> int:
    """Load a pause's checkpoint, if the spec names one that exists: the steps it trained."""
    if spec.checkpoint_dir is None or not (spec.checkpoint_dir / CHECKPOINT).is_file():
        return 0
    saved = torch.load(spec.checkpoint_dir / CHECKPOINT, weights_only=True, map_location=on)
    with torch.no_grad():
        for name, value in saved["adapter"].items():
            trainable[name].copy_(value)
    optimizer.load_state_dict(saved["optimizer"])
    progress.step, progress.tokens = int(saved["step"]), int(saved["tokens"])
    return progress.step


def checkpoint(spec: Spec, trainable: dict[str, Any], optimizer: Any, progress: Progress) -> None:
    """Write what a run needs to go on from here (nothing before the first step), whole or
    not at all, and say so."""
    if spec.checkpoint_dir is not None and progress.step:
        spec.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        partial = spec.checkpoint_dir / f".{CHECKPOINT}.partial-{os.getpid()}"
        state = {
            "step": progress.step,
            "tokens": progress.tokens,
            "adapter": {name: p.detach().clone() for name, p in trainable.items()},
            "optimizer": optimizer.state_dict(),
        }
        torch.save(state, partial)
        partial.rename(spec.checkpoint_dir / CHECKPOINT)
    emit({"type": "paused", "step": progress.step, "tokens": progress.tokens})


def save_atomically(model: Any, output_dir: Path) -> None:
    """Write beside `output_dir`, then rename: a reader sees no adapter or a whole one."""
    if output_dir.exists() and any(output_dir.iterdir()):
        raise TrainError(f"output_dir {output_dir} already holds files")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = output_dir.with_name(f".{output_dir.name}.partial-{os.getpid()}")
    try:
        model.save_pretrained(partial)
        readable_by_engines(partial)
        partial.rename(output_dir)  # replaces an empty directory too
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def readable_by_engines(adapter_dir: Path) -> None:
    """An adapter's files readable by every user, its directories searchable: vLLM engines
    load it by path, and on the chart they run as another user than the trainer (root with
    every capability dropped: no reading past a file's mode). safetensors writes its file
    0600: every fine-tuned model was a 503 there. (The tenant's directory above, 0711, lets
    no one list its adapters.)"""
    adapter_dir.chmod(0o755)
    for path in adapter_dir.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def run(spec: Spec) -> None:
    started = time.monotonic()
    if spec.threads > 0:
        torch.set_num_threads(spec.threads)
    random.seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model_dir)
    examples = load_examples(tokenizer, spec.training_file, spec.max_length)
    pad_id = tokenizer.pad_token_id
    pad_id = tokenizer.eos_token_id if pad_id is None else pad_id
    on = device()
    model = load_model(spec, on)
    tokens = train(model, examples, spec, int(pad_id), on)
    save_atomically(model, spec.output_dir)
    emit(
        {
            "type": "done",
            "trained_tokens": tokens,
            "adapter_dir": str(spec.output_dir),
            "seconds": round(time.monotonic() - started, 3),
        }
    )


def dry_run(spec: Spec) -> None:
    """Tokenize only: per example, its tokens and the text the loss is computed on."""
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model_dir)
    for example in load_examples(tokenizer, spec.training_file, spec.max_length):
        trained = [
            t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE
        ]
        emit(
            {
                "type": "example",
                "tokens": len(example.input_ids),
                "trained": len(trained),
                "trained_text": tokenizer.decode(trained),
            }
        )


def _stop(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a repeated TERM must not cut the cleanup
    raise Stopped


def _pause(signum: int, frame: FrameType | None) -> None:
    PAUSE["asked"] = True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--spec", type=Path, required=True, help="the job's spec (JSON; -: read from stdin)"
    )
    parser.add_argument("--dry-run", action="store_true", help="tokenize and report only")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGUSR1, _pause)
    hf_logging.disable_progress_bar()  # stderr is the job's log: no carriage-return bars
    try:
        spec = Spec.load(args.spec)
        if args.dry_run:
            dry_run(spec)
        else:
            run(spec)
    except Stopped:
        emit({"type": "error", "message": "stopped by SIGTERM"})
        return EXIT_STOPPED
    except Paused:
        return EXIT_PAUSED
    except TrainError as exc:
        emit({"type": "error", "message": str(exc)})
        return 1
    except Exception as exc:  # the process boundary: the caller gets every failure as a line
        emit({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    finally:  # a pause asked as the run ends must not kill it once Python's handlers are gone
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    return 0


if __name__ == "__main__":
    sys.exit(main())
