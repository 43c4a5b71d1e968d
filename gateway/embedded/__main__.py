"""python -m gateway.embedded prepare | paths — what `make test` runs before the e2e tests.

`prepare` installs the engine venv and converts the chat model when they are missing (minutes
the first time, instant later) and prints where everything is, as JSON on stdout; progress goes
to stderr. `paths` prints the same JSON without installing anything (null for what is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path

from gateway.embedded.engine_venv import EngineInstallError
from gateway.embedded.model import ModelPrepareError, chat_model_ready, embedding_model_dir
from gateway.embedded.paths import EmbeddedPaths
from gateway.embedded.prepare import prepare


async def prepared(paths: EmbeddedPaths) -> dict[str, str | None]:
    ready = await prepare(paths)
    return {name: str(path) for name, path in dataclasses.asdict(ready).items()}


async def where(paths: EmbeddedPaths) -> dict[str, str | None]:
    python = paths.engine_python
    embed: Path | None = None
    if python.exists():
        try:
            embed = await embedding_model_dir(python)
        except ModelPrepareError:
            embed = None
    return {
        "engine_python": str(python) if python.exists() else None,
        "chat_model": str(paths.chat_model) if chat_model_ready(paths) else None,
        "embedding_model": str(embed) if embed else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.embedded", description=__doc__)
    parser.add_argument("--home", type=Path, help="default: $LLMAAS_HOME or ~/.cache/llmaas")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="install the engine venv and the models if missing")
    commands.add_parser("paths", help="print where they are, installing nothing")
    args = parser.parse_args()
    paths = EmbeddedPaths.resolve(args.home)
    try:
        found = asyncio.run(prepared(paths) if args.command == "prepare" else where(paths))
    except (EngineInstallError, ModelPrepareError) as exc:
        sys.exit(f"error: {exc}")
    print(json.dumps({"home": str(paths.home), **found}, indent=2))


if __name__ == "__main__":
    main()
