"""What `llmaas up` prints once everything is up: where to send requests, the key and admin
token to send them with, where its data is kept, and examples to copy."""

from __future__ import annotations

from gateway.cli_options import DEFAULT_URL
from gateway.embedded.data_dir import DataDir
from gateway.embedded.engine import EngineSpec
from gateway.embedded.paths import CHAT_MODEL_NAME


def _admin_hint(base: str) -> str:
    """The admin command as it reaches this gateway: the client commands' default is :8080."""
    url = "" if base == DEFAULT_URL else f"LLMAAS_URL={base} "
    return f"{url}llmaas keys create --tenant NAME"


def _kept_again(admin_token: str, kept_token: str) -> str:
    """What the next run shows again: the admin token only if it is the one kept in the data
    directory, not LLMAAS_ADMIN_TOKEN's (which wins, and is not written there)."""
    if admin_token == kept_token:
        return "this key and token again next run"
    return "this key again next run; the token is LLMAAS_ADMIN_TOKEN's, not kept"


def banner(
    base: str,
    *,
    redis_url: str,
    spec: EngineSpec,
    key: str,
    admin_token: str,
    kept_token: str,
    data: DataDir,
) -> str:
    """`kept_token`: the admin token written to the data directory, shown when admin_token is
    not LLMAAS_ADMIN_TOKEN's."""
    return f"""
llmaas is up.
  base URL   {base}/v1
  model      {CHAT_MODEL_NAME}  (vLLM on {spec.url}, log {spec.log_path})
  redis      {redis_url}
  api key    {key}   (tenant "dev")
  admin      LLMAAS_ADMIN_TOKEN={admin_token}   ({_admin_hint(base)})
  data       {data.root}   (keys, files, jobs, usage; {_kept_again(admin_token, kept_token)})
  fine-tune  on: a trainer runs here (client.files.create + client.fine_tuning.jobs.create)

  curl -s {base}/v1/chat/completions -H 'authorization: Bearer {key}' \\
    -H 'content-type: application/json' -d '{{
    "model": "{CHAT_MODEL_NAME}", "max_tokens": 64,
    "messages": [{{"role": "user", "content": "What is the capital of France?"}}]}}'

  python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{base}/v1", api_key="{key}")
question = [{{"role": "user", "content": "What is the capital of France?"}}]
reply = client.chat.completions.create(
    model="{CHAT_MODEL_NAME}", messages=question, max_tokens=64
)
print(reply.choices[0].message.content)
PY

Ctrl-C stops everything.
"""
