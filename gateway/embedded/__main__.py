"""python -m gateway.embedded prepare | paths — what `make test` runs before the e2e tests."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path

from gateway.embedded.paths import EmbeddedPaths
from gateway.embedded.prepare import prepare


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.embedded", description=__doc__)
    parser.add_argument("command", choices=["prepare", "paths"])
    parser.add_argument("--home", type=Path, help="default: $LLMAAS_HOME or ~/.cache/llmaas")
    args = parser.parse_args()
    paths = EmbeddedPaths.resolve(args.home)
    if args.command == "paths":
        found = {
            "home": paths.home,
            "engine_python": paths.engine_python,
            "chat_model": paths.chat_model,
        }
    else:
        found = dataclasses.asdict(asyncio.run(prepare(paths)))
    print(json.dumps({key: str(value) for key, value in found.items()}, indent=2))


if __name__ == "__main__":
    main()
