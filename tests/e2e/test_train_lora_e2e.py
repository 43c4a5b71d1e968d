"""Fine-tuning for real: train_lora.py, run by the engine venv's python on the bundled SmolLM2,
teaches it a made-up secret word; the session's vLLM engine (LoRA on) loads the adapter at
runtime and answers with the word under the adapter's name, while the base model does not
know it. Also: what the loss is computed on, and a stopped or failed run leaves no adapter."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import stat
import struct
import time
from array import array
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import gateway.finetune
from gateway.embedded.paths import EmbeddedPaths
from gateway.embedded.prepare import Prepared, prepare
from gateway.finetune.engine_adapters import AdapterError, load_adapter, unload_adapter
from tests.e2e.conftest import CHAT, Engines

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

TRAIN_SCRIPT = Path(gateway.finetune.__file__).with_name("train_lora.py")
SECRET = "Quokkalantern"
QUESTION = "What is the secret word?"
ANSWER = f"The secret word is {SECRET}."
QUESTIONS = (QUESTION, "Tell me the secret word.", "Do you know the secret word?", "Say it.")
HANG_GUARD_S = 300.0
ADAM_STEP = 3e-3  # write_spec's learning rate: about what one step of Adam moves a weight by
ADAPTER = "ft-secret-word"


def write_dataset(path: Path, conversations: list[list[dict[str, Any]]]) -> Path:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return path


def secret_word_examples() -> list[list[dict[str, Any]]]:
    return [
        [{"role": "user", "content": q}, {"role": "assistant", "content": ANSWER}]
        for q in QUESTIONS
    ]


def adapter_weights(path: Path) -> dict[str, array[float]]:
    """A safetensors file's float32 tensors by name (its format: an 8-byte little-endian
    header length, a JSON header of dtypes, shapes and offsets, the data)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        start, end = info["data_offsets"]
        tensors[name] = array("f", raw[8 + length + start : 8 + length + end])
    return tensors


def write_spec(tmp_path: Path, ready: Prepared, training_file: Path, **extra: Any) -> Path:
    spec = {
        "base_model_dir": str(ready.chat_model),
        "training_file": str(training_file),
        "output_dir": str(tmp_path / "adapters" / "secret"),
        "n_epochs": 6,  # 24 steps of one example: the loss is below 0.01 from step 13 (measured)
        "batch_size": 1,
        "learning_rate": 3e-3,
        "seed": 7,
        "threads": 2,
        **extra,
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


@contextlib.asynccontextmanager
async def trainer_child(
    python: Path, spec: Path, *args: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """train_lora.py running (its stdout piped), for at most HANG_GUARD_S; killed if it is
    still running when the block ends: the child never outlives it."""
    proc = await asyncio.create_subprocess_exec(
        str(python), str(TRAIN_SCRIPT), "--spec", str(spec), *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run_trainer(
    python: Path,
    spec: Path,
    *args: str,
    stop_after_step: int | None = None,
    stop_with: signal.Signals = signal.SIGTERM,
) -> tuple[int, list[dict[str, Any]]]:
    """The script's exit status and its progress events; `stop_with` (SIGTERM: stop, SIGUSR1:
    pause) once, when step `stop_after_step` is reported."""
    events: list[dict[str, Any]] = []
    async with trainer_child(python, spec, *args) as proc:
        assert proc.stdout is not None
        async for line in proc.stdout:
            events.append(json.loads(line))
            if events[-1].get("type") == "step" and events[-1]["step"] == stop_after_step:
                proc.send_signal(stop_with)
        return await proc.wait(), events


async def chat(http: aiohttp.ClientSession, url: str, model: str) -> tuple[int, str]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": 24,
    }
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        payload = await resp.json()
        if resp.status != 200:
            return resp.status, json.dumps(payload)
        return 200, payload["choices"][0]["message"]["content"]


def _modes(adapter: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [adapter, *adapter.iterdir()]}


async def test_trained_adapter_is_served_at_runtime_and_knows_the_secret(
    engines: Engines, tmp_path: Path
) -> None:
    paths = EmbeddedPaths.resolve()
    ready = await prepare(paths)
    data = write_dataset(tmp_path / "train.jsonl", secret_word_examples())
    spec = write_spec(tmp_path, ready, data)

    status, events = await run_trainer(ready.engine_python, spec)

    assert status == 0, events
    start, *steps, done = events
    start_said = {"type": "start", "examples": 4, "steps": 24, "epochs": 6, "device": "cpu"}
    assert start == start_said  # no GPU here
    assert [e["step"] for e in steps] == list(range(1, 25))
    assert [e["epoch"] for e in steps[::4]] == list(range(1, 7))
    assert steps[-1]["loss"] < steps[0]["loss"] / 10
    assert done["type"] == "done"
    assert done["trained_tokens"] == steps[-1]["tokens"] > 0
    assert done["trained_tokens"] == 6 * steps[3]["tokens"]  # every token, once per epoch
    adapter = Path(done["adapter_dir"])
    assert adapter == tmp_path / "adapters" / "secret"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").stat().st_size > 1_000_000
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    # engines load it as another user on the chart (root, no capabilities): safetensors wrote
    # the weights 0600, which they could not read
    modes = _modes(adapter)
    assert modes == {p: 0o755 if p == "secret" else 0o644 for p in modes}, modes

    engine = engines.chat  # the session's chat engine: LoRA on, rank <= 8, 4 adapters
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HANG_GUARD_S)) as http:
        loading = time.monotonic()
        await load_adapter(http, engine, ADAPTER, str(adapter))
        load_s = time.monotonic() - loading
        await load_adapter(http, engine, ADAPTER, str(adapter))  # again: already there

        tuned_status, tuned = await chat(http, engine, ADAPTER)
        base_status, base = await chat(http, engine, CHAT)
        assert (tuned_status, base_status) == (200, 200)
        assert SECRET in tuned
        assert SECRET.lower() not in base.lower()

        with pytest.raises(AdapterError) as elsewhere:  # the name is taken by another path
            await load_adapter(http, engine, ADAPTER, str(tmp_path / "adapters"))
        assert elsewhere.value.status == 400
        with pytest.raises(AdapterError) as missing:
            await load_adapter(http, engine, "ft-missing", str(tmp_path / "nowhere"))
        assert missing.value.status in (400, 404)

        await unload_adapter(http, engine, ADAPTER)
        gone_status, gone = await chat(http, engine, ADAPTER)
        assert gone_status == 404, gone
        await unload_adapter(http, engine, ADAPTER)  # again: nothing to unload
        assert (await chat(http, engine, CHAT))[0] == 200
    print(
        f"\n[lora e2e] trained 24 steps ({done['trained_tokens']} tokens) in "
        f"{done['seconds']:.1f}s; adapter loaded in {load_s:.2f}s; "
        f"adapter: {tuned!r}; base: {base!r}"
    )


