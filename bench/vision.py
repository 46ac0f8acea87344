"""Vision benchmark: ``python -m bench.vision --json`` prints one JSON object.

Top-level figures are for the configured detector (``vision.detector``, default BlazeFace);
``haar`` / ``blazeface`` hold the other detector's figures from the same run.

- ``offline_fps``: decode + detect + classify (the agent's own ``run_batch``), no broker.
- ``offline_fps_by_batch``: the same at batch 1 / 16 / 64 on the serving device.
- ``e2e_fps``: frames/s through Mosquitto and an edge agent *process* at saturation
  (a backlog is published with QoS 1; rate of results between the first and last).
- ``efficiency`` = e2e_fps / offline_fps.
- ``e2e_vs_other``: e2e_fps / the other detector's e2e_fps.
- ``batching_gain``: FER crops/s at the configured batch size vs batch 1.
- ``p50_ms`` / ``p99_ms``: capture -> result received at half the saturation rate;
  ``agent_p50_ms`` / ``agent_p99_ms``: the agent's own part of it (message received -> result
  made, from the result's timing), ``queue_p99_ms`` the wait for a batch, and
  ``mean_batch_at_half_load``.
- ``faces_found``: faces per test photo (group t1.jpg: 6, astronaut: 1, close-ups: 1 each).
- ``fer_agreement_reference``, ``faces_found_reference``, ``reference_faces``: the edge against the
  ``fer`` package's own pipeline on the real photo set (``bench.fer_crops``, all of it; its
  ``heldout`` part under ``fer_reference``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import aiomqtt
import cv2
import numpy as np

from bench.fer_crops import fer_crop_figures
from bench.record import add_record_flag, finish, start
from cli.brokers import MosquittoBroker
from common.runtime import freeze_loaded_objects
from common.settings import Settings, load_settings
from devices.camera import face_test_photos, photo_frames, run_camera
from inference.vision import FrameJob, build_vision_pipeline
from models.fer_edge import preprocess_faces
from topics import names
from topics.status import decode_status
from topics.vision import Frame, decode_result


def offline_fps(settings: Settings, images: list[bytes], n: int) -> float:
    """Frames/s of the agent's batch function alone, in batches of max_batch_size."""
    pipeline = build_vision_pipeline(settings)
    bs = settings.vision.max_batch_size
    frames = [Frame("bench", i, 0, "jpeg", images[i % len(images)]) for i in range(n)]
    pipeline.run_batch([FrameJob(f, time.monotonic()) for f in frames[:bs]])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, n, bs):
        pipeline.run_batch([FrameJob(f, time.monotonic()) for f in frames[i:i + bs]])
    elapsed = time.perf_counter() - t0
    pipeline.close()
    return n / elapsed


def offline_fps_by_batch(settings: Settings, images: list[bytes],
                         sizes: tuple[int, ...] = (1, 16, 64)) -> dict[str, float]:
    """Frames/s of ``run_batch`` at each batch size (one warm-up batch, then >= 64 frames)."""
    pipeline = build_vision_pipeline(settings)
    out: dict[str, float] = {}
    try:
        for bs in sizes:
            frames = [Frame("bench", i, 0, "jpeg", images[i % len(images)]) for i in range(bs)]
            pipeline.run_batch([FrameJob(f, time.monotonic()) for f in frames])
            done, t0 = 0, time.perf_counter()
            while done < max(64, bs):
                pipeline.run_batch([FrameJob(f, time.monotonic()) for f in frames])
                done += bs
            out[str(bs)] = round(done / (time.perf_counter() - t0), 2)
    finally:
        pipeline.close()
    return out


def faces_found(settings: Settings) -> dict[str, str]:
    """'found/expected' faces per test photo, through the agent's own ``run_batch``."""
    pipeline = build_vision_pipeline(settings)
    photos = face_test_photos(settings.cache_dir)
    jobs = [FrameJob(Frame("bench", i, 0, "png", cv2.imencode(".png", bgr)[1].tobytes()), time.monotonic())
            for i, (_, bgr, _) in enumerate(photos)]
    try:
        outcomes = pipeline.run_batch(jobs)
    finally:
        pipeline.close()
    return {name: f"{len(o.result.faces) if o.result else 0}/{n}" for (name, _, n), o in zip(photos, outcomes)}


