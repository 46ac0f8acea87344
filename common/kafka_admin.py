"""Kafka topics as provisioned infrastructure: the plan, and ``edge-offload kafka-init`` that applies it.

Edges and DC parts never create topics: a cluster is provisioned once with :func:`init_topics`
(partitions, replication and per-topic configs from the settings), and every client then
expects its topics to be there. ``offload.model-updates`` is compacted and keyed by model name,
so an edge that joins after any retention still reads the current version of every model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka.admin import NewTopic

from common.kafka_clients import make_admin
from common.settings import KafkaSettings, Settings
from topics.names import KAFKA_HARD_EXAMPLES, KAFKA_LABELS, KAFKA_MODEL_UPDATES, KAFKA_SPEECH_REVISIONS
from topics.offload import KAFKA_DC_DEAD_LETTERS, KAFKA_DC_FRAMES, KAFKA_DC_RESULTS

__all__ = ["TopicSpec", "topic_plan", "init_topics", "provision", "ensure_topics"]

_TOPIC_ALREADY_EXISTS = 36
_DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """One topic as kafka-init creates it."""

    name: str
    partitions: int
    replication: int
    configs: dict[str, str] = field(default_factory=dict)
    key: str = ""  # what the records are keyed by (documentation; compaction keeps the last per key)

    def describe(self) -> str:
        configs = ",".join(f"{k}={v}" for k, v in sorted(self.configs.items())) or "-"
        return (f"{self.name} partitions={self.partitions} replication={self.replication} configs={configs}"
                f"{' key=' + self.key if self.key else ''}")


def topic_plan(settings: Settings) -> list[TopicSpec]:
    """Every Kafka topic of the system, with partitions, replication and configs from ``settings``."""
    k = settings.kafka
    rf = k.replication_factor
    spec = lambda name, partitions, configs, key: TopicSpec(name, partitions, rf, {
        **({"min.insync.replicas": str(min(k.min_insync_replicas, rf))} if rf > 1 else {}), **configs}, key)
    retention = {"cleanup.policy": "delete", "retention.ms": str(k.retention_days * _DAY_MS)}
    hour = {"cleanup.policy": "delete", "retention.ms": str(3600 * 1000)}  # spilled frames: stale in seconds
    return [
        spec(KAFKA_MODEL_UPDATES, 1, {"cleanup.policy": "compact"}, "model name"),
        spec(KAFKA_HARD_EXAMPLES, k.partitions, retention, "sample key"),
        spec(KAFKA_LABELS, k.partitions, retention, "sample key"),
        spec(KAFKA_SPEECH_REVISIONS, k.partitions, retention, "edge node"),
        spec(KAFKA_DC_FRAMES, settings.offload.dc_partitions, hour, "device"),
        spec(KAFKA_DC_RESULTS, 1, hour, "reply-to edge"),  # edges read partition 0, filtered by reply_to
        spec(KAFKA_DC_DEAD_LETTERS, 1, retention, "dc worker"),
    ]


async def init_topics(kafka: KafkaSettings, plan: Sequence[TopicSpec], *,
                      client_id: str = "edge-offload-kafka-init") -> list[tuple[TopicSpec, bool]]:
    """Create the topics of ``plan`` that do not exist yet; (spec, created) for each.

    An existing topic is left as it is (its partitions and configs are the operator's)."""
    admin = make_admin(kafka, client_id=client_id)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication, topic_configs=dict(s.configs)) for s in plan])
        errors = {topic: (code, message) for topic, code, message, *_ in response.topic_errors}
    finally:
        await admin.close()
    out = []
    for s in plan:
        code, message = errors.get(s.name, (0, None))
        if code not in (0, _TOPIC_ALREADY_EXISTS):
            raise RuntimeError(f"creating Kafka topic {s.name} failed: error {code} {message or ''}".strip())
        out.append((s, code == 0))
    return out


def provision(kafka: KafkaSettings | str, settings: Settings | None = None) -> list[tuple[TopicSpec, bool]]:
    """:func:`init_topics` with the plan of ``settings``, callable from sync code and from a running loop
    (test fixtures, the demo: what an operator's ``edge-offload kafka-init`` does on a real cluster)."""
    from common.settings import load_settings

    kafka_settings = KafkaSettings(bootstrap_servers=kafka) if isinstance(kafka, str) else kafka
    plan = topic_plan(settings or load_settings())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, init_topics(kafka_settings, plan)).result()


async def ensure_topics(kafka: KafkaSettings | str, names: Sequence[str], *, partitions: int = 1,
                        replication: int = 1, client_id: str = "edge-offload-admin") -> None:
    """Create plain topics that do not exist yet: for tests' own scratch topics only, never the product's."""
    settings = KafkaSettings(bootstrap_servers=kafka) if isinstance(kafka, str) else kafka
    await init_topics(settings, [TopicSpec(n, partitions, replication) for n in names], client_id=client_id)
