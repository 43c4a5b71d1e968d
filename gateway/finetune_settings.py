"""The `files` and `fine_tuning` sections of the gateway's config: where the Files API keeps
contents, and the fine-tuning jobs and the trainers that run them (gateway/finetune/)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from gateway.settings_section import HomePath, Section


def _default_files_dir() -> Path:
    return Path.home() / ".local" / "share" / "llmaas" / "files"


class FilesSettings(Section):
    """The Files API (`/v1/files`): contents in a directory, metadata in Redis."""

    # Contents live at <dir>/<tenant>/<file id>. On a cluster: a ReadWriteMany volume shared by
    # the gateways, the trainer and the engines (they load adapters from it by path).
    dir: HomePath = Field(default_factory=_default_files_dir)
    # False: /v1/files is not served (404), as where no storage is shared with a trainer (the
    # Helm chart without fine-tuning: uploads would fail, or land on one replica's disk only).
    enabled: bool = True
    max_file_bytes: int = Field(default=512 * 1024 * 1024, ge=1)  # OpenAI's limit per file
    max_files_per_tenant: int = Field(default=10_000, ge=1)
    # What one tenant's files may hold in all, so that no tenant fills the volume every tenant
    # (and the trainers' adapters and checkpoints) share. At least max_file_bytes.
    max_bytes_per_tenant: int = Field(default=10 * 1024**3, ge=1)

    @model_validator(mode="after")
    def _one_file_fits(self) -> FilesSettings:
        if self.max_bytes_per_tenant < self.max_file_bytes:
            raise ValueError(
                f"files.max_bytes_per_tenant ({self.max_bytes_per_tenant}) is below "
                f"files.max_file_bytes ({self.max_file_bytes}): a file the limit takes could "
                "never be stored"
            )
        return self


class FineTuningSettings(Section):
    """Fine-tuning jobs (`/v1/fine_tuning/jobs`) and the worker that runs them (`llmaas
    trainer`). Adapters are written next to the tenant's files (`files.dir`), where engines
    serving the base model load them from."""

    # Models a tenant may fine-tune: name (as served) → directory of its weights in Hugging Face
    # format, the same the engines load. Empty: fine-tuning is off.
    base_models: dict[str, Path] = Field(default_factory=dict)
    max_active_jobs_per_tenant: int = Field(default=2, ge=1)
    # A running job whose trainer has not reported for this long is failed (trainer gone).
    heartbeat_timeout_s: float = Field(default=60.0, gt=0)
    # A training run that prints no line (its start, a step) for this long has hung: it is
    # stopped and its job failed, and the worker moves on. Loading the base model counts.
    stall_timeout_s: float = Field(default=1800.0, gt=0)
    # A trainer that stops (SIGTERM, Ctrl-C) gives the job in training this long to write a
    # checkpoint at the end of its step, as a pause does; the job, queued again, goes on from
    # it. Past it (or 0) the run is cut, and the job starts over. Keep it under the trainer
    # pod's terminationGracePeriodSeconds.
    stop_checkpoint_s: float = Field(default=30.0, ge=0)
    # The Python that has torch, transformers and peft (the engine venv); None: this one.
    trainer_python: Path | None = None
    learning_rate: float = Field(default=3e-3, gt=0)  # times the job's learning_rate_multiplier
    lora_rank: int = Field(default=8, ge=1)  # a job's default rank
    max_lora_rank: int = Field(default=8, ge=1)  # the engines' --max-lora-rank
    threads: int | None = Field(default=None, ge=1)  # torch threads per job (None: every core)
    # Tokens of an example trained on (its chat template included): the rest is cut; one whose
    # assistant turn starts past it fails the job, naming its line. Memory grows with it.
    max_length: int = Field(default=1024, ge=16)

    @model_validator(mode="after")
    def _default_rank_loads(self) -> FineTuningSettings:
        """A job left on "auto" trains at `lora_rank`: above the engines' `max_lora_rank` it
        would train to the end and then be refused by every engine."""
        if self.lora_rank > self.max_lora_rank:
            raise ValueError(
                f"fine_tuning.lora_rank ({self.lora_rank}) is above fine_tuning.max_lora_rank "
                f"({self.max_lora_rank}, the engines' --max-lora-rank): an adapter of a job "
                'left on lora_rank "auto" could not be loaded'
            )
        return self
