"""`llmaas files …` and `llmaas jobs …`: a tenant's files and fine-tuning jobs, as tables or
--json, with `jobs follow` showing training progress until the job ends."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli_options import add_gateway_options
from gateway.cli_table import table, utc_time
from gateway.client_common import AdminError, LocalProblem, segment
from gateway.files.purposes import PURPOSES

if TYPE_CHECKING:
    from tqdm import tqdm

    from gateway.tenant_client import TenantClient

FILE_COLUMNS = ("id", "filename", "purpose", "bytes", "created_at")
JOB_COLUMNS = ("id", "model", "status", "fine_tuned_model", "trained_tokens", "created_at")
FINAL = ("succeeded", "failed", "cancelled")
POLL_S = 1.0
PAGE = 1000  # items per request when a command reads a whole list
# A job that ended otherwise is no success, and a script waiting on it must not go on as if
# it were (1 is also a refusal by the gateway, or a gateway out of reach).
FOLLOW_EXITS = (
    "Print a job's events as they come, until it ends; exit 0 if it succeeded, 1 if it ended "
    "cancelled or failed (1 too if the gateway refused or could not be reached)."
)


def add_finetune_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_gateway_options(
        common,
        token_flag="--api-key",
        token_env="LLMAAS_API_KEY",
        token_help="your tenant's API key",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    files = sub.add_parser("files", help="your tenant's files (/v1/files)")
    files_sub = files.add_subparsers(dest="action", required=True)
    upload = files_sub.add_parser("upload", parents=[common], help="upload a file")
    upload.add_argument(
        "path", type=Path, help="the file to upload (for fine-tune: a JSONL file of chat examples)"
    )
    upload.add_argument(
        "--purpose",
        default="fine-tune",
        help=f"what the file is for: {', '.join(PURPOSES)} (default: fine-tune)",
    )
    files_sub.add_parser("list", parents=[common], help="list your files").add_argument(
        "--purpose", help="only files of this purpose"
    )
    for action, what in (("show", "one file's details"), ("delete", "delete a file")):
        files_sub.add_parser(action, parents=[common], help=what).add_argument(
            "file_id", help="the file's id (file-…), as files list shows it"
        )
    files.set_defaults(func=run_files)

    jobs = sub.add_parser("jobs", help="your tenant's fine-tuning jobs (/v1/fine_tuning/jobs)")
    jobs_sub = jobs.add_subparsers(dest="action", required=True)
    create = jobs_sub.add_parser("create", parents=[common], help="start a fine-tuning job")
    create.add_argument("--model", required=True, help="the base model")
    create.add_argument(
        "--training-file",
        required=True,
        help="a file id (purpose fine-tune), or a local JSONL file: uploaded first",
    )
    create.add_argument("--suffix", help="part of the fine-tuned model's name")
    create.add_argument("--epochs", type=int, help="(default: auto, from the dataset's size)")
    create.add_argument("--batch-size", type=int, help="(default: auto, from the dataset's size)")
    create.add_argument("--lr-multiplier", type=float, help="(default: 1)")
    create.add_argument(
        "--lora-rank", type=int, help="the adapter's rank (default: the gateway's setting)"
    )
    create.add_argument(
        "--follow",
        action="store_true",
        help="then follow it, as jobs follow (exit 1 if it ends cancelled or failed)",
    )
    jobs_sub.add_parser("list", parents=[common], help="list your jobs")
    for action, what in (
        ("show", "one job's details"),
        ("cancel", "cancel a job"),
        ("pause", "pause a queued or running job (its training stops)"),
        ("resume", "queue a paused job again (its training goes on where it paused)"),
        ("events", "a job's events (progress, loss, errors)"),
        ("follow", "print a job's events as they come, until it ends"),
    ):
        described = FOLLOW_EXITS if action == "follow" else None
        jobs_sub.add_parser(
            action, parents=[common], help=what, description=described
        ).add_argument("job_id", help="the job's id (ftjob-…), as jobs list shows it")
    jobs.set_defaults(func=run_jobs)


def run_files(args: argparse.Namespace) -> int:
    # (imported when run: `llmaas --help` stays fast)
    from gateway.tenant_client import TenantClient  # noqa: PLC0415

    try:
        if args.action == "upload" and (unusable := _unreadable(args.path)):
            raise LocalProblem(unusable)
        client = TenantClient(args.url, args.api_key)
        result = asyncio.run(_files(client, args))
    except BrokenPipeError:  # stdout's reader went away: gateway/cli.py's main stops quietly
        raise
    except LocalProblem as exc:
        print(f"llmaas files {args.action}: error: {exc}", file=sys.stderr)
        return 2
    except (AdminError, OSError) as exc:
        print(f"llmaas files {args.action}: {exc}", file=sys.stderr)
        return 1
    rows = result.get("data", [result])
    print(json.dumps(result, indent=2) if args.json else table(rows, FILE_COLUMNS))
    return 0


async def _files(client: TenantClient, args: argparse.Namespace) -> Any:
    if args.action == "upload":
        return await _upload(client, args.path, args.purpose)
    if args.action == "list":
        query = {"purpose": args.purpose} if args.purpose else {}
        return {"object": "list", "data": await client.every_page("/files", query)}
    if args.action == "show":
        return await client.call("GET", f"/files/{segment(args.file_id)}")
    deleted = await client.call("DELETE", f"/files/{segment(args.file_id)}")
    return {**deleted, "filename": "(deleted)"}


def _not_a_training_file(value: str) -> str | None:
    """Why --training-file is neither a file id (file-…) nor a local file that can be read,
    if it is neither: a mistyped path was sent as a file id, and refused by the gateway
    (exit 1) as a file it does not know."""
    path = Path(value)
    if value.startswith("file-") and not path.exists():
        return None
    unusable = _unreadable(path)
    if unusable is not None and not path.exists():
        return f"{unusable}, nor a file id (file-…)"
    return unusable


def _unreadable(path: Path) -> str | None:
    """Why the local file `path` cannot be uploaded, if it cannot (exit 2, not the 1 of the
    gateway's refusals: nothing was sent)."""
    if path.is_dir():
        return f"{path} is a directory, not a file"
    if not path.exists():
        return f"{path}: no such file"
    if not os.access(path, os.R_OK):
        return f"{path} cannot be read (permission denied)"
    return None


def run_jobs(args: argparse.Namespace) -> int:
    # (imported when run: `llmaas --help` stays fast)
    from gateway.tenant_client import TenantClient  # noqa: PLC0415

    try:
        if args.action == "create" and (unusable := _not_a_training_file(args.training_file)):
            raise LocalProblem(unusable)
        client = TenantClient(args.url, args.api_key)
        return asyncio.run(_jobs(client, args))
    except BrokenPipeError:  # stdout's reader went away: gateway/cli.py's main stops quietly
        raise
    except LocalProblem as exc:
        print(f"llmaas jobs {args.action}: error: {exc}", file=sys.stderr)
        return 2
    except (AdminError, OSError) as exc:
        print(f"llmaas jobs {args.action}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _jobs(client: TenantClient, args: argparse.Namespace) -> int:
    if args.action == "follow":
        return await follow(client, args.job_id, as_json=args.json)
    if args.action == "events":  # every one kept, oldest first (the API pages newest first)
        path = f"/fine_tuning/jobs/{segment(args.job_id)}/events"
        events = await client.every_page(path, {"limit": str(PAGE)})
        if args.json:
            print(json.dumps({"object": "list", "data": events, "has_more": False}, indent=2))
            return 0
        for event in reversed(events):
            print(f"{utc_time(event['created_at'])}  {event['level']:5}  {event['message']}")
        return 0
    if args.action == "create":
        result = await _create(client, args)
    elif args.action == "list":
        jobs = await client.every_page("/fine_tuning/jobs", {"limit": str(PAGE)})
        result = {"object": "list", "data": jobs, "has_more": False}
    elif args.action in ("cancel", "pause", "resume"):
        path = f"/fine_tuning/jobs/{segment(args.job_id)}/{args.action}"
        result = await client.call("POST", path)
    else:
        result = await client.call("GET", f"/fine_tuning/jobs/{segment(args.job_id)}")
    rows = result.get("data", [result])
    print(json.dumps(result, indent=2) if args.json else table(rows, JOB_COLUMNS))
    if args.action == "create" and args.follow:
        return await follow(client, result["id"], as_json=args.json)
    return 0


async def _create(client: TenantClient, args: argparse.Namespace) -> Any:
    """The job, on a file id or on a local file uploaded first; a job refused leaves no file
    it uploaded behind (retries with a typo piled them up towards the tenant's limit)."""
    path = Path(args.training_file)
    if not await asyncio.to_thread(path.is_file):
        return await client.call(
            "POST", "/fine_tuning/jobs", _create_body(args, args.training_file)
        )
    uploaded = await _upload(client, path, "fine-tune")
    file_id = str(uploaded["id"])
    print(f"uploaded {path.name}: {file_id}", file=sys.stderr)
    try:
        return await client.call("POST", "/fine_tuning/jobs", _create_body(args, file_id))
    except AdminError:
        with contextlib.suppress(AdminError):
            await client.call("DELETE", f"/files/{segment(file_id)}")
            print(f"deleted {file_id}: the job was not created", file=sys.stderr)
        raise


async def _upload(client: TenantClient, path: Path, purpose: str) -> Any:
    """`path` uploaded, its progress shown (UploadProgress): the file object the API answers."""
    progress = UploadProgress(path.name, (await asyncio.to_thread(path.stat)).st_size)
    try:
        return await client.upload(path, purpose, progress.sent)
    finally:
        progress.close()


def _create_body(args: argparse.Namespace, training_file: str) -> dict[str, Any]:
    hyper = {
        name: value
        for name, value in (
            ("n_epochs", args.epochs),
            ("batch_size", args.batch_size),
            ("learning_rate_multiplier", args.lr_multiplier),
            ("lora_rank", args.lora_rank),
        )
        if value is not None
    }
    body: dict[str, Any] = {"model": args.model, "training_file": training_file}
    if args.suffix:
        body["suffix"] = args.suffix
    if hyper:
        body["hyperparameters"] = hyper
    return body


class UploadProgress:
    """An upload's progress on stderr: a bar on a terminal (a file of 1 MiB or more), a line
    at every tenth elsewhere (8 MiB or more: a log shows a large upload moving, not a small
    one's noise). Bytes are counted as they are read for sending."""

    BAR_FROM = 1 << 20
    LINES_FROM = 8 << 20

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total, self.done, self.tenths = name, total, 0, 0
        self.bar: tqdm[Any] | None = None
        self.lines = not sys.stderr.isatty() and total >= self.LINES_FROM
        if sys.stderr.isatty() and total >= self.BAR_FROM:
            # (imported when drawn: `llmaas --help` stays fast)
            from tqdm import tqdm  # noqa: PLC0415

            self.bar = tqdm(
                total=total, desc=f"uploading {name}", unit="B", unit_scale=True, file=sys.stderr
            )

    def sent(self, size: int) -> None:
        self.done += size
        if self.bar is not None:
            self.bar.update(size)
        elif self.lines and self.done * 10 >= (self.tenths + 1) * self.total:
            self.tenths = self.done * 10 // self.total
            mib = self.done / (1 << 20)
            print(f"uploading {self.name}: {self.tenths * 10}% ({mib:.1f} MiB)", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def follow(client: TenantClient, job_id: str, *, as_json: bool = False) -> int:
    """Print the job's events as they come, with a progress bar over its training steps,
    until it ends: 0 if it succeeded, 1 otherwise."""
    seen: set[str] = set()
    bar: tqdm[Any] | None = None
    try:
        while True:
            job = await client.call("GET", f"/fine_tuning/jobs/{segment(job_id)}")
            events = await client.call(
                "GET", f"/fine_tuning/jobs/{segment(job_id)}/events", limit=100
            )
            for event in reversed(events["data"]):
                if event["id"] in seen:
                    continue
                seen.add(event["id"])
                bar = _show(event, bar, as_json)
            if job["status"] in FINAL:
                break
            await asyncio.sleep(POLL_S)
    finally:
        if bar is not None:
            bar.close()
    ended = job["fine_tuned_model"] or (job.get("error") or {}).get("message", "")
    print(f"{job['id']}: {job['status']} {ended}".rstrip(), file=sys.stderr)
    return 0 if job["status"] == "succeeded" else 1


def _show(event: dict[str, Any], bar: tqdm[Any] | None, as_json: bool) -> tqdm[Any] | None:
    """One event: a message printed, a step moving the bar (on a terminal; elsewhere, a line
    per step event, which come at most once a second)."""
    if as_json:
        print(json.dumps(event), flush=True)
        return bar
    data = event.get("data") or {}
    if event.get("type") != "metrics" or not data.get("total_steps"):
        if bar is not None and bar.n >= (bar.total or 0):  # done: not drawn again below it
            bar.close()
            bar = None
        (bar.write if bar is not None else print)(event["message"])
        return bar
    step, total, loss = int(data["step"]), int(data["total_steps"]), float(data["train_loss"])
    if not sys.stderr.isatty():
        print(f"training: step {step}/{total}, loss {loss:.4f}", file=sys.stderr)
        return None
    if bar is None:  # from the step it first hears of: its rate counts the steps it saw
        # (imported when drawn: `llmaas --help` stays fast)
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=total, initial=step, desc="training", unit="step", file=sys.stderr)
    bar.n = step
    bar.set_postfix(loss=f"{loss:.4f}")
    bar.refresh()
    return bar
