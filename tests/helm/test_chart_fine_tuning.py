"""Fine-tuning as the chart deploys it (fineTuning.enabled): one ReadWriteMany claim at files.dir
in the gateway, trainer and base-model engine pods (adapters are loaded by path), a trainer whose
rendered command, config and environment start a real `llmaas trainer` against Redis, engines
with runtime LoRA on, and nothing of it by default."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from redis.asyncio import Redis

from gateway.finetune_settings import FineTuningSettings
from gateway.settings_load import load_settings
from tests.helm.chart import (
    Obj,
    Rendered,
    Renders,
    arg_after,
    container,
    env_of,
    pod_spec,
    render_values,
    render_values_as,
)
from tests.helm.test_chart_config import _load, _secret_stand_ins
from tests.helm.test_chart_render import K8S_VERSION
from tests.support.cli import llmaas
from tests.support.redis_control import restartable_redis

CASE = "fine-tuning"
BASE = "qwen2.5-7b-instruct"
WEIGHTS = "/models/base/qwen2.5-7b-instruct"
MOUNT = "/var/lib/llmaas/files"
CLAIM = "demo-llmaas-files"
TRAINER = "demo-llmaas-trainer"
ENGINE = {"name": "llama", "model": "meta-llama/Llama-3.1-8B-Instruct"}
ON = {"enabled": True, "baseModels": [{"name": ENGINE["model"], "path": "/models/llama"}]}


def _trainer(rendered: Rendered) -> Obj:
    (trainer,) = rendered.of("Deployment", "trainer")
    return trainer


def _files_mount(workload: Obj) -> tuple[str, str, bool]:
    """(claim, mount path, read-only) of the workload's volume from a PersistentVolumeClaim
    named like the files claim."""
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod_spec(workload)["volumes"]
        if "persistentVolumeClaim" in v
    }
    (found,) = [
        (claims[m["name"]], m["mountPath"], bool(m.get("readOnly")))
        for m in container(workload)["volumeMounts"]
        if claims.get(m["name"]) == CLAIM
    ]
    return found


def test_fine_tuning_objects_validate_against_kubernetes(renders: Renders) -> None:
    rendered = renders[CASE]
    (claim,) = rendered.kind("PersistentVolumeClaim")  # the engines use claims of their own
    assert claim["metadata"]["name"] == CLAIM
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs-rwx"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for obj in (claim, _trainer(rendered)):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_one_claim_at_one_path_in_gateway_trainer_and_base_model_engines(
    renders: Renders,
) -> None:
    rendered = renders[CASE]
    qwen = rendered.get("Deployment", "demo-llmaas-engine-qwen")
    assert _files_mount(rendered.gateway()) == (CLAIM, MOUNT, False)  # uploads
    assert _files_mount(_trainer(rendered)) == (CLAIM, MOUNT, False)  # adapters
    assert _files_mount(qwen) == (CLAIM, MOUNT, True)  # loads adapters, writes nothing
    embed = rendered.get("Deployment", "demo-llmaas-engine-embed")
    assert MOUNT not in {m["mountPath"] for m in container(embed)["volumeMounts"]}


def test_rendered_config_names_the_volume_and_the_base_models(
    renders: Renders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = renders[CASE]
    settings = _load(rendered, tmp_path, monkeypatch)
    assert settings.files.dir == Path(MOUNT)
    assert settings.files.enabled
    assert settings.fine_tuning.base_models == {BASE: Path(WEIGHTS)}
    assert settings.fine_tuning.max_lora_rank == 32
    assert settings.fine_tuning.max_active_jobs_per_tenant == 4  # gateway.config still applies
    assert BASE in {m.name for m in settings.models}


def test_trainer_reads_the_gateways_config_with_the_secrets_it_needs(renders: Renders) -> None:
    rendered = renders[CASE]
    trainer = _trainer(rendered)
    gateway = rendered.gateway()
    c = container(trainer)
    assert c["command"] == ["llmaas"]
    assert c["args"][:2] == ["trainer", "--config"]
    config_dir, config_file = c["args"][2].rsplit("/", 1)
    (volume,) = [
        v["configMap"]["name"]
        for v in pod_spec(trainer)["volumes"]
        for m in c["volumeMounts"]
        if m["mountPath"] == config_dir and m["name"] == v["name"]
    ]
    assert config_file in rendered.get("ConfigMap", volume)["data"]
    assert volume == gateway["metadata"]["name"]
    gateway_env, trainer_env = env_of(gateway), env_of(trainer)
    for name in (
        "LLMAAS_ADMIN_TOKEN",
        "LLMAAS_KEY_PEPPER",
        "LLMAAS_REDIS_PASSWORD",
        "LLMAAS_REDIS_URL",
    ):
        assert trainer_env[name] == gateway_env[name], name
    resources = c["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    assert c["image"] == "registry.example.com/llmaas-trainer:0.1.0"
    assert trainer["spec"]["replicas"] == 2
    assert pod_spec(trainer)["terminationGracePeriodSeconds"] >= 30
    (models,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/models"]
    assert models["readOnly"] is True
    bases = yaml.safe_load(rendered.config_text())["fine_tuning"]["base_models"]
    assert bases[BASE].startswith(models["mountPath"] + "/"), "the trainer sees the weights"


@pytest.mark.parametrize(("gpus", "expected"), [(1, "nvidia"), (0, None)])
def test_trainer_runs_in_the_runtime_class_given_when_it_has_gpus(
    gpus: int, expected: str | None
) -> None:
    """As for engines: the NVIDIA runtime where it is not the default, for pods with GPUs."""
    trainer = {"runtimeClassName": "nvidia", "gpu": {"count": gpus}}
    rendered = render_values_as({"engines": [ENGINE], "fineTuning": {**ON, "trainer": trainer}})
    assert pod_spec(_trainer(rendered)).get("runtimeClassName") == expected


def test_the_trainer_rolls_only_for_what_it_reads_of_the_config() -> None:
    """Its checksum hashed the whole gateway config: a routing change restarted the trainers,
    interrupting their jobs."""

    def checksums(config: dict[str, Any]) -> tuple[str, str]:
        values = {"engines": [ENGINE], "fineTuning": ON, "gateway": {"config": config}}
        rendered = render_values_as(values)
        gateway = rendered.gateway()["spec"]["template"]["metadata"]["annotations"]
        trainer = _trainer(rendered)["spec"]["template"]["metadata"]["annotations"]
        return gateway["checksum/config"], trainer["checksum/config"]

    gateway, trainer = checksums({})
    routed = checksums({"routing": {"strategy": "least_loaded"}})
    assert routed[0] != gateway  # the gateway rolls
    assert routed[1] == trainer  # the trainer does not
    tuned = checksums({"fine_tuning": {"learning_rate": 0.001}})
    assert tuned[1] != trainer
    # Tenant defaults and file quotas (routine admin changes) left no job running either
    for unread in (
        {"limits": {"tenant_defaults": {"rpm": 60}}},
        {"files": {"max_files_per_tenant": 9}},
    ):
        assert checksums(unread)[1] == trainer, unread
    assert checksums({"limits": {"window_s": 120}})[1] != trainer  # (the ledger reads it)


def test_trainer_defaults_to_the_gateway_image() -> None:
    rendered = render_values_as({"engines": [ENGINE], "fineTuning": ON})
    assert container(_trainer(rendered))["image"] == container(rendered.gateway())["image"]
    assert "runtimeClassName" not in pod_spec(_trainer(rendered))
    assert _files_mount(_trainer(rendered)) == (CLAIM, MOUNT, False)


async def test_trainer_command_runs_as_rendered(
    renders: Renders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer container's command, with the rendered config file and the environment the
    kubelet would build (secrets stood in, Redis pointed at a local one), starts a real
    `llmaas trainer` that waits on the job queue, and stops cleanly on SIGTERM. The local Redis
    requires the password the trainer is given apart from the URL (LLMAAS_REDIS_PASSWORD)."""
    rendered = renders[CASE]
    c = container(_trainer(rendered))
    config = tmp_path / "config.yaml"
    config.write_text(rendered.config_text())
    args = list(c["args"])
    args[args.index("--config") + 1] = str(config)
    async with restartable_redis(tmp_path) as redis_server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMAAS_")}
        env.update(_secret_stand_ins(_trainer(rendered)))
        env["LLMAAS_REDIS_URL"] = redis_server.url
        password = env["LLMAAS_REDIS_PASSWORD"]
        async with Redis.from_url(redis_server.url) as setup:
            await setup.config_set("requirepass", password)
        process = await asyncio.create_subprocess_exec(
            llmaas(), *c["command"][1:], *args, env=env, stderr=asyncio.subprocess.PIPE
        )
        redis = Redis.from_url(redis_server.url, password=password)
        try:
            waiting = await asyncio.wait_for(_blocked_on_the_queue(redis, process), 60)
        finally:
            await redis.aclose()
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 60)
    assert waiting == 1
    assert code == 0