def batching_gain(settings: Settings, images: list[bytes]) -> tuple[float, float, float]:
    """(gain, crops/s at batch 1, crops/s at max_batch_size) of the FER model alone."""
    pipeline = build_vision_pipeline(settings)
    model = pipeline.slot.current().model
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (96, 96), dtype=np.uint8) for _ in range(64)]
    x = preprocess_faces(crops)

    def rate(bs: int, seconds: float = 2.0) -> float:
        model.predict(x[:bs])
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model.predict(x[:bs])
            done += bs
        return done / (time.perf_counter() - t0)

    r1 = rate(1)
    rb = rate(settings.vision.max_batch_size)
    pipeline.close()
    return rb / r1, r1, rb


def _agent_env(settings: Settings, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "EDGE_OFFLOAD_MQTT__PORT": str(port),
        "EDGE_OFFLOAD_MQTT__CLIENT_ID": "bench-agent",
        "EDGE_OFFLOAD_EDGE__NODE_NAME": "bench-edge",
        "EDGE_OFFLOAD_EDGE__HTTP_PORT": "0",
        "EDGE_OFFLOAD_VISION__MAX_BATCH_SIZE": str(settings.vision.max_batch_size),
        "EDGE_OFFLOAD_VISION__MAX_QUEUE_DELAY_MS": str(settings.vision.max_queue_delay_ms),
        "EDGE_OFFLOAD_VISION__DETECTOR": settings.vision.detector,
        # the vision path alone: no speech service, no DC loop competing for the cores
        "EDGE_OFFLOAD_EDGE__SPEECH": "false",
        "EDGE_OFFLOAD_MINING__ENABLED": "false",
        "EDGE_OFFLOAD_UPDATES__ENABLED": "false",
    })
    return env


async def _wait_online(port: int, proc: subprocess.Popen[bytes]) -> None:
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(names.edge_status("bench-edge"), qos=1)
        async for message in client.messages:
            if decode_status(bytes(message.payload)).online:  # type: ignore[arg-type]
                return
            if proc.poll() is not None:
                raise RuntimeError("edge agent exited")


async def _collect(port: int, device: str, n: int, ready: threading.Event, timeout_s: float
                   ) -> list[tuple[float, int, float, float, int]]:
    """(receipt wall-clock ms, captured_at_ms, agent total ms, agent queue ms, batch size) for n results."""
    got: list[tuple[float, int, float, float, int]] = []
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5,
                              max_queued_incoming_messages=0) as client:
        await client.subscribe(names.vision_results(device), qos=0)
        ready.set()

        async def read() -> None:
            async for message in client.messages:
                r = decode_result(bytes(message.payload))  # type: ignore[arg-type]
                got.append((time.time() * 1000, r.captured_at_ms, r.timing.total_ms, r.timing.queue_ms,
                            r.timing.batch_size))
                if len(got) >= n:
                    return

        try:
            await asyncio.wait_for(read(), timeout_s)
        except TimeoutError:
            pass
    return got


async def _run_load(port: int, device: str, images: list[bytes], n: int, fps: float
                    ) -> list[tuple[float, int, float, float, int]]:
    ready = threading.Event()
    loop = asyncio.get_running_loop()
    timeout_s = 60.0 + (n / fps if fps > 0 else n * 0.2)
    collector = asyncio.create_task(_collect(port, device, n, ready, timeout_s=timeout_s))
    await loop.run_in_executor(None, ready.wait, 10)
    await loop.run_in_executor(None, lambda: run_camera("127.0.0.1", port, device, images, fps=fps, count=n))
    return await collector


def end_to_end(settings: Settings, images: list[bytes], n_saturation: int, latency_seconds: float) -> dict[str, float]:
    freeze_loaded_objects()  # the collector's receipt times should not carry this process's GC pauses
    with MosquittoBroker(max_queued_messages=100_000) as broker:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "edge"],
                                env=_agent_env(settings, broker.port))
        try:
            asyncio.run(asyncio.wait_for(_wait_online(broker.port, proc), 60))
            asyncio.run(_run_load(broker.port, "bench-warm", images, 20, 0))  # warm-up
            got = asyncio.run(_run_load(broker.port, "bench-sat", images, n_saturation, 0))
            if len(got) < n_saturation:
                raise RuntimeError(f"saturation: {len(got)}/{n_saturation} results")
            receipts = sorted(g[0] for g in got)
            e2e = (len(receipts) - 1) / ((receipts[-1] - receipts[0]) / 1000)
            rate = e2e / 2
            n_lat = max(20, int(rate * latency_seconds))
            got = asyncio.run(_run_load(broker.port, "bench-lat", images, n_lat, rate))
            lat = np.array([g[0] - g[1] for g in got])
            agent = np.array([g[2] for g in got])
            queued = np.array([g[3] for g in got])
            batch = np.array([g[4] for g in got])
        finally:
            proc.terminate()
            proc.wait(30)
    return {"e2e_fps": e2e, "latency_load_fps": rate, "latency_frames": float(len(lat)),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "agent_p50_ms": float(np.percentile(agent, 50)), "agent_p99_ms": float(np.percentile(agent, 99)),
            "queue_p99_ms": float(np.percentile(queued, 99)), "mean_batch": float(batch.mean())}


