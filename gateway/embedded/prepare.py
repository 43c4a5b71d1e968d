"""Everything the embedded default and the end-to-end tests need, prepared once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.embedded.engine_venv import ensure_engine_venv
from gateway.embedded.model import embedding_model_dir, prepare_chat_model
from gateway.embedded.paths import EmbeddedPaths


@dataclass(frozen=True, slots=True)
class Prepared:
    engine_python: Path
    chat_model: Path
    embedding_model: Path


async def prepare(paths: EmbeddedPaths) -> Prepared:
    python = await ensure_engine_venv(paths)
    chat = await prepare_chat_model(paths, python)
    return Prepared(python, chat, await embedding_model_dir(python))