async def _blocked_on_the_queue(redis: Redis, process: asyncio.subprocess.Process) -> int:
    """How many clients wait in BRPOP, once one does (the trainer polling for jobs)."""
    while True:
        assert process.returncode is None, await _stderr(process)
        clients: list[dict[str, Any]] = await redis.client_list()
        waiting = sum(1 for client in clients if client.get("cmd") == "brpop")
        if waiting:
            return waiting
        await asyncio.sleep(0.1)


async def _stderr(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    return (await process.stderr.read()).decode()


def test_trainer_help_runs_with_the_installed_entry_point(renders: Renders) -> None:
    c = container(_trainer(renders[CASE]))
    done = subprocess.run(
        [llmaas(), *c["command"][1:], c["args"][0], "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout


def test_base_model_engines_load_adapters_at_run_time(renders: Renders) -> None:
    rendered = renders[CASE]
    qwen = rendered.get("Deployment", "demo-llmaas-engine-qwen")
    args = container(qwen)["args"]
    assert "--enable-lora" in args
    assert arg_after(args, "--max-lora-rank") == "32"
    assert arg_after(args, "--max-loras") == "8"
    assert env_of(qwen)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    embed = rendered.get("Deployment", "demo-llmaas-engine-embed")
    assert "--enable-lora" not in container(embed)["args"]
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env_of(embed)


def test_static_lora_keeps_its_modules_and_higher_limits() -> None:
    """An engine with adapters of its own keeps them, and the higher of the two limits."""
    lora = {
        "enabled": True,
        "maxLoraRank": 64,
        "maxLoras": 2,
        "modules": [{"name": "sql", "path": "/m/sql"}],
    }
    rendered = render_values_as({"engines": [{**ENGINE, "lora": lora}], "fineTuning": ON})
    (engine,) = rendered.engines()
    args = container(engine)["args"]
    assert arg_after(args, "--max-lora-rank") == "64"
    assert arg_after(args, "--max-loras") == "4"
    assert arg_after(args, "--lora-modules") == "sql=/m/sql"
    assert args.count("--enable-lora") == 1
    assert env_of(engine)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"


def test_redis_admits_the_trainer(renders: Renders) -> None:
    rendered = renders[CASE]
    policy = rendered.get("NetworkPolicy", "demo-llmaas-redis")
    (rule,) = policy["spec"]["ingress"]
    components = {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["from"]
    }
    assert components == {"gateway", "trainer"}
    assert TRAINER in rendered.notes


def test_disabled_by_default_renders_no_trainer_and_no_files_claim(renders: Renders) -> None:
    rendered = renders["default"]
    assert rendered.values["fineTuning"]["enabled"] is False
    assert rendered.of("Deployment", "trainer") == []
    assert [
        c for c in rendered.kind("PersistentVolumeClaim") if c["metadata"]["name"] == CLAIM
    ] == []
    assert MOUNT not in {m["mountPath"] for m in container(rendered.gateway())["volumeMounts"]}
    for engine in rendered.engines():
        assert "--enable-lora" not in container(engine)["args"]
    config = yaml.safe_load(rendered.config_text())
    assert "fine_tuning" not in config
    assert config["files"]["enabled"] is False  # no shared volume: /v1/files is not served
    assert "Fine-tuning" not in rendered.notes


def test_an_existing_claim_is_mounted_not_made() -> None:
    values = {"engines": [ENGINE], "fineTuning": {**ON, "storage": {"existingClaim": "shared"}}}
    rendered = render_values_as(values)
    assert CLAIM not in {c["metadata"]["name"] for c in rendered.kind("PersistentVolumeClaim")}
    for workload in (rendered.gateway(), _trainer(rendered), *rendered.engines()):
        (claim,) = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod_spec(workload)["volumes"]
            if v["name"] == "files"
        ]
        assert claim == "shared"


BAD: dict[str, tuple[dict[str, Any], list[str]]] = {
    "rank 0": (
        {"fineTuning": {**ON, "maxLoraRank": 0}},
        ["at '/fineTuning/maxLoraRank'", "must be one of"],
    ),
    "base model without path": (
        {"fineTuning": {**ON, "baseModels": [{"name": ENGINE["model"]}]}},
        ["at '/fineTuning/baseModels/0'", "'path'"],
    ),
    "relative weights path": (
        {"fineTuning": {**ON, "baseModels": [{"name": "m", "path": "models/m"}]}},
        ["at '/fineTuning/baseModels/0/path'", "does not match pattern"],
    ),
    "typo'd trainer key": (
        {"fineTuning": {**ON, "trainer": {"replica": 2}}},
        ["at '/fineTuning/trainer'", "'replica' not allowed"],
    ),
    "mount path with a trailing slash": (
        {"fineTuning": {**ON, "storage": {"mountPath": "/files/"}}},
        ["at '/fineTuning/storage/mountPath'", "does not match pattern"],
    ),
    "files.dir set by hand": (
        {"gateway": {"config": {"files": {"dir": "/elsewhere"}}}},
        ["at '/gateway/config/files'", "'dir' not allowed"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_fine_tuning_values_are_refused_naming_the_field(case: str) -> None:
    values, expected = BAD[case]
    with pytest.raises(helm.HelmValuesError) as refused:
        render_values({"engines": [ENGINE], **values})
    for fragment in expected:
        assert fragment in str(refused.value)


def test_a_jobs_default_rank_is_one_the_engines_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job left on lora_rank "auto" trains at fine_tuning.lora_rank (8): with a lower
    fineTuning.maxLoraRank the adapter trained to the end and no engine loaded it (now the
    gateway refuses to start with it), and one set above it is refused at render."""
    low = render_values_as({"engines": [ENGINE], "fineTuning": {**ON, "maxLoraRank": 1}})
    settings = _load(low, tmp_path, monkeypatch)
    assert (settings.fine_tuning.lora_rank, settings.fine_tuning.max_lora_rank) == (1, 1)
    engine = container(low.get("Deployment", "demo-llmaas-engine-llama"))
    assert arg_after(engine["args"], "--max-lora-rank") == "1"
    high = {"gateway": {"config": {"fine_tuning": {"lora_rank": 32}}}}
    with pytest.raises(
        helm.HelmRenderError, match=r"lora_rank 32 is above fineTuning\.maxLoraRank 16"
    ):
        render_values({"engines": [ENGINE], "fineTuning": ON, **high})


def test_a_jobs_default_rank_is_one_the_gateway_starts_with_when_fine_tuning_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review 2026-12-07: with fineTuning.enabled false the rank was not checked, and
    gateway.config.fine_tuning.lora_rank 64 rendered, then every gateway refused to start (its
    max_lora_rank left at its default, 8). Above it is refused at render; at it, it loads."""
    top = FineTuningSettings.model_fields["max_lora_rank"].default
    with pytest.raises(
        helm.HelmRenderError,
        match=rf"gateway.config.fine_tuning.lora_rank {top + 1} is above {top}, the gateway's "
        r"fine_tuning.max_lora_rank with fineTuning.enabled false",
    ):
        render_values({"gateway": {"config": {"fine_tuning": {"lora_rank": top + 1}}}})
    rendered = render_values_as({"gateway": {"config": {"fine_tuning": {"lora_rank": top}}}})
    assert _load(rendered, tmp_path, monkeypatch).fine_tuning.lora_rank == top


@pytest.mark.parametrize(
    ("base_models", "message"),
    [
        ([], "fineTuning.baseModels: at least one base model is needed"),
        ([{"name": "gpt-4o", "path": "/m"}], 'fineTuning.baseModels: "gpt-4o" is not a model'),
        (
            [{"name": ENGINE["model"], "path": "/a"}, {"name": ENGINE["model"], "path": "/b"}],
            "is listed twice",
        ),
    ],
)
def test_base_models_must_be_models_of_the_release(
    base_models: list[dict[str, str]], message: str
) -> None:
    values = {"engines": [ENGINE], "fineTuning": {"enabled": True, "baseModels": base_models}}
    with pytest.raises(helm.HelmRenderError, match=message):
        render_values(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"fineTuning": {**ON, "trainer": {"terminationGracePeriodSeconds": 40}}},
            r"fineTuning.trainer.terminationGracePeriodSeconds \(40\) is shorter than a trainer's "
            r"stop \(45: gateway.config.fine_tuning.stop_checkpoint_s \+ 15\)",
        ),
        (
            {"gateway": {"config": {"fine_tuning": {"stop_checkpoint_s": 120}}}, "fineTuning": ON},
            r"fineTuning.trainer.terminationGracePeriodSeconds \(60\) is shorter than a trainer's "
            r"stop \(135: ",
        ),
    ],
    ids=["grace-too-short", "checkpoint-too-long"],
)
def test_a_trainer_grace_period_shorter_than_its_stop_is_refused(
    values: dict[str, Any], message: str
) -> None:
    """Kubernetes would SIGKILL a trainer whose job still writes its checkpoint."""
    with pytest.raises(helm.HelmRenderError, match=message):
        render_values({"engines": [ENGINE], **values})
    render_values({"engines": [ENGINE], "fineTuning": ON})  # the defaults: 60 s for 45


# fineTuning.trainer.env entries refused at render: (name, value, message).
TRAINER_ENV: dict[str, tuple[str, str, str]] = {
    "the Redis it takes jobs from": (
        "LLMAAS_REDIS_URL",
        "redis://elsewhere:6379/0",
        r"fineTuning.trainer.env: LLMAAS_REDIS_URL would override a setting the chart sets from "
        r"redis: set that instead",
    ),
    "the files directory": (
        "llmaas_files__dir",
        "/elsewhere",
        r"llmaas_files__dir would override a setting the chart sets from "
        r"fineTuning.storage.mountPath",
    ),
    "the Hugging Face cache": (
        "HF_HOME",
        "/data/hf",
        r"fineTuning.trainer.env: HF_HOME would override a setting the chart sets",
    ),
    "the stop checkpoint its grace period is checked against": (
        "LLMAAS_FINE_TUNING__STOP_CHECKPOINT_S",
        "600",
        r"would override gateway.config.fine_tuning.stop_checkpoint_s, from which the chart "
        r"derives the check of fineTuning.trainer.terminationGracePeriodSeconds",
    ),
    "a whole section": (
        "LLMAAS_FILES",
        '{"enabled": true}',
        r"fineTuning.trainer.env: LLMAAS_FILES would replace a whole section of the config",
    ),
    "a misspelt setting": (
        "LLMAAS_FINETUNING__THREADS",
        "2",
        r"fineTuning.trainer.env: LLMAAS_FINETUNING__THREADS is not a setting: the trainer would "
        r"refuse to start",
    ),
}


@pytest.mark.parametrize("case", list(TRAINER_ENV))
def test_trainer_env_that_would_not_work_is_refused(case: str) -> None:
    """Found by review 2026-12-07: fineTuning.trainer.env was not checked. A name the chart
    sets in the trainer's container was rendered twice (Kubernetes keeps the last: the trainer
    took jobs from another Redis, or wrote adapters where no engine looks), and a misspelt
    LLMAAS_* name crash-looped it. Refused as gateway.env's are, naming the value to set."""
    name, value, message = TRAINER_ENV[case]
    trainer = {"env": [{"name": name, "value": value}]}
    with pytest.raises(helm.HelmRenderError, match=message):
        render_values({"engines": [ENGINE], "fineTuning": {**ON, "trainer": trainer}})


def test_a_setting_the_chart_leaves_alone_reaches_the_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What deploy.md tells to put there: a setting only the trainer needs, and its libraries'
    own variables. Each name once in its container, and the trainer's settings take it."""
    env = [
        {"name": "LLMAAS_FINE_TUNING__THREADS", "value": "2"},
        {"name": "PYTORCH_CUDA_ALLOC_CONF", "value": "expandable_segments:True"},
    ]
    rendered = render_values_as(
        {"engines": [ENGINE], "fineTuning": {**ON, "trainer": {"env": env}}}
    )
    trainer = _trainer(rendered)
    names = [e["name"] for e in container(trainer)["env"]]
    assert len(names) == len(set(names)), names
    config = tmp_path / "config.yaml"
    config.write_text(rendered.config_text())
    for name in [n for n in os.environ if n.startswith("LLMAAS_")]:
        monkeypatch.delenv(name)
    for name, value in _secret_stand_ins(trainer).items():
        monkeypatch.setenv(name, value)
    assert load_settings(config).fine_tuning.threads == 2
