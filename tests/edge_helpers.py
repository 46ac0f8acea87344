"""Helpers for tests that run a real edge agent against a real broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt

from common.dc_settings import FilterSpec, HardExampleSettings, ModelMiningSettings
from common.settings import EdgeSettings, KafkaSettings, MqttSettings, Settings, VisionSettings
from edge_agent.vision.service import VisionService
from inference.vision import build_vision_pipeline
from topics.names import ASR_MODEL


def agent_settings(port: int, client_id: str, *, group: str = "edge-agents", node: str | None = None,
                   vision: VisionSettings | None = None, receive_maximum: int = 64) -> Settings:
    return Settings(
        mqtt=MqttSettings(host="127.0.0.1", port=port, client_id=client_id, share_group=group,
                          receive_maximum=receive_maximum),
        edge=EdgeSettings(node_name=node or client_id, http_host="127.0.0.1", http_port=0),
        vision=vision or VisionSettings(),
    )


def speech_node_settings(port: int, kafka: KafkaSettings, tmp_path: Path, name: str) -> Settings:
    """A speech-only edge node (client ``<name>-edge``, node ``<name>-node``) that mines every
    segment (confidence threshold 0.99) to the DC, with no model updates."""
    s = Settings(mqtt=MqttSettings(host="127.0.0.1", port=port, client_id=f"{name}-edge"), kafka=kafka,
                 edge=EdgeSettings(node_name=f"{name}-node", http_host="127.0.0.1", http_port=0, vision=False),
                 mining=HardExampleSettings(models={ASR_MODEL: ModelMiningSettings(
                     filters=[FilterSpec(kind="threshold", threshold=0.99)])}, seed=1))
    s.outbox.path = tmp_path / "outbox.sqlite3"
    s.updates.enabled = False
    s.speech.idle_close_s = 1.5
    return s


@contextlib.asynccontextmanager
async def running_agent(settings: Settings) -> AsyncIterator[VisionService]:
    """Start an agent, wait until it is connected and subscribed, stop it on exit."""
    agent = VisionService(settings, build_vision_pipeline(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.connected.wait(), 15)
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        agent.pipeline.close()


@contextlib.asynccontextmanager
async def subscriber(port: int, *filters: str) -> AsyncIterator[aiomqtt.Client]:
    """A plain v5 client subscribed (QoS 1) to ``filters`` before the test publishes anything."""
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        for f in filters:
            await client.subscribe(f, qos=1)
        yield client


async def collect(client: aiomqtt.Client, n: int, timeout_s: float = 60.0) -> list[aiomqtt.Message]:
    """The next ``n`` messages, or fail after ``timeout_s``."""
    got: list[aiomqtt.Message] = []

    async def _read() -> None:
        async for message in client.messages:
            got.append(message)
            if len(got) >= n:
                return

    await asyncio.wait_for(_read(), timeout_s)
    return got
