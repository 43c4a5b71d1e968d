"""What the rendered workloads promise a user: engines get GPUs and probes sized for slow model
loads, every selector reaches the pods it means, pods run with secure defaults, and a gateway
pod lives long enough after SIGTERM to finish its streams."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from redis import AuthenticationError, Redis
from redis import ConnectionError as RedisConnectionError
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway import admin_client, cli
from gateway.embedded.engine import PROBED_PATHS
from gateway.embedded.redis_server import redis_server_binary
from gateway.netutil import free_port
from tests.helm.chart import (
    CHART,
    NAMESPACE,
    Obj,
    Rendered,
    Renders,
    arg_after,
    component_of,
    container,
    env_of,
    pod_labels,
    pod_spec,
    render,
    render_values_as,
    selects,
)
from tests.helm.test_chart_render import K8S_VERSION
from tests.support.cli import llmaas

GPU = "nvidia.com/gpu"


def _volumes(workload: Obj) -> dict[str, Obj]:
    return {v["name"]: v for v in pod_spec(workload).get("volumes", [])}


def _mounts(workload: Obj) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container(workload).get("volumeMounts", [])}


def _selected(rendered: Rendered, selector: dict[str, str]) -> list[Obj]:
    return [w for w in rendered.workloads() if selects(selector, pod_labels(w))]


def test_gpu_engines_request_gpus_and_run_vllm(rendered: Rendered) -> None:
    engines = [e for e in rendered.engines() if "sim" not in container(e).get("command", [])]
    assert engines or rendered.case == "simulator"
    for engine in engines:
        c = container(engine)
        gpus = c["resources"]["limits"][GPU]
        assert gpus >= 1
        assert c["resources"]["requests"][GPU] == gpus
        assert gpus >= int(arg_after(c["args"], "--tensor-parallel-size"))
        assert c["image"].startswith("vllm/vllm-openai:")
        assert arg_after(c["args"], "--port") == "8000"
        assert "--enable-prompt-tokens-details" in c["args"]  # (else cached_tokens metered 0)
        if _setting(rendered, engine, "priorityScheduling"):
            assert arg_after(c["args"], "--scheduling-policy") == "priority"
        else:
            assert "--scheduling-policy" not in c["args"]
        if _setting(rendered, engine, "logProbes"):
            assert "--disable-access-log-for-endpoints" not in c["args"]
        else:  # the gateway's polls stay out of vLLM's access log
            probes = arg_after(c["args"], "--disable-access-log-for-endpoints")
            assert probes == PROBED_PATHS
        env = env_of(engine)
        assert env["VLLM_ENABLE_RESPONSES_API_STORE"]["value"] == "1"
        assert env["HF_HOME"]["value"].startswith(_mount_of(engine, "model-cache"))
        shm = _volumes(engine)[_mounts(engine)["/dev/shm"]]
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod_spec(engine)[
            "tolerations"
        ]


def test_vllm_serves_the_model_given_as_its_positional_argument(rendered: Rendered) -> None:
    """`vllm serve <model>`: vLLM 0.32 warns that --model will be removed."""
    for engine in rendered.engines():
        c = container(engine)
        if c["command"] == ["llmaas", "sim"]:
            continue
        assert c["command"] == ["vllm", "serve"]
        name = engine["metadata"]["labels"]["llmaas.io/engine"]
        (entry,) = [e for e in rendered.values["engines"] if e["name"] == name]
        assert c["args"][0] == entry["model"]
        assert not any(a == "--model" or a.startswith("--model=") for a in c["args"])


def test_engine_probes_allow_slow_model_loads(rendered: Rendered) -> None:
    for engine in rendered.engines():
        c = container(engine)
        (port,) = c["ports"]
        assert (port["name"], port["containerPort"]) == ("http", 8000)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60


def test_engines_leave_the_gateways_pools_before_they_stop(rendered: Rendered) -> None:
    config = yaml.safe_load(rendered.config_text())
    refresh = config.get("routing", {}).get("dns_refresh_s", 10)
    for engine in rendered.engines():
        sleep = container(engine)["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert sleep >= refresh, "the gateway re-resolves the Service before SIGTERM"
        assert pod_spec(engine)["terminationGracePeriodSeconds"] > sleep
        startup = container(engine)["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        assert engine["spec"]["progressDeadlineSeconds"] > budget, "a model load is progress"


VLLM_TEARDOWN_S = 10  # left after the drain for vLLM to free the GPUs and exit


def test_vllm_finishes_requests_in_flight_before_it_is_killed(rendered: Rendered) -> None:
    """vLLM's --shutdown-timeout defaults to 0: on SIGTERM it aborts every request in flight, so
    each stream on a pod being rolled, scaled down or drained off its node would break."""
    for engine in rendered.engines():
        c = container(engine)
        if c["command"] != ["vllm", "serve"]:
            continue
        sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = pod_spec(engine)["terminationGracePeriodSeconds"]
        drain = int(arg_after(c["args"], "--shutdown-timeout"))
        assert drain == grace - sleep - VLLM_TEARDOWN_S > 0


def test_simulator_engines_run_llmaas_sim_without_gpus(renders: Renders) -> None:
    rendered = renders["simulator"]
    gateway_image = container(rendered.gateway())["image"]
    served = set()
    for engine in rendered.engines():
        c = container(engine)
        assert c["command"] == ["llmaas", "sim"]
        assert c["image"] == gateway_image
        assert GPU not in str(c["resources"])
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        served.add(arg_after(c["args"], "--model"))
    assert served == {"sim-chat", "sim-embed"}
    assert not rendered.kind("PersistentVolumeClaim")


def test_gpu_type_runtime_class_and_cache_claim(renders: Renders) -> None:
    (engine,) = renders["gpu"].engines()
    spec = pod_spec(engine)
    assert spec["nodeSelector"] == {
        "pool": "gpu",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    }
    assert spec["runtimeClassName"] == "nvidia"
    assert container(engine)["resources"]["limits"][GPU] == 4
    assert _volumes(engine)["model-cache"]["persistentVolumeClaim"]["claimName"] == "models-rwx"
    hf = env_of(engine)["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert renders["gpu"].get("Secret", hf["name"])["data"][hf["key"]]


@pytest.mark.parametrize(
    ("args", "gpus"),
    [
        ([], 2),
        (["--pipeline-parallel-size", "2"], 4),
        (["--pipeline-parallel-size=3"], 6),
        (["--dtype", "bfloat16", "-pp", "2"], 4),
        (["-pp=2"], 4),
        (["--data-parallel-size", "2"], 4),
        (["-dp=3", "--pipeline-parallel-size=2"], 12),
        (["-tp", "1"], 1),
        (["-tp=4", "--tensor_parallel_size", "3"], 3),
        (["--tensor-parallel-size=8", "-pp", "2", "-pp", "1"], 8),
    ],
)
def test_engine_pods_get_a_gpu_per_shard(args: list[str], gpus: int) -> None:
    """vLLM runs tensor x pipeline x data parallel workers, one per GPU: fewer GPUs in the pod
    and it never starts. extraArgs come after --tensor-parallel-size, and the last of a flag
    wins (test_chart_vllm_args checks the same against vLLM's own parser)."""
    engine = {"name": "big", "model": "org/big", "tensorParallelSize": 2, "extraArgs": args}
    (deployment,) = render_values_as({"engines": [engine]}).engines()
    resources = container(deployment)["resources"]
    assert resources["limits"][GPU] == resources["requests"][GPU] == gpus


def test_lora_and_tool_calling_flags(renders: Renders) -> None:
    rendered = renders["multi-engine-lora"]
    h100 = rendered.get("Deployment", "demo-llmaas-engine-llama-h100")
    args = container(h100)["args"]
    assert "--enable-lora" in args
    assert arg_after(args, "--max-lora-rank") == "64"
    assert arg_after(args, "--max-loras") == "8"
    assert arg_after(args, "--lora-modules") == "sql-lora=/models/adapters/sql"
    assert "support-lora=/models/adapters/support" in args
    assert env_of(h100)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    l40s = rendered.get("Deployment", "demo-llmaas-engine-llama-l40s")
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env_of(l40s)
    embed = container(rendered.get("Deployment", "demo-llmaas-engine-embed"))["args"]
    assert "--enable-lora" not in embed
    assert "--no-enable-prefix-caching" in embed
    assert "--scheduling-policy" not in embed
    assert embed[-2:] == ["--runner", "pooling"]
    default = container(renders["default"].engines()[0])["args"]
    assert "--enable-auto-tool-choice" in default
    assert arg_after(default, "--tool-call-parser") == "hermes"


def test_workload_selectors_match_their_own_pods(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        assert selects(workload["spec"]["selector"]["matchLabels"], pod_labels(workload))
        assert _selected(rendered, workload["spec"]["selector"]["matchLabels"]) == [workload]


def test_services_select_the_pods_of_their_component(rendered: Rendered) -> None:
    for service in rendered.kind("Service"):
        pods = _selected(rendered, service["spec"]["selector"])
        assert pods, f"Service {service['metadata']['name']} selects no pods"
        assert {component_of(p) for p in pods} == {component_of(service)}
        for port in service["spec"]["ports"]:
            for pod in pods:
                assert port["targetPort"] in {p["name"] for p in container(pod)["ports"]}
        if component_of(service) == "engine":
            assert service["spec"]["clusterIP"] == "None"
            assert [p["metadata"]["name"] for p in pods] == [service["metadata"]["name"]]


def test_network_policies_admit_only_the_gateway(rendered: Rendered) -> None:
    """Engines take traffic from gateways only; Redis from gateways, and trainers if any."""
    policies = rendered.kind("NetworkPolicy")
    protected = {component_of(p) for p in policies}
    expected = {"engine", "redis"} if rendered.values["redis"]["enabled"] else {"engine"}
    assert protected == expected
    for policy in policies:
        spec = policy["spec"]
        targets = _selected(rendered, spec["podSelector"]["matchLabels"])
        assert targets
        assert {component_of(t) for t in targets} == {component_of(policy)}
        (rule,) = spec["ingress"]
        pod_peers = [p for p in rule["from"] if "podSelector" in p]
        sources = [
            s["metadata"]["name"]
            for peer in pod_peers
            for s in _selected(rendered, peer["podSelector"]["matchLabels"])
        ]
        expected_sources = [rendered.gateway()["metadata"]["name"]]
        if component_of(policy) == "redis":
            expected_sources += [
                t["metadata"]["name"] for t in rendered.of("Deployment", "trainer")
            ]
        assert sources == expected_sources
        for port in rule["ports"]:
            for target in targets:
                assert port["port"] in {p["name"] for p in container(target)["ports"]}


def test_disruption_budgets_and_autoscalers_target_their_workloads(rendered: Rendered) -> None:
    for pdb in rendered.kind("PodDisruptionBudget"):
        pods = _selected(rendered, pdb["spec"]["selector"]["matchLabels"])
        assert [p["metadata"]["name"] for p in pods] == [pdb["metadata"]["name"]]
    gateway = rendered.gateway()
    hpas = rendered.kind("HorizontalPodAutoscaler")
    if rendered.values["gateway"]["autoscaling"]["enabled"]:
        (hpa,) = hpas
        assert hpa["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
        assert "replicas" not in gateway["spec"], "the HPA owns the replica count"
        assert container(gateway)["resources"]["requests"]["cpu"], "CPU utilisation needs requests"
    else:
        assert hpas == []
        assert gateway["spec"]["replicas"] == rendered.values["gateway"]["replicas"]


def test_ingress_case_routes_the_api_with_tls_and_keeps_two_gateways(renders: Renders) -> None:
    rendered = renders["ingress-hpa-pdb"]
    (ingress,) = rendered.kind("Ingress")
    service = rendered.get("Service", rendered.gateway()["metadata"]["name"])
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "llm.example.com"
    assert {p["path"] for p in rule["http"]["paths"]} == {"/v1", "/admin"}
    for path in rule["http"]["paths"]:
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert ingress["spec"]["tls"][0]["secretName"] == "llm-example-tls"
    pdbs = {p["metadata"]["name"]: p["spec"] for p in rendered.kind("PodDisruptionBudget")}
    gateway_pdb = pdbs[service["metadata"]["name"]]
    assert gateway_pdb["minAvailable"] == 2
    assert "maxUnavailable" not in gateway_pdb
    assert len(pdbs) == 1 + len(rendered.engines())


def test_gateway_pods_run_with_secure_defaults(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        if component_of(workload) == "engine" and "sim" not in container(workload).get(
            "command", []
        ):
            continue  # vLLM's image runs as root; tested below
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False
        sc = container(workload)["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
    for engine in rendered.engines():
        assert container(engine)["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert pod_spec(engine)["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_gateway_has_writable_dirs_on_a_read_only_root(rendered: Rendered) -> None:
    gateway = rendered.gateway()
    config = yaml.safe_load(rendered.config_text())
    mounts = _mounts(gateway)
    volumes = _volumes(gateway)
    for path in ("/tmp", config["metering"]["spill_dir"]):
        assert "emptyDir" in volumes[mounts[path]], path
    config_mount = next(p for p, v in mounts.items() if v == "config")
    assert container(gateway)["args"] == ["serve", "--config", f"{config_mount}/config.yaml"]


def test_gateway_drains_streams_before_it_is_killed(rendered: Rendered) -> None:
    gateway = rendered.gateway()
    config = yaml.safe_load(rendered.config_text())
    c = container(gateway)
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop > 0
    grace = config.get("shutdown_grace_s", 30)
    flush = config["metering"].get("flush_timeout_s", 10)
    assert grace >= 60, "in-flight streams get at least a minute"
    assert pod_spec(gateway)["terminationGracePeriodSeconds"] >= pre_stop + grace + flush
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_a_gateway_without_a_prestop_sleep_has_no_prestop_hook() -> None:
    """Kubernetes before 1.33 refuses `sleep: {seconds: 0}` (PodLifecycleSleepActionAllowZero),
    and the chart supports 1.30: 0 leaves the hook out, as for engines."""
    rendered = render_values_as({"gateway": {"preStopSleepSeconds": 0}})
    assert "lifecycle" not in container(rendered.gateway())


def test_redis_keeps_an_append_only_file_behind_a_password(rendered: Rendered) -> None:
    sets = rendered.kind("StatefulSet")
    if not rendered.values["redis"]["enabled"]:
        assert sets == []
        return
    (redis,) = sets
    c = container(redis)
    args = c["args"]
    assert args[0] == _mount_of(redis, "config") + "/redis.conf"
    assert arg_after(args, "--appendonly") == "yes"
    (init,) = pod_spec(redis)["initContainers"]
    redis_ref = env_of(redis)["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"]
    init_ref = {e["name"]: e for e in init["env"]}["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    gateway_ref = env_of(rendered.gateway())["LLMAAS_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert redis_ref == init_ref == gateway_ref
    claims = redis["spec"].get("volumeClaimTemplates", [])
    data = _mounts(redis)["/data"]
    if rendered.values["redis"]["persistence"]["enabled"]:
        assert [c["metadata"]["name"] for c in claims] == [data]
    else:
        assert claims == []
        assert "emptyDir" in _volumes(redis)[data]


def test_redis_password_stays_out_of_every_command_line(renders: Renders) -> None:
    """Values in argv are visible to anyone who can list processes on the node."""
    rendered = renders["inline-secrets"]
    (redis,) = rendered.kind("StatefulSet")
    commands = [
        [*c.get("command", []), *c.get("args", [])]
        for c in pod_spec(redis)["containers"] + pod_spec(redis)["initContainers"]
    ]
    text = json.dumps(commands)
    assert "redis-password-0123456789abcdef" not in text
    assert "--requirepass" not in text
    assert "$(REDIS_PASSWORD)" not in text, "the kubelet would put the password there"


def test_redis_runs_with_the_config_its_init_step_writes(tmp_path: Path) -> None:
    """The init container's script, run as rendered (on this machine's sh, od, tr and sed),
    writes a config with which a real redis-server, started with the container's arguments,
    takes the password whatever its characters, caps its memory and never evicts."""
    (redis,) = render("default").kind("StatefulSet")
    (init,) = pod_spec(redis)["initContainers"]
    config_dir = next(m["mountPath"] for m in init["volumeMounts"] if m["name"] == "config")
    password = "p@ss/w#rd%?\"\\ 'x\nnext line"
    subprocess.run(
        [*init["command"], init["args"][0].replace(f"{config_dir}/", f"{tmp_path}/")],
        env={"PATH": os.environ["PATH"], "REDIS_PASSWORD": password, "MEMORY_LIMIT_MIB": "2048"},
        check=True,
        timeout=30,
    )
    args = container(redis)["args"]
    args = [a.replace(f"{config_dir}/", f"{tmp_path}/") for a in args]
    port = free_port()
    args[args.index("--port") + 1] = str(port)
    args[args.index("--dir") + 1] = str(tmp_path)
    with subprocess.Popen(
        [str(redis_server_binary()), *args, "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
    ) as server:
        try:
            client = _redis_when_up(port, password, server)
            assert client.config_get("maxmemory") == {"maxmemory": str(2048 * 70 // 100 << 20)}
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
            client.close()
            wrong = Redis(port=port, password="wrong", retry=Retry(NoBackoff(), 0))
            with pytest.raises(AuthenticationError):
                wrong.ping()
            wrong.close()
        finally:
            server.terminate()
            server.wait(timeout=30)


def _redis_when_up(port: int, password: str, server: subprocess.Popen[bytes]) -> Redis:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.poll() is None, "redis-server refused its config"
        client = Redis(port=port, password=password, decode_responses=True)
        try:
            client.ping()
        except AuthenticationError:
            client.close()
            raise
        except RedisConnectionError:  # not listening yet
            client.close()
            time.sleep(0.05)
        else:
            return client
    raise AssertionError(f"redis-server on port {port} did not answer")


def test_redis_statefulset_is_governed_by_a_headless_service(renders: Renders) -> None:
    """A StatefulSet's serviceName is meant to be headless; clients keep the ClusterIP one."""
    rendered = renders["default"]
    (redis,) = rendered.kind("StatefulSet")
    governing = rendered.get("Service", redis["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert selects(governing["spec"]["selector"], pod_labels(redis))
    url = env_of(rendered.gateway())["LLMAAS_REDIS_URL"]["value"]
    host = url.removeprefix("redis://").split(".")[0]
    assert host == redis["metadata"]["name"] != governing["metadata"]["name"]
    clients = rendered.get("Service", host)
    assert clients["spec"]["type"] == "ClusterIP"
    assert "clusterIP" not in clients["spec"]
    assert selects(clients["spec"]["selector"], pod_labels(redis))


# Release names Helm takes (up to 53 characters) that make "<release>-llmaas-redis" longer than 52.
LONG_RELEASES = ("customer-facing-llm-gateway-production-eu1", "r" * 53)
REVISION_HASH = 10  # the longest hash Kubernetes appends in a StatefulSet's revision label


@pytest.mark.parametrize("release", LONG_RELEASES)
def test_redis_pods_can_be_created_under_a_long_release_name(release: str) -> None:
    """Each pod of a StatefulSet carries controller-revision-hash "<name>-<hash>", a label value
    Kubernetes refuses past 63 characters: with a longer name Redis would never start."""
    rendered = render_values_as({}, release=release)
    (redis,) = rendered.kind("StatefulSet")
    name = redis["metadata"]["name"]
    assert len(f"{name}-{'h' * REVISION_HASH}") <= 63, name
    assert name.startswith(release[:40])
    governing = rendered.get("Service", redis["spec"]["serviceName"])
    assert selects(governing["spec"]["selector"], pod_labels(redis))
    host = env_of(rendered.gateway())["LLMAAS_REDIS_URL"]["value"].split("//")[1].split(".")[0]
    assert selects(rendered.get("Service", host)["spec"]["selector"], pod_labels(redis))


def test_notes_tell_how_to_reach_the_gateway_and_create_a_key(rendered: Rendered) -> None:
    gateway = rendered.gateway()
    name = gateway["metadata"]["name"]
    token = env_of(gateway)["LLMAAS_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    notes = rendered.notes
    assert f"-n {NAMESPACE} exec deploy/{name} -- llmaas keys create --tenant" in notes
    assert f"get secret {token['name']} -o jsonpath='{{.data.{token['key']}}}'" in notes
    if rendered.values["gateway"]["ingress"]["enabled"]:
        assert "https://llm.example.com/v1" in notes
    else:
        assert f"port-forward svc/{name} 8080:80" in notes


def _mount_of(workload: Obj, volume: str) -> str:
    return next(p for p, v in _mounts(workload).items() if v == volume)


def _setting(rendered: Rendered, engine: Obj, key: str) -> object:
    """An engine entry's top-level value, else engineDefaults' (as the chart merges them)."""
    name = engine["metadata"]["labels"]["llmaas.io/engine"]
    (entry,) = [e for e in rendered.values["engines"] if e["name"] == name]
    return entry.get(key, rendered.values["engineDefaults"][key])


def test_simulator_engine_commands_run_as_rendered(renders: Renders) -> None:
    """Each simulator pod's command and args, run with the installed entry point (on a free
    loopback port instead of 0.0.0.0:8000), serve the model the gateway is told about."""
    for engine in renders["simulator"].engines():
        c = container(engine)
        args = list(c["args"])
        args[args.index("--host") + 1] = "127.0.0.1"
        port = free_port()
        args[args.index("--port") + 1] = str(port)
        with subprocess.Popen(
            [llmaas(), *c["command"][1:], *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ) as process:
            try:
                models = _served_models(f"http://127.0.0.1:{port}", process)
            finally:
                process.terminate()
                process.wait(timeout=30)
        assert models == [arg_after(c["args"], "--model")]


def _served_models(url: str, process: subprocess.Popen[bytes]) -> list[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as resp:
                return [m["id"] for m in json.load(resp)["data"]]
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer /v1/models")


def test_pod_templates_carry_no_label_that_changes_with_the_chart(rendered: Rendered) -> None:
    """A chart upgrade (helm.sh/chart, app.kubernetes.io/version) or new commonLabels must not
    change a pod template: that would restart every GPU engine and Redis."""
    for workload in rendered.workloads():
        selector = workload["spec"]["selector"]["matchLabels"]
        assert pod_labels(workload) == selector, workload["metadata"]["name"]
        assert "helm.sh/chart" in workload["metadata"]["labels"], "the workload keeps them"


def test_common_labels_reach_objects_and_pod_labels_reach_pods() -> None:
    values = {
        "commonLabels": {"team": "ml"},
        "gateway": {"podLabels": {"sidecar": "off"}},
        "engineDefaults": {"podLabels": {"gpu-pool": "a"}},
    }
    rendered = render_values_as(values)
    for workload in rendered.workloads():
        assert workload["metadata"]["labels"]["team"] == "ml"
        labels = pod_labels(workload)
        assert "team" not in labels
        assert "helm.sh/chart" not in labels
        assert "app.kubernetes.io/version" not in labels
    assert pod_labels(rendered.gateway())["sidecar"] == "off"
    assert all(pod_labels(e)["gpu-pool"] == "a" for e in rendered.engines())


def test_recreate_strategy_renders_without_rolling_update() -> None:
    """Kubernetes refuses rollingUpdate beside type: Recreate (the default's would merge in)."""
    engine = {"name": "llama", "model": "m", "strategy": {"type": "Recreate"}, "replicas": 2}
    engine["modelCache"] = {"accessModes": ["ReadWriteMany"]}
    (deployment,) = render_values_as({"engines": [engine]}).engines()
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_notes_list_each_model_the_gateway_routes_once(rendered: Rendered) -> None:
    """Engines pooled under one name, adapters and extraModels: the models of the gateway's
    config, each once, a simulator's marked."""
    routed = [m["name"] for m in yaml.safe_load(rendered.config_text())["models"]]
    simulated = {
        arg_after(container(e)["args"], "--model")
        for e in rendered.engines()
        if container(e)["command"] == ["llmaas", "sim"]
    }
    (line,) = [line for line in rendered.notes.splitlines() if line.startswith("Models: ")]
    listed = line.removeprefix("Models: ").split(", ")
    assert listed == [f"{m} (simulator)" if m in simulated else m for m in routed]


def test_notes_set_every_variable_they_use(rendered: Rendered) -> None:
    notes = rendered.notes
    for variable in ("GATEWAY", "KEY"):
        assert f"${variable}" in notes
        assert f"export {variable}=" in notes, f"${variable} is used but never set"
    creates = [line for line in notes.splitlines() if "llmaas keys create" in line]
    assert len(creates) == 2  # in a gateway pod, and from this machine
    for line in creates:
        assert line.lstrip().startswith("export KEY=$(")
        assert line.endswith(" | sed -n 's/^key (shown once): //p')")


V1 = {"path": "/v1", "pathType": "Prefix"}


@pytest.mark.parametrize(
    "gateway",
    [
        {"ingress": {"enabled": True, "hosts": [{"host": "", "paths": [V1]}]}},
        {"ingress": {"enabled": True}},
        {"service": {"type": "LoadBalancer"}},
    ],
)
def test_notes_commands_work_without_a_port_forward_of_their_own(gateway: Obj) -> None:
    """Behind an Ingress (a rule with or without a host) or a LoadBalancer, $GATEWAY is still
    set to an address, and the CLI's --url http://127.0.0.1:8080 gets the port-forward it needs
    (the Ingress routes /v1 only: the admin API is not behind it)."""
    rendered = render_values_as({"gateway": gateway})
    lines = [line.strip() for line in rendered.notes.splitlines()]
    assert not [line for line in lines if ":///" in line]
    assert [line for line in lines if line.startswith("export GATEWAY=http")]
    forward = f"kubectl -n {NAMESPACE} port-forward svc/{rendered.gateway()['metadata']['name']}"
    cli = next(i for i, line in enumerate(lines) if "--url http://127.0.0.1:8080" in line)
    assert any(line.startswith(forward) for line in lines[:cli])


def test_notes_read_a_load_balancers_ip_or_host_name() -> None:
    rendered = render_values_as({"gateway": {"service": {"type": "LoadBalancer"}}})
    jsonpath = "{.status.loadBalancer.ingress[0].ip}{.status.loadBalancer.ingress[0].hostname}"
    assert f"-o jsonpath='{jsonpath}'" in rendered.notes


def test_notes_cut_the_key_out_of_what_the_cli_prints(
    renders: Renders, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llmaas keys create`'s real output, through the notes' own sed, leaves just the key."""

    class Admin:
        def __init__(self, *args: object) -> None:
            pass

        async def call(self, *args: object) -> dict[str, str]:
            return {"id": "key_1", "tenant": "my-team", "name": "first-key", "key": "sk-llm-abc"}

    monkeypatch.setattr(admin_client, "AdminClient", Admin)  # (run_admin imports it when run)
    assert cli.main(["keys", "create", "--tenant", "my-team", "--name", "first-key"]) == 0
    printed = capsys.readouterr().out
    (sed,) = set(re.findall(r"\| (sed -n '[^']*')\)", renders["default"].notes))
    cut = subprocess.run(
        shlex.split(sed), input=printed, capture_output=True, text=True, check=True, timeout=10
    )
    assert cut.stdout == "sk-llm-abc\n"


def test_ingress_example_lifts_nginx_body_limit_and_buffering(renders: Renders) -> None:
    """ingress-nginx refuses bodies over 1 MiB by default; files go up to 512 MiB."""
    (ingress,) = renders["ingress-hpa-pdb"].kind("Ingress")
    annotations = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    body = annotations[prefix + "proxy-body-size"]
    assert body.endswith("m")
    assert int(body.removesuffix("m")) > 512
    assert annotations[prefix + "proxy-request-buffering"] == "off"
    assert annotations[prefix + "proxy-buffering"] == "off"
    guide = (Path(__file__).parents[2] / "docs" / "deploy.md").read_text()
    values = (CHART / "values.yaml").read_text()
    for text in (guide, values):
        assert "proxy-body-size" in text
        assert "proxy-request-buffering" in text


def test_metrics_peers_name_pods_not_whole_namespaces(renders: Renders) -> None:
    """vLLM serves /metrics on its API port: a peer let in to scrape can also call the engine."""
    policy = renders["monitoring"].get("NetworkPolicy", "demo-llmaas-engines")
    (rule,) = policy["spec"]["ingress"]
    outside = [peer for peer in rule["from"] if "namespaceSelector" in peer]
    assert outside
    for peer in outside:
        assert peer["podSelector"]["matchLabels"], "one Prometheus, not its whole namespace"
    guide = (Path(__file__).parents[2] / "docs" / "deploy.md").read_text()
    example = guide[guide.index("metricsFrom:\n") :][:300]
    assert "namespaceSelector" in example
    assert "podSelector" in example


def test_extra_volumes_mount_a_private_ca_in_gateway_and_trainer() -> None:
    ca = "/etc/llmaas/ca"
    values = {
        "engines": [{"name": "llama", "model": "m"}],
        "fineTuning": {"enabled": True, "baseModels": [{"name": "m", "path": "/models/m"}]},
        "gateway": {
            "extraVolumes": [{"name": "private-ca", "configMap": {"name": "private-ca"}}],
            "extraVolumeMounts": [{"name": "private-ca", "mountPath": ca, "readOnly": True}],
            "config": {"auth": {"jwt": {"jwks_ca_file": f"{ca}/ca.crt"}}},
        },
    }
    rendered = render_values_as(values)
    config = yaml.safe_load(rendered.config_text())
    assert config["auth"]["jwt"]["jwks_ca_file"] == f"{ca}/ca.crt"
    (trainer,) = rendered.of("Deployment", "trainer")
    for workload in (rendered.gateway(), trainer):
        assert _mounts(workload)[ca] == "private-ca"
        assert _volumes(workload)["private-ca"] == {
            "name": "private-ca",
            "configMap": {"name": "private-ca"},
        }
        kubernetes_validate.validate(workload, K8S_VERSION, strict=True)


# A release's tag: "7.4.2-alpine", "v0.32.0", the chart's appVersion; not "7.4-alpine" or
# "latest", which move under a running release (a rescheduled pod pulls another Redis).
RELEASE_TAG = re.compile(r":v?\d+\.\d+\.\d+(-[a-z0-9.]+)?$")


def test_every_image_names_a_release(rendered: Rendered) -> None:
    images = [
        c["image"]
        for workload in rendered.workloads()
        for c in pod_spec(workload)["containers"] + pod_spec(workload).get("initContainers", [])
    ]
    assert images
    assert [i for i in images if not RELEASE_TAG.search(i)] == []
