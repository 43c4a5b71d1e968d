"""Where the embedded default keeps what it prepares once: the engine venv, models, logs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CHAT_MODEL_NAME = "smollm2-135m-instruct"
EMBEDDING_MODEL_NAME = "all-minilm-l6-v2"


@dataclass(frozen=True, slots=True)
class EmbeddedPaths:
    home: Path

    @classmethod
    def resolve(cls, home: Path | None = None, env: dict[str, str] | None = None) -> EmbeddedPaths:
        """`home`, else $LLMAAS_HOME, else ~/.cache/llmaas."""
        environ = os.environ if env is None else env
        if home is None:
            configured = environ.get("LLMAAS_HOME")
            home = Path(configured) if configured else Path.home() / ".cache" / "llmaas"
        return cls(home.expanduser().resolve())

    @property
    def engine_venv(self) -> Path:
        return self.home / "engine-venv"

    @property
    def engine_python(self) -> Path:
        return self.engine_venv / "bin" / "python"

    @property
    def chat_model(self) -> Path:
        return self.home / "models" / CHAT_MODEL_NAME

    @property
    def logs(self) -> Path:
        return self.home / "logs"
