"""``edge-offload kafka-init`` on a real Kafka-protocol broker (Tansu); edges and the DC create no topics."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from cli.brokers import TansuBroker
from common.kafka_admin import topic_plan
from common.kafka_clients import make_admin
from common.settings import KafkaSettings, load_settings
from topics.names import KAFKA_MODEL_UPDATES
from topics.offload import KAFKA_DC_FRAMES

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bare_kafka() -> Iterator[TansuBroker]:
    """A broker nobody provisioned yet."""
    with TansuBroker(provision=False) as broker:
        yield broker


def _kafka_init(bootstrap: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_OFFLOAD_")}
    env.update(PYTHONPATH=str(ROOT), EDGE_OFFLOAD_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
               EDGE_OFFLOAD_OFFLOAD__DC_PARTITIONS="3")
    return subprocess.run([sys.executable, "-m", "cli.main", "kafka-init", *argv], capture_output=True, text=True,
                          env=env, timeout=120, cwd=ROOT)


async def test_kafka_init_creates_every_topic_with_partitions_and_configs(bare_kafka: TansuBroker) -> None:
    plan = {s.name: s for s in topic_plan(load_settings(offload={"dc_partitions": 3}))}
    dry = _kafka_init(bare_kafka.bootstrap_servers, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"{KAFKA_MODEL_UPDATES} partitions=1 replication=1 configs=cleanup.policy=compact" in dry.stdout
    first = _kafka_init(bare_kafka.bootstrap_servers)
    assert first.returncode == 0, first.stderr
    assert sorted(line.split()[1] for line in first.stdout.splitlines() if line.startswith("created")) == sorted(plan)
    again = _kafka_init(bare_kafka.bootstrap_servers)  # idempotent: an existing topic is left as it is
    assert again.returncode == 0 and "created" not in again.stdout and again.stdout.count("exists") == len(plan)

    admin = make_admin(KafkaSettings(bootstrap_servers=bare_kafka.bootstrap_servers))
    await admin.start()
    try:
        assert set(plan) <= set(await admin.list_topics())
        described = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(list(plan))}
        assert described == {name: spec.partitions for name, spec in plan.items()}
        assert described[KAFKA_DC_FRAMES] == 3 and described[KAFKA_MODEL_UPDATES] == 1
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in plan])
    finally:
        await admin.close()
    configs = {r[3]: {e[0]: e[1] for e in r[4]} for resp in responses for r in resp.resources}
    # Tansu answers DescribeConfigs with the configs a topic was created with.
    assert configs[KAFKA_MODEL_UPDATES]["cleanup.policy"] == "compact"
    for name, spec in plan.items():
        for key, value in spec.configs.items():
            assert configs[name].get(key) == value, (name, key, configs[name])


def test_no_product_module_creates_topics() -> None:
    """Only common/kafka_admin.py talks CreateTopics; only kafka-init and the test broker call it."""
    callers: dict[str, set[str]] = {}
    for package in ("common", "edge_agent", "cloud_trainer", "inference", "devices", "sim", "topics", "models", "cli",
                    "placement"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute | ast.Name):
                    name = node.attr if isinstance(node, ast.Attribute) else node.id
                    if name in ("create_topics", "ensure_topics", "init_topics", "provision", "NewTopic"):
                        callers.setdefault(str(path.relative_to(ROOT)), set()).add(name)
    assert set(callers) == {"common/kafka_admin.py", "cli/main.py", "cli/brokers.py"}, callers
    assert callers["cli/main.py"] == {"init_topics"} and callers["cli/brokers.py"] == {"provision"}
