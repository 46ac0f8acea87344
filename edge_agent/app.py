"""One edge node process: the vision agent and the speech service behind one health endpoint."""

from __future__ import annotations

import asyncio
import logging

from edge_agent.health import HealthServer
from edge_agent.metrics import EdgeMetrics
from edge_agent.service import EdgeAgent, build_vision_pipeline
from edge_agent.speech.service import SpeechService, register_metrics
from edge_offload.settings import Settings

__all__ = ["EdgeNode"]

log = logging.getLogger("edge_agent")


class EdgeNode:
    """Runs what ``settings.edge`` enables; ``/readyz`` is ready when every part is."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = EdgeMetrics()
        self.vision: EdgeAgent | None = None
        self.speech: SpeechService | None = None
        self.health = HealthServer(settings.edge.http_host, settings.edge.http_port,
                                   self.metrics.registry, self.ready)
        self.started = asyncio.Event()

    def ready(self) -> bool:
        vision_ok = self.vision is None or self.vision.ready()
        speech_ok = self.speech is None or self.speech.ready.is_set()
        return self.started.is_set() and vision_ok and speech_ok

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        await self.health.start()
        tasks: list[asyncio.Task[None]] = []
        try:
            if s.edge.vision:
                pipeline = await asyncio.to_thread(build_vision_pipeline, s)
                self.vision = EdgeAgent(s, pipeline, self.metrics)
                tasks.append(asyncio.create_task(self.vision.run(stop), name="vision"))
            if s.edge.speech:
                self.speech = SpeechService(s)
                register_metrics(self.speech.counters, self.metrics.registry)
                await self.speech.start()
            self.started.set()
            log.info("edge node %s up (vision=%s speech=%s), http on %d",
                     s.edge.node_name, s.edge.vision, s.edge.speech, self.health.port)
            await stop.wait()
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            if self.speech is not None:
                await self.speech.stop()
            if self.vision is not None:
                self.vision.pipeline.close()
            await self.health.stop()
