"""What a client may upload a file for: the Files API checks an upload's purpose against these,
and `llmaas files upload --help` lists them (without the pydantic records: it stays fast)."""

from __future__ import annotations

# OpenAI's `*_output` / `*-results` purposes are the service's own outputs (a fine-tuning job's
# results), never uploads.
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
