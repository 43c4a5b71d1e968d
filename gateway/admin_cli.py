"""`llmaas keys create|list|revoke|rotate`, `llmaas tenants set|list`, `llmaas engines`: tables,
or --json."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

from gateway.admin_client import AdminClient, AdminError, segment
from gateway.cli_options import add_gateway_options

KEY_COLUMNS = (
    "id",
    "tenant",
    "name",
    "models",
    "rpm",
    "tpm",
    "max_concurrency",
    "expires_at",
    "revoked",
)
TENANT_COLUMNS = (
    "id",
    "models",
    "rpm",
    "tpm",
    "max_concurrency",
    "priority",
    "media_hosts",
    "created_at",
)
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


def _limit_options(scope: str) -> argparse.ArgumentParser:
    """--rpm, --tpm, --max-concurrency and --models of a key or a tenant. A limit left unset
    is the gateway's limits.<scope>_defaults (none by default: no limit at that scope)."""
    limits = argparse.ArgumentParser(add_help=False)
    for flag, what in (
        ("--rpm", "requests per minute"),
        ("--tpm", "tokens per minute"),
        ("--max-concurrency", "requests in flight"),
    ):
        limits.add_argument(
            flag,
            type=int,
            help=f"limit of {what} (default: the gateway's limits.{scope}_defaults; none there: "
            "no limit)",
        )
    limits.add_argument(
        "--models",
        help='comma-separated allow-list (default: every model; "" allows none)',
    )
    return limits


def add_admin_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_gateway_options(
        common,
        token_flag="--admin-token",
        token_env="LLMAAS_ADMIN_TOKEN",
        token_help="the admin token",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    key_limits, tenant_limits = _limit_options("key"), _limit_options("tenant")

    keys = sub.add_parser("keys", help="API keys (admin API)").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser(
        "create", parents=[common, key_limits], help="create a key; shows it once"
    )
    create.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    create.add_argument("--name", help="a label for the key (shown in lists)")
    create.add_argument("--expires-at", help="RFC 3339, e.g. 2027-01-01T00:00:00Z")
    keys.add_parser("list", parents=[common], help="list keys (no secrets)").add_argument(
        "--tenant", help="only this tenant's"
    )
    for action, what in (
        ("revoke", "revoke a key: refused at once on every replica"),
        ("rotate", "a new secret for a key (same id); shows it once, the old one stops at once"),
    ):
        keys.add_parser(action, parents=[common], help=what).add_argument(
            "key_id", type=_given, help="the key's id: sk-llmaas-<id>-…, as keys list shows it"
        )

    tenants = sub.add_parser("tenants", help="tenants (admin API)").add_subparsers(
        dest="action", required=True
    )
    tenant_set = tenants.add_parser(
        "set",
        parents=[common, tenant_limits],
        help="replace a tenant's limits and priority (what is left out is no longer set)",
    )
    tenant_set.add_argument("tenant_id", type=_given, help="the tenant (created if new)")
    tenant_set.add_argument(
        "--priority", type=int, help="vLLM request priority of all its requests (lower first)"
    )
    tenant_set.add_argument(
        "--media-hosts",
        help="comma-separated hosts its media URLs may name ('' for none; omitted: the default)",
    )
    tenants.add_parser("list", parents=[common], help="list tenants and their settings")

    engines = sub.add_parser(
        "engines",
        parents=[common],
        help="engines: models, adapters, health, load (admin API)",
        description="Every engine the gateway routes to, as this gateway replica sees it.",
    )
    engines.set_defaults(func=run_engines, action="list")


def _given(value: str) -> str:
    """An id that names something: an empty one was an 'Unknown path' from the gateway."""
    if not value.strip():
        raise argparse.ArgumentTypeError("cannot be empty")
    return value


def run_admin(args: argparse.Namespace) -> int:
    try:
        client = AdminClient(args.url, args.admin_token)
        result = asyncio.run(_call(client, args))
    except AdminError as exc:
        print(f"llmaas {args.command} {args.action}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows = result.get("data", [result])
    print(table(rows, KEY_COLUMNS if args.command == "keys" else TENANT_COLUMNS))
    if "key" in result:
        print(f"\nkey (shown once): {result['key']}")
    return 0


async def _call(client: AdminClient, args: argparse.Namespace) -> Any:
    if args.command == "tenants":
        if args.action == "list":
            return await client.call("GET", "/tenants")
        body = {**_limits(args), "priority": args.priority, "media_hosts": _hosts(args)}
        return await client.call("PUT", f"/tenants/{segment(args.tenant_id)}", body)
    if args.action == "create":
        body = {
            "tenant": args.tenant,
            "name": args.name,
            "expires_at": args.expires_at,
            **_limits(args),
        }
        return await client.call("POST", "/keys", {k: v for k, v in body.items() if v is not None})
    if args.action == "list":
        query = {"tenant": args.tenant} if args.tenant else None
        return await client.send("GET", "/keys", params=query)
    if args.action == "revoke":
        return await client.call("DELETE", f"/keys/{segment(args.key_id)}")
    return await client.call("POST", f"/keys/{segment(args.key_id)}/rotate")


def _hosts(args: argparse.Namespace) -> list[str] | None:
    if args.media_hosts is None:
        return None
    return [h.strip() for h in args.media_hosts.split(",") if h.strip()]


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    models = (
        None if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
    )
    return {
        "rpm": args.rpm,
        "tpm": args.tpm,
        "max_concurrency": args.max_concurrency,
        "models": models,
    }


def run_engines(args: argparse.Namespace) -> int:
    try:
        client = AdminClient(args.url, args.admin_token)
        result = asyncio.run(client.call("GET", "/engines"))
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


# Columns that hold Unix seconds (as the API gives them; --json keeps them so): a table shows
# them as UTC times.
TIME_COLUMNS = frozenset({"created_at", "expires_at", "finished_at"})


def utc_time(seconds: int) -> str:
    """Unix seconds as a table shows them: 2026-12-03T12:00:00Z."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    def cell(value: Any, column: str = "") -> str:
        if value is None:
            return "-"
        if column in TIME_COLUMNS and type(value) is int:
            return utc_time(value)
        if value == []:  # an allow-list of nothing: not the "-" of no list (everything)
            return "(none)"
        return ",".join(value) if isinstance(value, list) else str(value)

    grid = [list(columns)] + [[cell(row.get(c), c) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in grid) for i in range(len(columns))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in grid
    )