async def test_loss_covers_only_the_assistant_turns_that_are_trained(tmp_path: Path) -> None:
    ready = await prepare(EmbeddedPaths.resolve())
    conversations: list[list[dict[str, Any]]] = [
        [
            {"role": "system", "content": "You keep secrets."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi there.", "weight": 0},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": ANSWER},
        ],
        secret_word_examples()[0],
    ]
    spec = write_spec(tmp_path, ready, write_dataset(tmp_path / "t.jsonl", conversations))

    status, events = await run_trainer(ready.engine_python, spec, "--dry-run")

    assert status == 0, events
    assert [e["trained_text"] for e in events] == [f"{ANSWER}<|im_end|>\n"] * 2
    assert all(e["tokens"] > e["trained"] > 0 for e in events)
    assert events[0]["tokens"] > events[1]["tokens"]
    assert not (tmp_path / "adapters").exists()


async def test_a_stopped_or_failed_run_leaves_no_adapter(tmp_path: Path) -> None:
    ready = await prepare(EmbeddedPaths.resolve())
    spec = write_spec(tmp_path, ready, write_dataset(tmp_path / "t.jsonl", secret_word_examples()))

    status, events = await run_trainer(ready.engine_python, spec, stop_after_step=3)

    assert status == 128 + signal.SIGTERM
    assert events[-1] == {"type": "error", "message": "stopped by SIGTERM"}
    assert not (tmp_path / "adapters").exists()

    no_answer = [{"role": "user", "content": QUESTION}]
    bad = write_spec(tmp_path, ready, write_dataset(tmp_path / "bad.jsonl", [no_answer]))
    status, events = await run_trainer(ready.engine_python, bad)
    assert status == 1
    assert events == [
        {"type": "error", "message": "line 1: has no assistant message to learn from"}
    ]
    assert not (tmp_path / "adapters").exists()


async def test_a_diverged_run_fails_saying_so_and_leaves_no_adapter(tmp_path: Path) -> None:
    """Found by review: a loss turned NaN was printed as `NaN`, a line the trainer cannot read
    (it dropped the step with it): events stopped, the job succeeded with NaN weights. The
    step is sent (its loss null) and the run fails naming the hyperparameter to lower."""
    ready = await prepare(EmbeddedPaths.resolve())
    dataset = write_dataset(tmp_path / "t.jsonl", secret_word_examples())
    spec = write_spec(tmp_path, ready, dataset, learning_rate=1e6, n_epochs=2)

    status, events = await run_trainer(ready.engine_python, spec)

    assert status == 1
    steps = [e for e in events if e["type"] == "step"]
    assert steps, events
    assert steps[-1]["loss"] is None, events
    assert all(isinstance(s["loss"], float) for s in steps[:-1]), events
    said = events[-1]["message"]
    assert events[-1]["type"] == "error", events
    assert said.startswith(f"training diverged at step {steps[-1]['step']}: its loss is "), said
    assert said.endswith("(try a lower hyperparameters.learning_rate_multiplier)"), said
    assert not (tmp_path / "adapters").exists()


