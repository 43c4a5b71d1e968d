"""`llmaas trainer --config FILE`: run a trainer worker with the gateway's own config file."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.settings import Settings


def add_trainer_command(sub: Any) -> None:
    trainer = sub.add_parser(
        "trainer",
        help="run a fine-tuning worker (takes jobs from Redis, trains LoRA adapters)",
        description="Take fine-tuning jobs from the queue in Redis and train them, one at a "
        "time, with fine_tuning.trainer_python. Reads the same config file as `llmaas serve`.",
    )
    trainer.add_argument("--config", type=Path, help="YAML file, e.g. configs/gateway.yaml")
    trainer.add_argument("--worker", help="this worker's name in job events (default host:pid)")
    trainer.set_defaults(func=run_trainer)


def run_trainer(args: argparse.Namespace) -> int:
    # (imported when run: `llmaas --help` stays fast)
    from gateway.settings_load import (  # noqa: PLC0415
        ConfigError,
        invalid_configuration,
        load_settings,
    )

    try:
        settings = load_settings(args.config)
    except (ConfigError, OSError) as exc:
        print(invalid_configuration("trainer", exc), file=sys.stderr)
        return 2
    if not settings.redis_url:
        print("llmaas trainer: redis_url is required (jobs are queued in Redis)", file=sys.stderr)
        return 2
    if not settings.fine_tuning.base_models:
        print("llmaas trainer: fine_tuning.base_models is empty: nothing to train", file=sys.stderr)
        return 2
    asyncio.run(_serve(settings, args.worker))
    return 0


async def _serve(settings: Settings, worker: str | None) -> None:
    # (imported when run: `llmaas --help` stays fast)
    from gateway.finetune.trainer import Trainer  # noqa: PLC0415
    from gateway.logs import configure_logging  # noqa: PLC0415
    from gateway.redis_client import redis_client  # noqa: PLC0415

    listener = configure_logging(settings.log_level)
    assert settings.redis_url is not None
    redis = redis_client(
        settings.redis_url, max(settings.redis_timeout_s, 5.0), 8, settings.redis_password
    )
    trainer = Trainer(settings, redis, worker)
    running = asyncio.create_task(trainer.run())
    loop = asyncio.get_running_loop()
    # A job in training writes its checkpoint and is queued again. SIGHUP too: a terminal's
    # hangup (a closed ssh session) killed the trainer outright, its run cut with no checkpoint
    # and the job left `running` until the sweep failed it as lost.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, running.cancel)
    try:
        await running
    except asyncio.CancelledError:
        pass
    finally:
        await redis.aclose()
        listener.stop()
