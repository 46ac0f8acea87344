"""Frames are preprocessed as they arrive, but only as many as one batch: the rest wait as bytes."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from cli.brokers import MosquittoBroker
from common.settings import VisionSettings
from devices.camera import photo_frames, run_camera
from edge_agent.vision.service import VisionService
from inference.vision import FrameJob, FrameOutcome, Preprocessed, build_vision_pipeline
from tests.edge_helpers import agent_settings, collect, subscriber
from topics import names
from topics.vision import Frame, decode_result

pytestmark = pytest.mark.integration


async def test_preprocessing_ahead_is_bounded_by_one_batch(mosquitto: MosquittoBroker, cache_dir: Path) -> None:
    batch, n = 4, 12
    settings = agent_settings(mosquitto.port, "pre-agent", group="pre", vision=VisionSettings(max_batch_size=batch))
    pipeline = build_vision_pipeline(settings)
    agent = VisionService(settings, pipeline)
    release, lock = threading.Event(), threading.Lock()
    ahead: list[int] = []  # preprocess calls made while the first batch is held
    submitted = asyncio.Event()
    real_preprocess, real_run, real_submit = pipeline.preprocess, pipeline.run_batch, agent.batcher.submit_nowait
    count = 0

    def preprocess(frame: Frame) -> Preprocessed:
        if not release.is_set():
            with lock:
                ahead.append(frame.seq)
        return real_preprocess(frame)

    def run_batch(jobs: list[FrameJob]) -> list[FrameOutcome]:
        release.wait(30)  # hold the first batch: later frames pile up behind it
        return real_run(jobs)

    def submit(job: FrameJob) -> asyncio.Future[FrameOutcome]:
        nonlocal count
        count += 1
        if count == n:
            submitted.set()
        return real_submit(job)

    pipeline.preprocess, pipeline.run_batch = preprocess, run_batch  # type: ignore[method-assign]
    agent.batcher.submit_nowait = submit  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.connected.wait(), 15)
        async with subscriber(mosquitto.port, names.vision_results("cam-pre")) as sub:
            images = photo_frames(cache_dir)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: run_camera(
                "127.0.0.1", mosquitto.port, "cam-pre", images, fps=0, count=n))
            await asyncio.wait_for(submitted.wait(), 30)
            assert len(ahead) == batch, ahead  # one batch decoded ahead; 8 frames still bytes
            release.set()
            results = [decode_result(bytes(m.payload)) for m in await collect(sub, n)]
    finally:
        release.set()
        stop.set()
        await asyncio.wait_for(task, 30)
        pipeline.close()
    assert sorted(r.seq for r in results) == list(range(n))
    assert all(r.outcome == "served" for r in results)
    assert sum(len(r.faces) for r in results) >= n  # frames decoded in their batch found faces too
