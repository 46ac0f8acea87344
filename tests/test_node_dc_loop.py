"""The whole loop through a running edge node: camera -> MQTT -> edge node -> hard examples
-> Kafka -> trainer -> retrained, gated, signed FER version -> Kafka -> hot swap in the node,
while frames keep flowing and every frame is answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.shifted_domain import FaceSources, make_frames, write_replay_dir
from cli.brokers import MosquittoBroker, TansuBroker
from cloud_trainer.service import Trainer
from common.dc_settings import (
    FilterSpec,
    HardExampleSettings,
    ModelMiningSettings,
    OutboxSettings,
    UpdateSettings,
)
from common.settings import FerCropSettings, KafkaSettings
from common.trainer_settings import AsrAdaptSettings, FerTrainSettings, TrainerSettings
from devices.camera import run_camera
from edge_agent.app import EdgeNode
from tests.edge_helpers import agent_settings, collect, subscriber
from topics import names
from topics.vision import decode_result

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FER = "fer-mini-xception"
DEVICE = "cam-shifted"


def _jpeg(png: bytes) -> bytes:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


async def test_edge_node_hot_swaps_a_version_the_dc_trained_from_its_hard_examples(
        mosquitto: MosquittoBroker, own_kafka: TansuBroker, cache_dir: Path, tmp_path: Path) -> None:
    sources = await asyncio.to_thread(FaceSources.load, cache_dir)
    kafka = KafkaSettings(bootstrap_servers=own_kafka.bootstrap_servers)
    trainer_settings = TrainerSettings(
        group_id="trainer-node", store_url=f"sqlite:///{tmp_path}/samples.sqlite3",
        registry_dir=tmp_path / "registry", keys_dir=tmp_path / "keys", work_dir=tmp_path / "work",
        torch_threads=1, retrain_interval_s=3600, holdout_percent=30,
        fer=FerTrainSettings(retrain_min_samples=60, epochs=3, min_gain=0.05, min_holdout=10,
                             replay_dir=write_replay_dir(sources, tmp_path / "replay", 60, seed=7)),
        asr=AsrAdaptSettings(enabled=False),
    )
    trainer = Trainer(trainer_settings, kafka, cache_dir)

    settings = agent_settings(mosquitto.port, "node-dc-loop", group="node-dc")
    settings.kafka = kafka
    settings.edge.speech = False
    # The shifted domain, its replay set and the gate margin were built around Haar face boxes
    # (bench.shifted_domain); with BlazeFace's boxes the gain on this 41-crop holdout was
    # +0.049 against the 0.05 margin. The loop's mechanics are what this test checks.
    settings.vision.detector = "haar"
    # ... and their crops are the plain (square) Haar boxes: the same crop here, not fer's grown one
    settings.vision.fer_crop = FerCropSettings(refine=False, scale=1.0, dx=0.0, dy=0.0)
    settings.mining = HardExampleSettings(models={FER: ModelMiningSettings(
        filters=[FilterSpec(kind="threshold", threshold=0.7), FilterSpec(kind="margin", threshold=0.3)],
        rate_per_device_s=500, burst_per_device=1000)}, rate_total_s=1000, burst_total=2000, seed=1)
    settings.outbox = OutboxSettings(path=tmp_path / "outbox.sqlite3", backoff_max_s=0.5)
    settings.updates = UpdateSettings(trusted_key_files=[trainer_settings.keys_dir / "signing.pub"],
                                      work_dir=tmp_path / "edge-models", warmup_batches=1)
    node = EdgeNode(settings)

    frames = await asyncio.to_thread(make_frames, sources, 240, 3, DEVICE)
    images = [_jpeg(f.data) for f in frames]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(trainer.run(stop)), asyncio.create_task(node.run(stop))]
    try:
        await asyncio.wait_for(node.started.wait(), 60)
        assert node.vision is not None and node.updater is not None and node.outbox is not None
        await asyncio.wait_for(node.vision.connected.wait(), 15)
        slot = node.vision.pipeline.slot
        base = slot.current().version
        loop = asyncio.get_running_loop()
        async with subscriber(mosquitto.port, names.vision_results(DEVICE)) as sub:
            # 1. shifted frames until the DC has trained, gated, signed and pushed a new version
            await loop.run_in_executor(None, lambda: run_camera(
                "127.0.0.1", mosquitto.port, DEVICE, images[:200], fps=0, count=200))
            before = await collect(sub, 200)
            try:
                await asyncio.wait_for(node.updater.wait_until(lambda: slot.current().version != base), 120)
            except TimeoutError:
                raise AssertionError(f"no swap: outbox {node.outbox.stats}, rounds {trainer.records}, "
                                     f"updates {node.updater.stats}") from None
            # 2. traffic after the swap is served by the new version; nothing was dropped
            await loop.run_in_executor(None, lambda: run_camera(
                "127.0.0.1", mosquitto.port, DEVICE, images[200:], fps=0, count=40, start_seq=200))
            after = await collect(sub, 40)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 120)

    results = [decode_result(bytes(m.payload)) for m in before + after]
    assert sorted(r.seq for r in results) == list(range(240)), "every frame answered exactly once"
    assert node.outbox.stats.sent >= 60 and node.outbox.stats.evicted == 0
    new_version = slot.current().version
    assert {r.model.version for r in results[:200]} <= {base, new_version}
    assert {r.model.version for r in results[200:]} == {new_version}
    promoted = [r for r in trainer.records if r.promoted]
    assert promoted and promoted[0].version == new_version and promoted[0].parent == base
    assert node.updater.stats.refused == {}
