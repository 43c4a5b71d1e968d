"""`llmaas engines`: every engine the gateway routes to, as one replica sees it (the admin
API's read-only view of the fleet), as a table or --json."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gateway.admin_cli import admin_options
from gateway.cli_table import table
from gateway.client_common import AdminError, LocalProblem

ENGINE_COLUMNS = (
    "url",
    "state",
    "failures",
    "ejections",
    "ejected_until",
    "inflight",
    "running",
    "waiting",
    "kv_usage",
    "models",
    "adapters",
    "last_error",
)


def add_engines_command(sub: Any) -> None:
    engines = sub.add_parser(
        "engines",
        parents=[admin_options()],
        help="engines: models, adapters, health, load (admin API)",
        description="Every engine the gateway routes to, as this gateway replica sees it.",
    )
    engines.set_defaults(func=run_engines, action="list")


def run_engines(args: argparse.Namespace) -> int:
    # (imported when run: `llmaas --help` stays fast)
    from gateway.admin_client import AdminClient  # noqa: PLC0415

    try:
        client = AdminClient(args.url, args.admin_token)
        result = asyncio.run(client.call("GET", "/engines"))
    except LocalProblem as exc:
        print(f"llmaas engines: error: {exc}", file=sys.stderr)
        return 2
    except AdminError as exc:
        print(f"llmaas engines: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(table([_engine_row(e) for e in result["data"]], ENGINE_COLUMNS))
    return 0


def _engine_row(engine: dict[str, Any]) -> dict[str, Any]:
    load, errors = engine["load"], engine["recent_errors"]
    last = errors[-1] if errors else None
    return {
        **engine,
        "failures": engine["consecutive_failures"],
        # a load routing no longer trusts (not scraped lately) is shown as unknown, not as now
        "running": f"{load['running']:g}" if load.get("fresh", True) else "-",
        "waiting": f"{load['waiting']:g}" if load.get("fresh", True) else "-",
        "kv_usage": f"{load['kv_usage']:.0%}" if load.get("fresh", True) else "-",
        "adapters": [a["id"] for a in engine["adapters"]],
        "last_error": None if last is None else f"{last['at']} {last['kind']}",
    }
