"""`llmaas keys create|list|update|revoke|rotate` and `llmaas tenants set|update|list|delete`:
the admin API's writes and lists of keys and tenants, as tables or --json."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from gateway.admin_cli_values import (
    KEY_ID_HELP,
    key_id,
    limit,
    limit_or_none,
    model_list,
    names,
    priority,
    priority_or_none,
)
from gateway.cli_options import add_gateway_options, given
from gateway.cli_table import table
from gateway.client_common import AdminError, LocalProblem, segment

if TYPE_CHECKING:
    from gateway.admin_client import AdminClient

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
    "created_at",  # (the listing's order within a tenant)
)
TENANT_COLUMNS = (
    "id",
    "models",
    "rpm",
    "tpm",
    "max_concurrency",
    "priority",
    "media_hosts",
    "disabled",
    "created_at",
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
            type=limit,
            metavar="N",
            help=f"limit of {what} (default: the gateway's limits.{scope}_defaults; none there: "
            "no limit)",
        )
    limits.add_argument(
        "--models",
        type=model_list,
        help='comma-separated allow-list (default: every model; "" allows none)',
    )
    return limits


def admin_options() -> argparse.ArgumentParser:
    """What every admin command takes: the gateway, the admin token, --json."""
    common = argparse.ArgumentParser(add_help=False)
    add_gateway_options(
        common,
        token_flag="--admin-token",
        token_env="LLMAAS_ADMIN_TOKEN",
        token_help="the admin token",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return common


def add_admin_commands(sub: Any) -> None:
    common = admin_options()
    key_limits, tenant_limits = _limit_options("key"), _limit_options("tenant")

    keys = sub.add_parser("keys", help="API keys (admin API)").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser(
        "create", parents=[common, key_limits], help="create a key; shows it once"
    )
    create.add_argument(
        "--tenant",
        required=True,
        help="the tenant the key belongs to (created, with no limits of its own, if new: "
        "a line on stderr says so; tenants list shows them)",
    )
    create.add_argument("--name", help="a label for the key (shown in lists)")
    create.add_argument(
        "--expires-at", help="RFC 3339 with a time zone (e.g. 2027-01-01T00:00:00Z) or Unix seconds"
    )
    listing = keys.add_parser("list", parents=[common], help="list keys (no secrets)")
    listing.add_argument("--tenant", type=given, help="only this tenant's")
    listing.add_argument(
        "--active", action="store_true", help="only keys that work (not revoked, not expired)"
    )
    update = keys.add_parser(
        "update",
        parents=[common],
        help="change a key's limits, models, name or expiry (what is left out stays)",
        description="Change a key's settings in place (same id and secret); every gateway "
        "replica applies them to the key's next request. Options left out stay as they are.",
    )
    update.add_argument("key_id", type=key_id, help=KEY_ID_HELP)
    _change_options(update, "key")
    update.add_argument("--name", help='a label for the key ("" removes it)')
    update.add_argument(
        "--expires-at",
        metavar="TIME|never",
        help="RFC 3339 with a time zone (e.g. 2027-01-01T00:00:00Z) or Unix seconds",
    )
    for action, what in (
        ("revoke", "revoke a key: refused at once on every replica"),
        ("rotate", "a new secret for a key (same id); shows it once, the old one stops at once"),
    ):
        keys.add_parser(action, parents=[common], help=what).add_argument(
            "key_id", type=key_id, help=KEY_ID_HELP
        )

    tenants = sub.add_parser("tenants", help="tenants (admin API)").add_subparsers(
        dest="action", required=True
    )
    tenant_set = tenants.add_parser(
        "set",
        parents=[common, tenant_limits],
        help="replace a tenant's limits and priority (what is left out is no longer set)",
    )
    tenant_set.add_argument("tenant_id", type=given, help="the tenant (created if new)")
    tenant_set.add_argument(
        "--priority", type=priority, help="vLLM request priority of all its requests (lower first)"
    )
    tenant_set.add_argument(
        "--media-hosts",
        metavar="HOSTS|default",
        help="comma-separated hosts its media URLs may name ('' for none; default or omitted: "
        "the gateway's request_policy.media_hosts)",
    )
    tenant_set.add_argument(
        "--disabled",
        action="store_true",
        help="refuse every request of its keys and tokens (403 tenant_disabled)",
    )
    tenant_update = tenants.add_parser(
        "update",
        parents=[common],
        help="change some of a tenant's settings (what is left out stays)",
        description="Change a tenant's settings in place; every gateway replica applies them "
        "to its next request. Options left out stay as they are (`tenants set` replaces them "
        "all).",
    )
    tenant_update.add_argument("tenant_id", type=given, help="the tenant, as tenants list shows it")
    _change_options(tenant_update, "tenant")
    tenant_update.add_argument(
        "--priority",
        type=priority_or_none,
        default=argparse.SUPPRESS,
        metavar="N|none",
        help="vLLM request priority of all its requests (lower first); none: the engines' default",
    )
    tenant_update.add_argument(
        "--media-hosts",
        metavar="HOSTS|default",
        help="comma-separated hosts its media URLs may name ('' for none; default: the "
        "gateway's request_policy.media_hosts)",
    )
    switch = tenant_update.add_mutually_exclusive_group()
    switch.add_argument(
        "--disable",
        dest="disabled",
        action="store_const",
        const=True,
        help="refuse every request of its keys and tokens (403 tenant_disabled), at once on "
        "every replica; its keys, files and usage are kept",
    )
    switch.add_argument(
        "--enable", dest="disabled", action="store_const", const=False, help="serve it again"
    )
    tenants.add_parser("list", parents=[common], help="list tenants and their settings")
    tenants.add_parser(
        "delete",
        parents=[common],
        help="delete a tenant: revokes every key of it (usage records are kept)",
        description="Delete a tenant: every key of it is revoked, at once on every gateway "
        "replica, and its settings and key listing go. Its usage records stay (llmaas usage "
        "--tenant). Setting the id again makes a new tenant; the revoked keys stay revoked.",
    ).add_argument("tenant_id", type=given, help="the tenant, as tenants list shows it")


def _change_options(parser: argparse.ArgumentParser, scope: str) -> None:
    """The options of `keys update` and `tenants update` that both have: each limit (N, or none
    to lift it) and the model allow-list; an option left out changes nothing."""
    for flag, what in (
        ("--rpm", "requests per minute"),
        ("--tpm", "tokens per minute"),
        ("--max-concurrency", "requests in flight"),
    ):
        parser.add_argument(
            flag,
            type=limit_or_none,
            default=argparse.SUPPRESS,  # left out: absent, where `none` is None
            metavar="N|none",
            help=f"limit of {what}; none: the gateway's limits.{scope}_defaults (none there: "
            "no limit)",
        )
    models = parser.add_mutually_exclusive_group()
    models.add_argument(
        "--models", type=model_list, help='comma-separated allow-list ("" allows none)'
    )
    models.add_argument("--every-model", action="store_true", help="lift the allow-list")


def run_admin(args: argparse.Namespace) -> int:
    # (imported when run: `llmaas --help` stays fast)
    from gateway.admin_client import AdminClient  # noqa: PLC0415

    try:
        client = AdminClient(args.url, args.admin_token)
        result = asyncio.run(_call(client, args))
    except LocalProblem as exc:
        print(f"llmaas {args.command} {args.action}: error: {exc}", file=sys.stderr)
        return 2
    except AdminError as exc:
        print(f"llmaas {args.command} {args.action}: {exc}", file=sys.stderr)
        return 1
    if result.get("tenant_created"):
        _new_tenant(result["tenant"])
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows = result.get("data", [result])
    print(table(rows, KEY_COLUMNS if args.command == "keys" else TENANT_COLUMNS))
    if "key" in result:
        print(f"\nkey (shown once): {result['key']}")
    if result.get("deleted"):
        print(f"\ndeleted; keys revoked: {result['keys_revoked']} (its usage records are kept)")
    return 0


def _new_tenant(tenant: str) -> None:
    """On stderr (stdout keeps the key, or --json): a typo in --tenant made a tenant unseen."""
    print(
        f"llmaas keys create: new tenant '{tenant}' created, with the default limits (the "
        "gateway's limits.tenant_defaults); if you meant an existing tenant, check the "
        "spelling (llmaas tenants list)",
        file=sys.stderr,
    )


async def _call(client: AdminClient, args: argparse.Namespace) -> Any:
    if args.command == "tenants":
        if args.action == "list":
            return {"object": "list", "data": await client.every_page("/tenants")}
        path = f"/tenants/{segment(args.tenant_id)}"
        if args.action == "delete":
            return await client.call("DELETE", path)
        if args.action == "update":
            return await client.call("PATCH", path, _tenant_changes(args))
        body = {**_limits(args), "priority": args.priority, "media_hosts": _hosts(args)}
        return await client.call("PUT", path, {**body, "disabled": args.disabled})
    if args.action == "list":
        query = {"tenant": args.tenant} if args.tenant else {}
        keys = await client.every_page(
            "/keys", {**query, **({"active": "true"} if args.active else {})}
        )
        return {"object": "list", "data": keys}
    return await client.call(*_key_request(args))


def _key_request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """The admin API call (method, path, body) of `keys create|update|revoke|rotate`."""
    if args.action == "create":
        body = {
            "tenant": args.tenant,
            "name": args.name,
            "expires_at": args.expires_at,
            **_limits(args),
        }
        return "POST", "/keys", {k: v for k, v in body.items() if v is not None}
    path = f"/keys/{segment(args.key_id)}"
    if args.action == "update":
        return "PATCH", path, _key_changes(args)
    if args.action == "revoke":
        return "DELETE", path, None
    return "POST", f"{path}/rotate", None


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    """What `keys update` and `tenants update` change alike: the limits and the models their
    options name (null lifts a limit or the allow-list)."""
    given = vars(args)
    body: dict[str, Any] = {
        field: given[field] for field in ("rpm", "tpm", "max_concurrency") if field in given
    }
    if args.models is not None:
        body["models"] = args.models
    if args.every_model:
        body["models"] = None
    return body


def _tenant_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The PATCH body of `tenants update`: only what its options name."""
    body = _changes(args)
    if "priority" in vars(args):
        body["priority"] = args.priority
    if args.media_hosts is not None:
        body["media_hosts"] = _hosts(args)
    if args.disabled is not None:
        body["disabled"] = args.disabled
    return body


def _key_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The PATCH body of `keys update`: only what its options name (null lifts or clears)."""
    body = _changes(args)
    if args.name is not None:
        body["name"] = args.name or None
    if args.expires_at is not None:
        body["expires_at"] = None if args.expires_at.lower() == "never" else args.expires_at
    return body


def _hosts(args: argparse.Namespace) -> list[str] | None:
    """--media-hosts as the API takes it: None for "default" (the gateway's list, as for
    `set` without the option)."""
    if args.media_hosts is None or args.media_hosts.strip().lower() == "default":
        return None
    try:
        return names(args.media_hosts, "host")
    except ValueError as exc:
        raise LocalProblem(f"--media-hosts: {exc}") from None


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "rpm": args.rpm,
        "tpm": args.tpm,
        "max_concurrency": args.max_concurrency,
        "models": args.models,
    }
