"""`llmaas up`'s gateway settings: LLMAAS_* variables win field by field, and never take away
the values `up` sets in the same section. A section given as a model was replaced whole by any
variable of it: LLMAAS_FINE_TUNING__STOP_CHECKPOINT_S=60 turned fine-tuning off ("none is
configured"), LLMAAS_FILES__MAX_FILE_BYTES put uploads outside the data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.embedded.data_dir import DataDir
from gateway.embedded.paths import CHAT_MODEL_NAME
from gateway.embedded.prepare import Prepared
from gateway.embedded.up import up_settings
from gateway.settings import Settings


def _settings(tmp_path: Path) -> Settings:
    ready = Prepared(tmp_path / "python", tmp_path / "chat", tmp_path / "embed")
    return up_settings(
        gateway_port=8080,
        redis_url="redis://127.0.0.1:6399/0",
        admin_token="kept-admin-token-0123",
        engine_url="http://127.0.0.1:9001",
        data=DataDir(tmp_path / "data"),
        ready=ready,
    )


def test_up_sets_its_engine_files_and_fine_tuning(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert [(m.name, m.engines) for m in settings.models] == [
        (CHAT_MODEL_NAME, ["http://127.0.0.1:9001"])
    ]
    assert settings.files.dir == tmp_path / "data" / "files"
    assert settings.fine_tuning.base_models == {CHAT_MODEL_NAME: tmp_path / "chat"}
    assert settings.fine_tuning.trainer_python == tmp_path / "python"
    assert settings.admin_token == "kept-admin-token-0123"
    # its engine runs with LoRA on CPU, where vLLM crashes on prompt logprobs (review7)
    assert settings.request_policy.prompt_logprobs is False


def test_variables_of_a_section_up_sets_are_merged_into_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMAAS_FINE_TUNING__STOP_CHECKPOINT_S", "60")
    monkeypatch.setenv("LLMAAS_FILES__MAX_FILE_BYTES", "1000")
    monkeypatch.setenv("LLMAAS_ADMIN_TOKEN", "from-the-environment-0123")
    settings = _settings(tmp_path)
    assert settings.fine_tuning.stop_checkpoint_s == 60
    assert settings.fine_tuning.base_models == {CHAT_MODEL_NAME: tmp_path / "chat"}  # still on
    assert settings.files.max_file_bytes == 1000
    assert settings.files.dir == tmp_path / "data" / "files"  # still in the data directory
    assert settings.admin_token == "from-the-environment-0123"
