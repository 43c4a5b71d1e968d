"""`llmaas usage`: totals as a table (or --json, --csv); `--records` pages through raw records."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from gateway.cli_options import add_gateway_options, given
from gateway.cli_table import table
from gateway.client_common import AdminError, LocalProblem
from gateway.csv_cells import safe_cell
from gateway.metering.group_by import parse_group_by
from gateway.metering.time_range import BoundError, check_days, day_bound, parse_time, record_range

if TYPE_CHECKING:
    from gateway.admin_client import AdminClient

NUMBERS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "total_tokens",
    "fine_tune_jobs",  # fine-tuning, apart from inference: jobs, and the tokens trained on
    "trained_tokens",
)
RECORD_COLUMNS = (
    "time",
    "tenant",
    "key_id",
    "model",
    "route",  # chat/completions, …, fine_tune (its prompt_tokens: the tokens trained on)
    "outcome",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "request_id",
)


def add_usage_command(sub: Any) -> None:
    usage = sub.add_parser("usage", help="token usage from the ledger (admin API)")
    add_gateway_options(
        usage,
        token_flag="--admin-token",
        token_env="LLMAAS_ADMIN_TOKEN",
        token_help="the admin token",
    )
    usage.add_argument("--tenant", type=given, help="only this tenant's usage")
    usage.add_argument(
        "--key-id", type=given, help="only this key's usage (its id, as keys list shows it)"
    )
    usage.add_argument("--model", type=given, help="only this model's usage")
    usage.add_argument(
        "--start",
        type=_time,
        help="totals: a day, YYYY-MM-DD (or a time at 00:00:00Z); --records: also any RFC 3339 "
        "time or Unix seconds (default: totals 30 days back, --records the first record kept)",
    )
    usage.add_argument(
        "--end",
        type=_time,
        help="as --start; a day counts whole, a time is up to, not at, it (default: today; "
        "--records: the latest record)",
    )
    usage.add_argument(
        "--group-by",
        type=_group_by,
        help="comma-separated: tenant,key_id,model,day (default tenant,key_id,model); totals "
        "only: records are never grouped",
    )
    usage.add_argument(
        "--records", action="store_true", help="every raw record, not totals (no --group-by)"
    )
    out = usage.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON (records: one per line)")
    out.add_argument("--csv", action="store_true", help="CSV with a header row")
    usage.set_defaults(func=run_usage)


def _group_by(value: str) -> str:
    """--group-by checked before anything is sent (exit 2, naming the option): the gateway's
    400 was exit 1 and named its query parameter."""
    try:
        return ",".join(parse_group_by(given(value)))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _time(value: str) -> str:
    """--start / --end checked before anything is sent, by the gateway's own reading (exit 2,
    naming the option): the gateway's 400 was exit 1 and named its query parameter. Sent as
    given, for the gateway to read the same."""
    try:
        parse_time(given(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _range_refused(args: argparse.Namespace) -> BoundError | None:
    """What the gateway would refuse of --start and --end together, for totals (days: not a
    time within one, in order, at most 400) or --records; None if nothing. An option left out
    is the gateway's to fill in (from its clock, not this machine's)."""
    try:
        if args.records:
            record_range(args.start, args.end)
            return None
        first = day_bound(args.start, "start") if args.start else None
        last = day_bound(args.end, "end") if args.end else None
        if first is not None and last is not None:
            check_days(first, last)
    except BoundError as exc:
        return exc
    return None


def run_usage(args: argparse.Namespace) -> int:
    if args.records and args.group_by is not None:  # a record is one request: nothing to group
        print(
            "llmaas usage: error: --group-by groups totals; it cannot be used with --records "
            "(leave out --records for grouped totals)",
            file=sys.stderr,
        )
        return 2
    refused = _range_refused(args)
    if refused is not None:
        print(f"llmaas usage: error: argument --{refused.param}: {refused}", file=sys.stderr)
        return 2
    # (imported when run: `llmaas --help` stays fast)
    from gateway.admin_client import AdminClient  # noqa: PLC0415

    try:
        client = AdminClient(args.url, args.admin_token)
        if args.records:
            asyncio.run(_records(client, args))
        else:
            print(_totals_text(asyncio.run(client.call("GET", _path("/usage", args))), args))
    except LocalProblem as exc:
        print(f"llmaas usage: error: {exc}", file=sys.stderr)
        return 2
    except AdminError as exc:
        print(f"llmaas usage: {exc}", file=sys.stderr)
        return 1
    return 0


def _path(route: str, args: argparse.Namespace, **extra: str) -> str:
    query = {
        "tenant": args.tenant,
        "key_id": args.key_id,
        "model": args.model,
        "start": args.start,
        "end": args.end,
        **extra,
    }
    if route == "/usage":
        query["group_by"] = args.group_by
    pairs = {k: v for k, v in query.items() if v}
    return route + ("?" + urlencode(pairs) if pairs else "")


def _totals_text(result: dict[str, Any], args: argparse.Namespace) -> str:
    rows: list[dict[str, Any]] = result["data"]
    columns = (*result["group_by"], *NUMBERS)
    if args.json:
        return json.dumps(result, indent=2)
    if args.csv:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", restval=0)
        writer.writeheader()
        writer.writerows({k: safe_cell(v) for k, v in row.items()} for row in rows)
        return out.getvalue().rstrip("\n")
    total = {result["group_by"][0]: "TOTAL"} | {n: sum(r.get(n, 0) for r in rows) for n in NUMBERS}
    span = f"usage from {result['start']} to {result['end']} (UTC days)"
    return span + "\n" + table([*rows, total] if rows else [], columns)


async def _records(client: AdminClient, args: argparse.Namespace) -> None:
    """Follow x-next-cursor until the last page; print as the pages come.

    A page may be short or empty and still have a cursor: the gateway bounds the ledger
    entries one page examines, so a rarely matching filter takes several pages."""
    fmt = "csv" if args.csv else "jsonl"
    after = ""
    first = True
    while True:
        extra = {"format": fmt, "limit": "5000", **({"after": after} if after else {})}
        text, headers = await client.text(_path("/usage/records", args, **extra))
        _print_page(text, args, first=first)
        first = False
        after = headers.get("x-next-cursor", "")
        if not after:
            return


def _print_page(text: str, args: argparse.Namespace, *, first: bool) -> None:
    """One page as the chosen format; the header only once, nothing for an empty later page."""
    # (not splitlines(): it also ends a line at U+2028 and other separators that orjson and
    # the csv module leave as they are inside a value, which cut a record in two)
    lines = text.rstrip("\n").split("\n") if text.strip() else []
    if args.csv:
        rows = lines if first else lines[1:]
    elif args.json:
        rows = lines
    else:
        rendered = table([json.loads(line) for line in lines], RECORD_COLUMNS)
        rows = rendered.splitlines() if first else rendered.splitlines()[1:]
    if rows:
        print("\n".join(rows))