def _with_detector(settings: Settings, detector: str) -> Settings:
    return settings.model_copy(update={"vision": settings.vision.model_copy(update={"detector": detector})})


def measure(settings: Settings, images: list[bytes], frames: int, latency_seconds: float) -> dict[str, object]:
    """Every figure for one detector."""
    off = offline_fps(settings, images, frames)
    by_batch = offline_fps_by_batch(settings, images)
    found = faces_found(settings)
    e2e = end_to_end(settings, images, frames, latency_seconds)
    return {
        "e2e_fps": round(e2e["e2e_fps"], 2),
        "offline_fps": round(off, 2),
        "efficiency": round(e2e["e2e_fps"] / off, 3),
        "offline_fps_by_batch": by_batch,
        "p50_ms": round(e2e["p50_ms"], 2),
        "p99_ms": round(e2e["p99_ms"], 2),
        "agent_p50_ms": round(e2e["agent_p50_ms"], 2),
        "agent_p99_ms": round(e2e["agent_p99_ms"], 2),
        "queue_p99_ms": round(e2e["queue_p99_ms"], 2),
        "mean_batch_at_half_load": round(e2e["mean_batch"], 2),
        "latency_load_fps": round(e2e["latency_load_fps"], 2),
        "latency_frames": int(e2e["latency_frames"]),
        "faces_found": found,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument("--frames", type=int, default=300, help="frames for the saturation runs")
    p.add_argument("--latency-seconds", type=float, default=10.0)
    p.add_argument("--no-compare", action="store_true", help="measure the configured detector only")
    add_record_flag(p)
    args = p.parse_args(argv)
    run = start("bench.vision", argv) if args.record else None
    settings = load_settings()
    images = photo_frames(settings.cache_dir)
    main_detector = settings.vision.detector
    out: dict[str, object] = {"detector": main_detector}
    out.update(measure(settings, images, args.frames, args.latency_seconds))
    ref = fer_crop_figures(settings)
    out.update({k: ref[k] for k in ("fer_agreement_reference", "faces_found_reference", "reference_faces")})
    out["fer_reference"] = {k: ref[k] for k in ("dev", "heldout", "missed", "disagreed", "crop", "false_detections",
                                                "unreferenced_faces")}
    gain, r1, rb = batching_gain(settings, images)
    if not args.no_compare:
        other = "haar" if main_detector == "blazeface" else "blazeface"
        theirs = measure(_with_detector(settings, other), images, args.frames, args.latency_seconds)
        out["e2e_vs_other"] = round(float(out["e2e_fps"]) / float(theirs["e2e_fps"]), 2)  # type: ignore[arg-type]
        out[other] = theirs
    out.update({
        "batching_gain": round(gain, 2),
        "fer_crops_per_s_batch1": round(r1, 1),
        "fer_crops_per_s_batch": round(rb, 1),
        "max_batch_size": settings.vision.max_batch_size,
        "max_queue_delay_ms": settings.vision.max_queue_delay_ms,
        "detect_max_side": settings.vision.detect_max_side,
        "device": str(build_device(settings)),
        "frame_pixels": "x".join(map(str, cv2.imdecode(np.frombuffer(images[0], np.uint8), 0).shape)),
        "cpu_cores": os.cpu_count(),
    })
    if not args.json:
        print(__doc__)
    print(json.dumps(out))
    if run is not None:
        finish(run, out, args.record)
    return 0


def build_device(settings: Settings) -> str:
    from models.fer_edge import resolve_device

    return resolve_device(settings.edge.device)


if __name__ == "__main__":
    sys.exit(main())
