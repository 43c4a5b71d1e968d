"""A fine-tuning job's record, its states, and the names it gives what it makes.

States: queued → running → succeeded | failed | cancelled, and paused (from queued or running)
→ queued again on resume. A new job's file is checked before the job is stored, so OpenAI's
validating_files is past (older gateways stored it first). validating_files, queued, running
and paused are active (they count against the tenant's limit); the last three are final.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.finetune.names import fine_tuned_name, owner_of

__all__ = ["fine_tuned_name", "owner_of"]  # re-exported: the names live in names.py

Status = Literal[
    "validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"
]
ACTIVE: tuple[Status, ...] = ("validating_files", "queued", "running", "paused")
FINAL: tuple[Status, ...] = ("succeeded", "failed", "cancelled")
JOB_ID_PATTERN = r"^ftjob-[0-9a-f]{24}$"
SUFFIX_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI takes up to 64 characters


def new_job_id() -> str:
    return "ftjob-" + secrets.token_hex(12)


class Hyperparameters(BaseModel):
    """As resolved when the job starts ("auto" replaced by what was chosen)."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    lora_rank: int | Literal["auto"] = "auto"  # an llmaas extension: the adapter's rank


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    tenant: str
    key_id: str  # who created it: its training is metered to this key
    model: str  # the base model
    training_file: str
    status: Status
    created_at: int
    hyperparameters: Hyperparameters
    seed: int
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    examples: int = 0  # in the training file
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: JobError | None = None
    result_files: list[str] = Field(default_factory=list)
    estimated_finish: int | None = None
    worker: str | None = None  # the trainer running it
    steps: int | None = None  # optimizer steps, once trained
    train_loss: float | None = None  # the last step's

    def view(self) -> dict[str, Any]:
        """OpenAI's fine_tuning.job object."""
        hyper = self.hyperparameters.model_dump()
        openai_hyper = {k: v for k, v in hyper.items() if k != "lora_rank"}
        return {
            "object": "fine_tuning.job",
            "id": self.id,
            "model": self.model,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "fine_tuned_model": self.fine_tuned_model,
            "organization_id": self.tenant,
            "result_files": self.result_files,
            "status": self.status,
            "validation_file": None,
            "training_file": self.training_file,
            "hyperparameters": {**openai_hyper, "lora_rank": hyper["lora_rank"]},
            "method": {"type": "supervised", "supervised": {"hyperparameters": openai_hyper}},
            "trained_tokens": self.trained_tokens,
            "error": None if self.error is None else self.error.model_dump(),
            "seed": self.seed,
            "estimated_finish": self.estimated_finish,
            "integrations": [],
            "metadata": self.metadata,
            "user_provided_suffix": self.suffix,
        }


class Event(BaseModel):
    id: str
    created_at: int
    level: Literal["info", "warn", "error"] = "info"
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:
        """OpenAI's event object: `data` an object, `{}` for a message (null broke the spec's
        `type: object`, which a client generated from it trusts)."""
        view = {"object": "fine_tuning.job.event", **self.model_dump()}
        if view["data"] is None:
            view["data"] = {}
        return view
