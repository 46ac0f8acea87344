"""``edge-offload demo``: the whole pipeline on this machine, on embedded defaults.

Starts a real Mosquitto on a free port, an edge agent, a camera publishing the real
photos, and an operator tailing the results; prints a few readable result lines and
ends with one JSON summary line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from devices.camera import photo_frames, run_camera
from edge_agent.service import EdgeAgent, build_vision_pipeline
from edge_offload.brokers import MosquittoBroker
from edge_offload.settings import EdgeSettings, MqttSettings, Settings
from edge_offload.tail import format_line
from edge_agent.mqtt import make_client
from topics import names
from topics.vision import decode_result

__all__ = ["DemoSummary", "run_demo"]

log = logging.getLogger("edge_offload.demo")


@dataclass
class DemoSummary:
    frames_sent: int = 0
    results: int = 0
    faces: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    seconds: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    def as_json(self) -> str:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out.update(self.extra)
        return json.dumps(out, sort_keys=False)


async def run_demo(settings: Settings, seconds: float, fps: float = 10.0, show: int = 5) -> DemoSummary:
    """Run the vision pipeline end to end for ``seconds`` and summarise what came out."""
    summary = DemoSummary()
    latencies: list[float] = []
    labels: Counter[str] = Counter()
    device = "cam-demo"
    with MosquittoBroker() as broker:
        s = settings.model_copy(update={
            "mqtt": MqttSettings(host="127.0.0.1", port=broker.port, client_id="demo-edge-agent"),
            "edge": EdgeSettings(node_name="demo-edge", http_host="127.0.0.1", http_port=0),
        })
        agent = EdgeAgent(s, build_vision_pipeline(s))
        stop_agent = asyncio.Event()
        agent_task = asyncio.create_task(agent.run(stop_agent))
        await asyncio.wait_for(agent.connected.wait(), 30)
        print(f"demo: mosquitto on 127.0.0.1:{broker.port}, edge agent ready, "
              f"metrics on http://127.0.0.1:{agent.health.port if agent.health else 0}/metrics", flush=True)

        operator = make_client(s.mqtt, client_id="demo-operator", persistent=False, manual_ack=False)
        images = photo_frames(s.cache_dir)
        camera_stop = threading.Event()
        t0 = time.monotonic()
        async with operator:
            await operator.subscribe(names.vision_results(device), qos=1)
            await operator.subscribe(names.dead_letter("vision"), qos=1)
            loop = asyncio.get_running_loop()
            camera = loop.run_in_executor(None, lambda: run_camera(
                "127.0.0.1", broker.port, device, images, fps=fps, seconds=seconds, stop=camera_stop))

            async def read() -> None:
                async for message in operator.messages:
                    payload = bytes(message.payload) if isinstance(message.payload, (bytes, bytearray)) else b""
                    if str(message.topic) == names.dead_letter("vision"):
                        summary.errors += 1
                        continue
                    result = decode_result(payload)
                    summary.results += 1
                    summary.faces += len(result.faces)
                    labels.update(f.label for f in result.faces)
                    latencies.append(time.time() * 1000 - result.captured_at_ms)
                    if summary.results <= show:
                        print("  " + format_line(str(message.topic), payload), flush=True)
                    if camera.done() and summary.results + summary.errors >= summary.frames_sent:
                        return

            reader = asyncio.create_task(read())
            stats = await camera
            summary.frames_sent = stats.frames_sent
            try:
                if summary.results + summary.errors < summary.frames_sent:
                    await asyncio.wait_for(reader, 30)
            except TimeoutError:
                log.warning("results still missing after 30 s")
            finally:
                reader.cancel()
        stop_agent.set()
        await agent_task
        agent.pipeline.close()
    summary.seconds = round(time.monotonic() - t0, 2)
    summary.labels = dict(labels.most_common())
    if latencies:
        summary.p50_ms = round(float(np.percentile(latencies, 50)), 2)
        summary.p99_ms = round(float(np.percentile(latencies, 99)), 2)
    return summary
