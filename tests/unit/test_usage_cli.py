"""`llmaas usage --records`' pages, as they are printed (the command itself runs against a real
gateway in tests/integration/test_usage_cli.py)."""

from __future__ import annotations

import argparse
import csv
import io
import json

import orjson
import pytest

from gateway.usage_cli import RECORD_COLUMNS, _print_page

# A record whose key_id holds a line separator orjson and the csv module leave as it is (a JWT
# subject, before subjects were checked): str.splitlines cut it in two.
ODD = {c: 0 for c in RECORD_COLUMNS} | {"key_id": "line\u2028sep\x1erec", "request_id": "r1"}


def _args(**chosen: bool) -> argparse.Namespace:
    return argparse.Namespace(json=chosen.get("json", False), csv=chosen.get("csv", False))


def test_a_json_page_keeps_each_record_on_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    page = (orjson.dumps(ODD) + b"\n" + orjson.dumps(ODD | {"request_id": "r2"}) + b"\n").decode()
    _print_page(page, _args(json=True), first=True)
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert [json.loads(line)["request_id"] for line in lines] == ["r1", "r2"]
    _print_page(page, _args(), first=True)  # the table: it crashed on the half records
    assert "r2" in capsys.readouterr().out


def test_a_csv_page_keeps_each_record_whole(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(ODD), lineterminator="\n")
    writer.writeheader()
    writer.writerow(ODD)
    _print_page(out.getvalue(), _args(csv=True), first=True)
    _print_page(out.getvalue(), _args(csv=True), first=False)  # (its header left out)
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["key_id"] for r in rows] == [ODD["key_id"]] * 2
