"""The `llmaas` command: serve the gateway, run the simulator, or bring up the embedded default."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

# Building the parser imports only what options and help need; each command imports what it
# runs when it runs (FastAPI, uvicorn, aiohttp, Redis took a second before any --help;
# tests/integration/test_cli_entry_points.py keeps them out).
from gateway.admin_cli import add_admin_commands, run_admin
from gateway.cli_options import at_least_one, fixed_port, port_number
from gateway.engines_cli import add_engines_command
from gateway.finetune.trainer_cli import add_trainer_command
from gateway.finetune_cli import add_finetune_commands
from gateway.sim.options import add_sim_arguments, from_args
from gateway.usage_cli import add_usage_command


def _serve(args: argparse.Namespace) -> int:
    # (imported when run: `llmaas --help` stays fast)
    from gateway.server import run_server  # noqa: PLC0415
    from gateway.settings_load import (  # noqa: PLC0415
        ConfigError,
        invalid_configuration,
        usable_settings,
    )

    try:
        settings = usable_settings(args.config)
    except (ConfigError, OSError) as exc:
        print(invalid_configuration("serve", exc), file=sys.stderr)
        return 2
    # A flag given wins over the file and the environment (argparse checked its range).
    flags = {"host": args.host, "port": args.port, "workers": args.workers}
    settings = settings.model_copy(update={k: v for k, v in flags.items() if v is not None})
    try:
        run_server(settings, args.config)
    except ConfigError as exc:  # (the file changed as it started: PinnedConfig)
        print(invalid_configuration("serve", exc), file=sys.stderr)
        return 2
    return 0


def _sim(args: argparse.Namespace) -> int:
    try:
        config, host, port = from_args(args)
    except ValueError as exc:
        print(f"llmaas sim: error: {exc}", file=sys.stderr)
        return 2
    # (imported when run: `llmaas --help` stays fast)
    from gateway.sim.server import run  # noqa: PLC0415

    run(config, host, port)
    return 0


def _up(args: argparse.Namespace) -> int:
    # (imported when run: `llmaas --help` stays fast)
    from gateway.embedded.up import run_up  # noqa: PLC0415

    return run_up(
        gateway_port=args.port,
        engine_port=args.engine_port,
        home=args.home,
        data_dir=args.data_dir,
        redis_port=args.redis_port,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmaas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (what the Helm chart runs)")
    serve.add_argument("--config", type=Path, help="YAML file, e.g. configs/gateway.yaml")
    serve.add_argument("--host", help="address to listen on (default: the host setting, 127.0.0.1)")
    serve.add_argument(
        "--port", type=port_number, help="(default: the port setting, 8080; 0: any free port)"
    )
    serve.add_argument(
        "--workers", type=at_least_one, help="worker processes (default: the workers setting, 1)"
    )
    serve.set_defaults(func=_serve)

    sim = sub.add_parser(
        "sim",
        help="run the vLLM-compatible engine simulator (for tests and benchmarks)",
        description="A vLLM-compatible engine simulator: OpenAI routes with timed fake tokens.",
    )
    add_sim_arguments(sim)
    sim.set_defaults(func=_sim)

    add_admin_commands(sub)
    add_engines_command(sub)
    add_usage_command(sub)
    add_trainer_command(sub)
    add_finetune_commands(sub)

    up = sub.add_parser("up", help="Redis + one local vLLM engine + the gateway (make run)")
    up.add_argument(
        "--port", type=fixed_port, help="gateway port (default: $LLMAAS_PORT, else 8080)"
    )
    up.add_argument(
        "--engine-port", type=port_number, default=0, help="engine port (default: free)"
    )
    up.add_argument(
        "--redis-port",
        type=port_number,
        default=0,
        help="its private Redis's port (default: free; not with LLMAAS_REDIS_URL)",
    )
    up.add_argument(
        "--home", type=Path, help="cache directory (default: $LLMAAS_HOME, else ~/.cache/llmaas)"
    )
    up.add_argument(
        "--data-dir",
        type=Path,
        help="what a run keeps for the next: Redis's data (keys, jobs, usage) in redis/, "
        "uploads and fine-tuned adapters in files/, the engine's log in logs/, the development "
        "key and admin token in credentials.json (default: HOME)",
    )
    up.set_defaults(func=_up)
    for name in ("keys", "tenants"):
        sub.choices[name].set_defaults(func=run_admin)
    _describe(parser)
    return parser


def _subcommands(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    """The parser's subcommands, if it has any (argparse keeps them among its private
    `_actions`: the one place this module reads them)."""
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command without a description of its own the line its parent lists it
    with, so that `llmaas up --help` says what `up` does, not only its options."""
    subs = _subcommands(parser)
    if subs is None:
        return
    for listed in subs._choices_actions:
        child = subs.choices[listed.dest]
        if child.description is None and listed.help:
            child.description = f"{listed.help[0].upper()}{listed.help[1:]}."
        _describe(child)


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)command parser the command line chose: `llmaas jobs create`'s for
    `llmaas jobs create --n-epochs 3`."""
    while True:
        subs = _subcommands(parser)
        name = None if subs is None else getattr(args, subs.dest, None)
        if subs is None or name not in subs.choices:
            return parser
        parser = subs.choices[name]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            parser = _parser()
            args, extra = parser.parse_known_args(argv)  # (--help, usage errors exit here)
            if extra:  # said by the command's own parser, with its usage, not llmaas's
                _chosen(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
            code = int(args.func(args))
        finally:
            sys.stdout.flush()  # a reader gone shows here, not in the interpreter's exit
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`llmaas engines --json | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return code


if __name__ == "__main__":
    raise SystemExit(main())
