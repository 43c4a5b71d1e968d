"""`llmaas usage` as an admin runs it: totals as a table, JSON and CSV; raw records, all pages."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.netutil import free_port
from tests.integration.conftest import MODEL
from tests.integration.metering_fixture import Meter, meter_fixture  # noqa: F401 (the fixture)
from tests.support.cli import run_llmaas
from tests.support.gateways import ADMIN_TOKEN

pytestmark = pytest.mark.asyncio(loop_scope="session")

HELLO: Any = [{"role": "user", "content": "hi"}]


async def usage(meter: Meter, *args: str, token: str = ADMIN_TOKEN) -> tuple[int, str, str]:
    return await run_llmaas(meter.gateway, "usage", *args, token=token)


async def test_usage_totals_and_records_through_the_cli(meter: Meter) -> None:
    key = await meter.new_key("cli-usage")
    async with meter.client(key) as oai:
        for tokens in (2, 3, 4):
            await oai.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=tokens)
    records = await meter.wait_records("cli-usage", 3)

    code, out, err = await usage(meter, "--tenant", "cli-usage", "--json")
    assert code == 0, err
    [row] = json.loads(out)["data"]
    assert (row["requests"], row["completion_tokens"]) == (3, 9)
    assert row["prompt_tokens"] == sum(r.prompt_tokens for r in records)

    code, out, _ = await usage(meter, "--tenant", "cli-usage", "--group-by", "model,day", "--csv")
    [row_csv] = list(csv.DictReader(io.StringIO(out)))
    assert (row_csv["model"], row_csv["requests"], row_csv["day"]) == (MODEL, "3", records[0].day)

    code, out, _ = await usage(meter, "--tenant", "cli-usage")
    lines = out.splitlines()
    assert lines[0].startswith("usage from ")
    assert lines[1].split()[:3] == ["tenant", "key_id", "model"]
    assert lines[-1].split()[0] == "TOTAL"
    header, total = lines[1].split(), lines[-1].split()
    assert header[-3:] == ["total_tokens", "fine_tune_jobs", "trained_tokens"]
    assert total[-3:] == [str(row["total_tokens"]), "0", "0"]

    code, out, _ = await usage(meter, "--tenant", "cli-usage", "--records", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [r.id for r in records]
    code, out, err = await usage(meter, "--tenant", "cli-usage", "--records", "--csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["completion_tokens"] for r in rows] == ["2", "3", "4"]
    assert [r["stream"] for r in rows] == ["false"] * 3  # was Python's False
    code, out, err = await usage(meter, "--tenant", "cli-usage", "--records")
    assert code == 0, err
    columns, *table_rows = out.splitlines()
    assert columns.split()[3:5] == ["model", "route"]  # a fine-tuning record reads as one
    assert [row.split()[4] for row in table_rows] == ["chat/completions"] * 3


async def test_csv_records_write_booleans_as_true_and_false(meter: Meter) -> None:
    key = await meter.new_key("cli-bools")
    async with meter.client(key) as oai:
        await oai.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
        stream = await oai.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=2, stream=True
        )
        async for _ in stream:
            pass
    await meter.wait_records("cli-bools", 2)
    code, out, err = await usage(meter, "--tenant", "cli-bools", "--records", "--csv")
    assert code == 0, err
    assert sorted(r["stream"] for r in csv.DictReader(io.StringIO(out))) == ["false", "true"]


async def test_csv_cells_a_spreadsheet_would_run_are_kept_as_text(meter: Meter) -> None:
    """Found by review: a client-chosen value that starts like a formula (a request id `-A1`;
    a JWT subject `=HYPERLINK(…)`) went into the CSV exports as it was, and a spreadsheet
    opening them ran it."""
    key = await meter.new_key("cli-formula")
    async with meter.client(key) as oai:
        await oai.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=2, extra_headers={"x-request-id": "-A1"}
        )
    await meter.wait_records("cli-formula", 1)
    code, out, err = await usage(meter, "--tenant", "cli-formula", "--records", "--csv")
    assert code == 0, err
    [row] = list(csv.DictReader(io.StringIO(out)))
    assert row["request_id"] == "'-A1"
    url = f"{meter.gateway}/admin/v1/usage/records?tenant=cli-formula&format=csv"
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with meter.http.get(url, headers=headers) as resp:
        [row] = list(csv.DictReader(io.StringIO(await resp.text())))
    assert row["request_id"] == "'-A1"
    code, out, err = await usage(meter, "--tenant", "cli-formula", "--records", "--json")
    assert json.loads(out)["request_id"] == "-A1"  # (JSON is no spreadsheet: as it was)


async def test_usage_help_says_where_records_start(meter: Meter) -> None:
    # --records has no 30-day default: it pages through every record kept (retention_days)
    code, out, _ = await usage(meter, "--help")
    assert code == 0
    assert "--records the first record kept" in " ".join(out.split())


async def test_group_by_with_records_is_a_usage_error(meter: Meter) -> None:
    """Records are one per request: --group-by was silently ignored beside --records."""
    code, out, err = await usage(meter, "--records", "--group-by", "model", "--csv")
    assert (code, out) == (2, "")
    assert "--group-by" in err
    assert "--records" in err
    code, out, _ = await usage(meter, "--help")
    assert "records are never grouped" in " ".join(out.split())


async def test_usage_cli_says_what_went_wrong(meter: Meter) -> None:
    for records in ([], ["--records"]):  # (was the gateway's 400, exit 1)
        code, out, err = await usage(meter, *records, "--start", "2020-13-01")
        assert (code, out) == (2, ""), err
        assert err.rstrip().endswith(
            "argument --start: expected YYYY-MM-DD, RFC 3339 with a time "
            "zone (2026-11-01T00:00:00Z) or Unix seconds; got '2020-13-01'"
        ), err
    # what the gateway's clock decides (a range up to its today) is its to refuse, naming it
    code, _, err = await usage(meter, "--start", "2020-01-01")
    assert code == 1
    assert err.rstrip().endswith("more than 400 days; narrow it. (start)"), err
    # a bad --group-by was the gateway's 400 naming its query parameter (exit 1); an empty one
    # (an unset shell variable) the default grouping
    for bad, said in (
        ("colour", "argument --group-by: 'colour'; use a comma-separated list of tenant, key_id"),
        ("day,day", "argument --group-by: 'day,day'; use a comma-separated list"),
        (",", "argument --group-by: ','; use"),
        ("", "argument --group-by: cannot be empty"),
    ):
        code, out, err = await usage(meter, "--group-by", bad)
        assert (code, out) == (2, ""), bad
        assert said in err, err
    code, _, err = await usage(meter, token="wrong-token-0123456789")
    assert code == 1
    assert "HTTP 401" in err


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("--start", "yesterday"), "--start"),
        (("--start", "20261206"), "--start"),  # a day without dashes: not Unix seconds of 1970
        (("--end", "9" * 20), "--end"),  # past the year 9999
        (("--end", "2026-11-30T09:30:00Z"), "--end"),  # totals are per UTC day
        (("--start", "2026-12-01", "--end", "2026-11-01"), "--start"),
        (("--start", "2025-01-01", "--end", "2026-12-01"), "--start"),  # more than 400 days
        (
            ("--records", "--start", "2026-12-01T00:00:01Z", "--end", "2026-12-01T00:00:00Z"),
            "--start",
        ),
    ],
)
async def test_a_start_or_end_the_gateway_would_refuse_is_a_usage_error(
    args: tuple[str, ...], option: str
) -> None:
    """Found 2026-12-07: a malformed --start / --end was sent, and the gateway's 400 was exit 1
    naming its query parameter (a script retries that); --group-by was already checked before
    sending. Nothing listens at the --url: nothing is sent."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run_llmaas(nowhere, "usage", *args, token=ADMIN_TOKEN)
    assert (code, out) == (2, ""), err
    assert f"llmaas usage: error: argument {option}: " in err, err
    assert "cannot reach" not in err


async def test_a_start_and_end_the_gateway_takes_are_sent(meter: Meter) -> None:
    """What --start / --end accept, the gateway accepts: the same reading of both."""
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    for args in (
        ("--start", "2026-11-01T00:00:00Z", "--end", "2026-12-01T00:00:00Z"),
        ("--start", tomorrow),  # a client's date ahead of UTC's: an empty range
        ("--start", "2026-11-01", "--end", "2026-11-01"),
        ("--records", "--start", "1764547200", "--end", "2026-12-01t09:30:00z"),
        ("--records", "--start", "2026-12-01T09:30:00Z", "--end", "2026-12-01T09:30:00Z"),
    ):
        code, _, err = await usage(meter, *args, "--json")
        assert code == 0, (args, err)
        code, _, err = await run_llmaas(
            f"http://127.0.0.1:{free_port()}", "usage", *args, token=ADMIN_TOKEN
        )
        assert code == 1, err  # sent: the gateway is what was not there
        assert "llmaas usage: cannot reach the gateway at " in err, err
