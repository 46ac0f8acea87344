"""compose/ and the KubeEdge manifests: parsed and checked against the code (no Docker engine here)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_offload.cli import build_parser
from edge_offload.settings import Settings

COMPOSE = Path(__file__).resolve().parent.parent / "compose"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _check_env_name(name: str) -> None:
    """EDGE_OFFLOAD_SECTION__FIELD must name a real settings field."""
    if name == "EDGE_OFFLOAD_CONFIG":
        return
    assert name.startswith("EDGE_OFFLOAD_"), name
    parts = name.removeprefix("EDGE_OFFLOAD_").lower().split("__")
    model: Any = Settings
    for part in parts:
        assert part in model.model_fields, f"{name}: no setting {part!r}"
        model = model.model_fields[part].annotation


def _subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")  # noqa: SLF001
    return set(action.choices)


def test_compose_services_use_real_settings_and_commands() -> None:
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"mosquitto", "kafka", "edge-agent", "trainer", "camera", "field-unit"} <= set(services)
    commands = _subcommands()
    for name, svc in services.items():
        for env_name in (svc.get("environment") or {}):
            if env_name.startswith("EDGE_OFFLOAD_"):
                _check_env_name(env_name)
        if "command" in svc and svc.get("image", "").startswith("edge-offload"):
            assert svc["command"][0] in commands, f"{name}: unknown subcommand {svc['command'][0]}"
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    conf = (COMPOSE / "mosquitto.conf").read_text()
    assert "listener 1883" in conf and "persistence true" in conf


def test_edge_deployment_reaches_edgecore_broker_on_edge_nodes() -> None:
    docs = {d["kind"]: d for d in _docs(COMPOSE / "kubeedge" / "edge-agent.yaml")}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert "node-role.kubernetes.io/edge" in pod["nodeSelector"]
    assert pod["hostNetwork"] is True  # edgecore's broker listens on the node's loopback
    container = pod["containers"][0]
    assert container["args"][0] in _subcommands()
    for env in container["env"]:
        _check_env_name(env["name"])
    port = int(next(e["value"] for e in container["env"] if e["name"] == "EDGE_OFFLOAD_EDGE__HTTP_PORT"))
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    toml = tomllib.loads(docs["ConfigMap"]["data"]["edge.toml"])
    settings = Settings(**toml)  # the embedded config validates against the settings model
    assert (settings.mqtt.host, settings.mqtt.port) == ("127.0.0.1", 1883)  # edgecore's external broker


@pytest.mark.parametrize("kind", ["DeviceModel", "Device"])
def test_device_resources_are_well_formed(kind: str) -> None:
    docs = [d for d in _docs(COMPOSE / "kubeedge" / "devices.yaml") if d["kind"] == kind]
    assert len(docs) == 2
    for d in docs:
        assert d["apiVersion"] == "devices.kubeedge.io/v1beta1"
        assert d["metadata"]["name"]
    if kind == "Device":
        models = {d["metadata"]["name"]: {p["name"] for p in d["spec"]["properties"]}
                  for d in _docs(COMPOSE / "kubeedge" / "devices.yaml") if d["kind"] == "DeviceModel"}
        for d in docs:
            props = {p["name"] for p in d["spec"]["properties"]}
            assert props <= models[d["spec"]["deviceModelRef"]["name"]]