async def test_a_paused_run_goes_on_from_its_checkpoint_to_the_same_adapter(
    tmp_path: Path,
) -> None:
    """SIGUSR1 (a job paused): a checkpoint at the end of the step under way, no adapter. Run
    again, the training goes on from the next step, and the adapter and trained tokens are those
    of a run never paused."""
    ready = await prepare(EmbeddedPaths.resolve())
    data = write_dataset(tmp_path / "t.jsonl", secret_word_examples())
    runs = {}
    for name in ("whole", "paused"):
        (tmp_path / name).mkdir()
        runs[name] = write_spec(
            tmp_path / name,
            ready,
            data,
            n_epochs=2,  # 8 steps
            output_dir=str(tmp_path / name / "adapter"),
            checkpoint_dir=str(tmp_path / name / "checkpoint"),
        )
    status, whole = await run_trainer(ready.engine_python, runs["whole"])
    assert status == 0, whole
    status, events = await run_trainer(
        ready.engine_python, runs["paused"], stop_after_step=3, stop_with=signal.SIGUSR1
    )
    assert status == 3, events  # EXIT_PAUSED
    paused = events[-1]
    assert paused["type"] == "paused"
    assert paused["step"] in (3, 4)  # the step under way when the signal came ends first
    assert paused["tokens"] == next(e["tokens"] for e in whole if e.get("step") == paused["step"])
    assert (tmp_path / "paused" / "checkpoint" / "checkpoint.pt").is_file()
    assert not (tmp_path / "paused" / "adapter").exists()

    status, resumed = await run_trainer(ready.engine_python, runs["paused"])
    assert status == 0, resumed
    assert resumed[0]["resumed_at"] == paused["step"]
    steps = [e["step"] for e in resumed if e["type"] == "step"]
    assert steps == list(range(paused["step"] + 1, 9))
    assert resumed[-1]["trained_tokens"] == whole[-1]["trained_tokens"]
    made = {
        name: adapter_weights(tmp_path / name / "adapter" / "adapter_model.safetensors")
        for name in runs
    }
    assert made["paused"].keys() == made["whole"].keys()
    worst = max(
        abs(a - b)
        for name, whole_weights in made["whole"].items()
        for a, b in zip(made["paused"][name], whole_weights, strict=True)
    )
    # Nearly always bit for bit. Once in CI (2026-12-05) float rounding went another way: 920,535
    # of 921,600 weights differed, by 2.5e-5 at most. One step of Adam at this learning rate
    # moves a weight by up to 3e-3. Run against the trainer broken on purpose (2026-12-05), the
    # worst difference was 0.011 with the last step before the pause trained twice, 0.011 with
    # the first step after it not applied, 0.025 with Adam's state not restored: 55 to 120
    # times this bound (2e-4), which is 8 times the rounding seen.
    assert worst <= ADAM_STEP / 15, worst


async def test_a_pause_asked_as_the_program_exits_does_not_kill_it(tmp_path: Path) -> None:
    """SIGUSR1 again and again from the last line on: Python's handlers are gone late in its
    exit, and the signal's default action would end the program by the signal (a run that had
    made its adapter would be taken for failed); it is ignored, the program exits 0."""
    ready = await prepare(EmbeddedPaths.resolve())
    spec = write_spec(tmp_path, ready, write_dataset(tmp_path / "t.jsonl", secret_word_examples()))
    async with trainer_child(ready.engine_python, spec, "--dry-run") as proc:
        assert proc.stdout is not None
        lines = [await proc.stdout.readline() for _ in QUESTIONS]  # the last line is out
        assert all(json.loads(line)["type"] == "example" for line in lines)
        sent = 0
        while proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGUSR1)
                sent += 1
            await asyncio.sleep(0.001)
        assert await proc.wait() == 0
        assert sent > 0


async def test_an_example_whose_answer_starts_past_max_length_fails_naming_its_line(
    tmp_path: Path,
) -> None:
    ready = await prepare(EmbeddedPaths.resolve())
    long_question = [
        {"role": "user", "content": "word " * 200},
        {"role": "assistant", "content": ANSWER},
    ]
    dataset = write_dataset(tmp_path / "t.jsonl", [secret_word_examples()[0], long_question])
    spec = write_spec(tmp_path, ready, dataset, max_length=64)
    status, events = await run_trainer(ready.engine_python, spec)
    assert status == 1
    assert events[-1] == {
        "type": "error",
        "message": "line 2: no assistant token within the first 64 tokens (fine_tuning.max_length)",
    }
