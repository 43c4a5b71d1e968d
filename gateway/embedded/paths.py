"""Where the embedded default keeps what it prepares once: the engine venv and the models
(what a run keeps, `llmaas up`'s data directory, is in data_dir.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CHAT_MODEL_NAME = "smollm2-135m-instruct"
# SmolLM2's chat template has no tool section; named and "required" tool choices work through
# structured outputs, and hermes parses them (the e2e tests compare them with vLLM's bodies).
CHAT_TOOL_PARSER = "hermes"
EMBEDDING_MODEL_NAME = "all-minilm-l6-v2"


def default_home(env: Mapping[str, str]) -> Path:
    """$LLMAAS_HOME when set and not empty, else ~/.cache/llmaas."""
    configured = env.get("LLMAAS_HOME")
    return Path(configured) if configured else Path.home() / ".cache" / "llmaas"


@dataclass(frozen=True, slots=True)
class EmbeddedPaths:
    home: Path

    @classmethod
    def resolve(
        cls, home: Path | None = None, env: Mapping[str, str] | None = None
    ) -> EmbeddedPaths:
        """`home`, else $LLMAAS_HOME, else ~/.cache/llmaas (as an absolute path)."""
        chosen = home if home is not None else default_home(os.environ if env is None else env)
        return cls(chosen.expanduser().resolve())

    @property
    def engine_venv(self) -> Path:
        return self.home / "engine-venv"

    @property
    def engine_python(self) -> Path:
        return self.engine_venv / "bin" / "python"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def chat_model(self) -> Path:
        return self.models / CHAT_MODEL_NAME
