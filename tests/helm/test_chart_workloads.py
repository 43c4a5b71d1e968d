"""What the rendered workloads promise a user: engines get GPUs and probes sized for slow model
loads, every selector reaches the pods it means, pods run with secure defaults, and a gateway
pod lives long enough after SIGTERM to finish its streams."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import yaml

from gateway.netutil import free_port
from tests.helm.chart import (
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
    selects,
)
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
        if _setting(rendered, engine, "priorityScheduling"):
            assert arg_after(c["args"], "--scheduling-policy") == "priority"
        else:
            assert "--scheduling-policy" not in c["args"]
        env = env_of(engine)
        assert env["VLLM_ENABLE_RESPONSES_API_STORE"]["value"] == "1"
        assert env["HF_HOME"]["value"].startswith(_mount_of(engine, "model-cache"))
        shm = _volumes(engine)[_mounts(engine)["/dev/shm"]]
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod_spec(engine)[
            "tolerations"
        ]


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


def test_redis_keeps_an_append_only_file_behind_a_password(rendered: Rendered) -> None:
    sets = rendered.kind("StatefulSet")
    if not rendered.values["redis"]["enabled"]:
        assert sets == []
        return
    (redis,) = sets
    args = container(redis)["args"]
    assert arg_after(args, "--appendonly") == "yes"
    assert arg_after(args, "--requirepass") == "$(REDIS_PASSWORD)"
    redis_ref = env_of(redis)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    gateway_ref = env_of(rendered.gateway())["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert redis_ref == gateway_ref
    claims = redis["spec"].get("volumeClaimTemplates", [])
    data = _mounts(redis)["/data"]
    if rendered.values["redis"]["persistence"]["enabled"]:
        assert [c["metadata"]["name"] for c in claims] == [data]
    else:
        assert claims == []
        assert "emptyDir" in _volumes(redis)[data]


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
