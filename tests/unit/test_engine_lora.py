"""LoRA-ready engines: off unless asked for; when on, vLLM gets the LoRA flags and the runtime
load/unload endpoints (the env switch), and nothing else of the command changes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gateway.embedded.engine import EngineSpec, engine_env


def spec(tmp_path: Path, max_loras: int = 0, max_lora_rank: int = 8) -> EngineSpec:
    base = EngineSpec(tmp_path / "python", tmp_path / "m", "m", 8000, tmp_path / "log")
    return dataclasses.replace(base, max_loras=max_loras, max_lora_rank=max_lora_rank)


def test_lora_is_off_by_default(tmp_path: Path) -> None:
    off = spec(tmp_path)
    assert not off.lora
    assert not {"--enable-lora", "--max-loras", "--max-lora-rank"} & set(off.command())
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in engine_env({"PATH": "/bin"}, lora=off.lora)


def test_lora_on_adds_its_flags_and_runtime_updates(tmp_path: Path) -> None:
    on = spec(tmp_path, max_loras=4, max_lora_rank=16)
    argv = on.command()
    assert on.lora
    assert argv.count("--enable-lora") == 1
    assert argv[argv.index("--max-loras") + 1] == "4"
    assert argv[argv.index("--max-lora-rank") + 1] == "16"
    without = [a for a in argv if a not in ("--enable-lora", "--max-loras", "4")]
    without = [a for a in without if a not in ("--max-lora-rank", "16")]
    assert without == spec(tmp_path).command()
    env = engine_env({"PATH": "/bin", "LLMAAS_ADMIN_TOKEN": "secret"}, lora=on.lora)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"  # the engine's own settings stay
    assert "LLMAAS_ADMIN_TOKEN" not in env


def test_lora_flags_come_before_the_extra_args(tmp_path: Path) -> None:
    on = dataclasses.replace(spec(tmp_path, max_loras=1), extra_args=("--max-num-seqs", "8"))
    argv = on.command()
    assert argv[-2:] == ["--max-num-seqs", "8"]
    assert argv.index("--enable-lora") < argv.index("--max-num-seqs")
