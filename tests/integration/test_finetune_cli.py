"""`llmaas files` and `llmaas jobs` as a tenant runs them: the installed entry point in a
subprocess, against a real gateway and Redis (the API itself: test_fine_tuning.py). Lists are
read whole, page after page; a local training file is uploaded before its job is created."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from gateway.finetune.job_store import JobStore
from gateway.finetune.jobs import Event
from tests.integration.finetune_stack import (
    BASE,
    DATASET,
    ft_fixture,
    upload_dataset,
)
from tests.integration.tenant_stack import TenantStack
from tests.support.cli import run_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")


ft = ft_fixture("ft-cli")


async def test_the_files_and_jobs_commands(ft: TenantStack, tmp_path: Path) -> None:
    auth = ("--url", ft.gateway, "--api-key", await ft.key("ft-cli"))
    data = tmp_path / "train.jsonl"
    data.write_bytes(DATASET)
    code, out, err = await run_cli("files", "upload", str(data), *auth, "--json")
    assert code == 0, err
    assert "uploading" not in err  # a small file's upload shows no progress
    file_id = json.loads(out)["id"]
    code, out, err = await run_cli("files", "list", *auth)
    assert code == 0, err
    assert file_id in out
    assert "train.jsonl" in out
    row = next(line for line in out.splitlines() if file_id in line).split()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row[-1])  # created_at, UTC
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"messages": []}\n')
    code, out, err = await run_cli("files", "upload", str(bad), *auth)
    assert code == 1
    assert "Line 1" in err
    assert "(file)" in err

    code, out, err = await run_cli(
        "jobs",
        "create",
        "--model",
        BASE,
        "--training-file",
        file_id,
        "--epochs",
        "2",
        *auth,
        "--suffix",
        "cli",
        "--json",
    )
    assert code == 0, err
    job = json.loads(out)
    assert (job["status"], job["hyperparameters"]["n_epochs"]) == ("queued", 2)
    code, out, err = await run_cli("jobs", "list", *auth)
    assert code == 0, err
    assert job["id"] in out
    code, out, err = await run_cli("jobs", "events", job["id"], *auth)
    assert code == 0, err
    assert "Created fine-tuning job" in out
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  ", out)
    code, out, err = await run_cli("jobs", "cancel", job["id"], *auth)
    assert code == 0, err
    assert "cancelled" in out
    code, out, err = await run_cli("jobs", "follow", job["id"], *auth)
    assert code == 1  # it ended, but not succeeded
    assert "The job was cancelled" in out
    assert f"{job['id']}: cancelled" in err
    code, out, err = await run_cli("files", "delete", file_id, *auth)
    assert code == 0, err
    code, out, err = await run_cli(
        "jobs", "show", job["id"], "--url", ft.gateway, "--api-key", "sk-nope"
    )
    assert code == 1
    assert "HTTP 401" in err


async def test_files_upload_keeps_a_files_name_as_it_is(ft: TenantStack, tmp_path: Path) -> None:
    """Found by review: `files upload 'my data.jsonl'` was stored as `my%20data.jsonl` (aiohttp
    percent-quotes a filename), and a name holding an escape ended in a traceback."""
    key = await ft.key("ft-cli-names")
    auth = ("--url", ft.gateway, "--api-key", key)
    for name, stored in (
        ('my data "q" naïve.jsonl', 'my data "q" naïve.jsonl'),
        ("back\\slash.jsonl", "slash.jsonl"),  # (a name, never a path: as any client's)
        ("esc\x1bape.jsonl", "esc_ape.jsonl"),
    ):
        data = tmp_path / name
        data.write_bytes(DATASET)
        code, out, err = await run_cli("files", "upload", str(data), *auth, "--json")
        assert code == 0, err
        assert json.loads(out)["filename"] == stored
        assert (await ft.client(key).files.retrieve(json.loads(out)["id"])).filename == stored


async def test_jobs_pause_and_resume_commands(ft: TenantStack) -> None:
    key = await ft.key("ft-cli-pause")
    client = ft.client(key)
    job = await client.fine_tuning.jobs.create(
        model=BASE, training_file=await upload_dataset(client)
    )
    auth = ("--url", ft.gateway, "--api-key", key)
    for action, status in (("pause", "paused"), ("resume", "queued")):
        code, out, err = await run_cli("jobs", action, job.id, *auth, "--json")
        assert code == 0, err
        assert json.loads(out)["status"] == status
    code, _, err = await run_cli("jobs", "resume", job.id, *auth)
    assert code == 1
    assert "only a paused job can be resumed" in err
    await client.fine_tuning.jobs.cancel(job.id)


async def test_a_large_upload_shows_its_progress(ft: TenantStack, tmp_path: Path) -> None:
    auth = ("--url", ft.gateway, "--api-key", await ft.key("ft-cli-big"))
    big = tmp_path / "big.bin"
    big.write_bytes(b"z" * (9 << 20))
    code, out, err = await run_cli("files", "upload", str(big), *auth, "--purpose", "batch")
    assert code == 0, err
    shown = [line for line in err.splitlines() if line.startswith("uploading big.bin: ")]
    assert [line.split()[2] for line in shown] == [f"{10 * i}%" for i in range(1, 11)], err
    assert shown[-1].endswith("(9.0 MiB)")
    big_id = next(word for word in out.split() if word.startswith("file-"))
    code, out, err = await run_cli("files", "delete", big_id, *auth)
    assert code == 0, err


async def test_a_local_training_file_is_uploaded_before_its_job_is_created(
    ft: TenantStack, tmp_path: Path
) -> None:
    key = await ft.key("ft-cli-local")
    data = tmp_path / "mine.jsonl"
    data.write_bytes(DATASET)
    auth = ("--url", ft.gateway, "--api-key", key)
    code, out, err = await run_cli(
        "jobs", "create", "--model", BASE, "--training-file", str(data), *auth, "--json"
    )
    assert code == 0, err
    job = json.loads(out)
    assert err.strip() == f"uploaded mine.jsonl: {job['training_file']}"
    uploaded = await ft.client(key).files.retrieve(job["training_file"])
    assert (uploaded.filename, uploaded.purpose, uploaded.bytes) == (
        "mine.jsonl",
        "fine-tune",
        len(DATASET),
    )
    code, _, err = await run_cli(
        "jobs", "create", "--model", BASE, "--training-file", "file-nope", *auth
    )
    assert code == 1  # neither a local file nor an id of the tenant's: the API's refusal
    assert "No file 'file-nope' to train on" in err
    assert "(training_file)" in err
    typo = tmp_path / "mine.jsnol"  # sent as a file id, refused as one the gateway did not know
    code, _, err = await run_cli(
        "jobs", "create", "--model", BASE, "--training-file", str(typo), *auth
    )
    assert code == 2
    assert f"error: {typo}: no such file, nor a file id (file-…)" in err, err
    before = [f.id async for f in ft.client(key).files.list()]
    code, _, err = await run_cli(  # refused after the upload: the file it made is deleted
        "jobs", "create", "--model", "no-such-base", "--training-file", str(data), *auth
    )
    assert code == 1
    assert "deleted file-" in err
    assert [f.id async for f in ft.client(key).files.list()] == before
    await ft.client(key).fine_tuning.jobs.cancel(job["id"])


async def test_jobs_list_and_events_read_every_page(ft: TenantStack) -> None:
    """105 jobs and 1,203 events of one job: more than a page of either (they stopped at 100)."""
    key = await ft.key("ft-cli-pages")
    client = ft.client(key)
    training_file = await upload_dataset(client)
    made = []
    for _ in range(105):
        job = await client.fine_tuning.jobs.create(model=BASE, training_file=training_file)
        await client.fine_tuning.jobs.cancel(job.id)
        made.append(job.id)
    auth = ("--url", ft.gateway, "--api-key", key)
    code, out, err = await run_cli("jobs", "list", *auth, "--json")
    assert code == 0, err
    assert [job["id"] for job in json.loads(out)["data"]] == made[::-1]  # newest first

    store = JobStore(ft.redis)
    last = await store.get("ft-cli-pages", made[-1])
    assert last is not None
    now = int(time.time())
    for n in range(1, 1201):
        await store.add_event(last, Event(id="", created_at=now, message=f"Note {n}"))
    code, out, err = await run_cli("jobs", "events", last.id, *auth)
    assert code == 0, err
    messages = [line.split(None, 2)[2] for line in out.splitlines()]  # time, level, message
    assert len(messages) == 3 + 1200  # created, validated (queued), cancelled; the notes
    assert messages[0] == f"Created fine-tuning job: {last.id}"
    assert messages[-1200:] == [f"Note {n}" for n in range(1, 1201)]  # oldest first
    code, out, err = await run_cli("jobs", "events", last.id, *auth, "--json")
    assert code == 0, err
    listed = json.loads(out)  # JSON only (a table followed it)
    assert len(listed["data"]) == len(messages)
    assert listed["data"][0]["message"] == "Note 1200"  # as the API pages: newest first
