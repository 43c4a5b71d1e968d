"""The `llmaas` command's first statements: SIGHUP ignored by the commands that run for long
(`serve`, `up`) before anything else is imported, then gateway.cli.

Importing what `serve` runs (FastAPI, uvicorn, pydantic, ...; gateway.cli imports it when the
command runs) takes a second or more, and `llmaas up` prepares for minutes (the engine venv, the
model) before it serves: SIGHUP's default action (a terminal's hangup, a `systemctl reload`)
killed them meanwhile. The client commands keep it: a hangup ends them, as it ends any command.

An ignored signal stays ignored across fork and exec. `serve`'s workers (multiprocessing's
spawn) inherit it, and keep it: only their supervisor reloads (gateway/workers.py). `up`'s
children do not inherit it: uvloop (libuv) gives each child every signal's default action back.
So each runs in its own session, which a terminal's hangup does not reach, and is sent SIGTERM
when `up` dies (gateway/embedded/process_group.py): its preparation's steps (pip, the model's
conversion) as Redis and the engine, and the trainer's training runs (gateway/finetune/trainer.py);
Redis and vLLM then do at a SIGHUP what they do."""

from __future__ import annotations

import signal
import sys

LONG_RUNNING = frozenset({"serve", "up"})


def main() -> int:
    if sys.argv[1:2] and sys.argv[1] in LONG_RUNNING:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from gateway.cli import main as cli_main  # noqa: PLC0415 (after the line above)

    return cli_main()
