"""Offloading benchmark: ``python -m bench.offload --json`` prints one JSON object.

One process runs Mosquitto and Tansu (child processes), an edge agent and a DC inference worker;
a second process runs the fleet of simulated cameras. The edge's capacity is MEASURED first
(frames/s of a saturating burst); then for each policy the fleet offers 0.5x .. 3x that rate for a
short step each, for real: a step offering R frames/s runs ceil(R / ``--camera-fps``) cameras
(10 fps at most each, started at spread phases), each capturing on schedule while its device's
compute runs in its own ``device_profile.parallelism`` workers (``frames`` = what was offered):

- ``edge_only``: frames to the edge, no admission control (every frame served, however late);
- ``edge_dc``: frames to the edge, admission control, spill to the DC worker, else shed;
- ``device_crops``: the device detects faces and sends only crops (edge serves all);
- ``adaptive``: the device picks edge / crops / local from the edge's published load and marks
  what it sends ``fallback``; the edge runs admission control, hands fallback frames it would shed
  back to their device, and spills other frames to the DC.

SIMULATED (stated in the JSON's ``simulated``): the WAN between edge and DC (``--wan-ms`` one way);
the device's compute time (its profile's times, a sleep in the device's workers: each camera would
have its own CPU; the output is a real inference of the same image, done once per process); the
DC's compute runs for real on the same machine as the edge. MEASURED: everything else (edge
service, queues, broker, Kafka).

Per policy and load: p50/p99 latency (capture -> outcome received), deadline-miss rate (late,
shed, or never answered; ``misses`` splits them: late:{served_by} / shed:{reason}; a frame the
device could not compute before its deadline is ``shed:device_busy``), placements chosen by the
devices and ``returned`` (fallback frames the edge handed back, then served on the device),
goodput (answered in time per s), device energy per frame (J, from the
profile), bytes sent by the devices, DC cost (worker busy seconds x GPU price + WAN bytes),
``unaccounted`` (frames without an outcome; must be 0) and ``duplicate_outcomes`` (outcomes after a
frame's first; must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

from bench.record import add_record_flag, finish, start
from cli.brokers import MosquittoBroker, TansuBroker
from cloud_trainer.dc_inference import DcInferenceWorker
from common.device_settings import DeviceProfileSettings
from common.settings import Settings, load_settings
from devices.camera import CameraStats, photo_frames, run_camera
from devices.placer import DevicePlacer
from edge_agent.dc_spill import DcSpill
from edge_agent.vision.service import VisionService
from inference.vision import build_vision_pipeline
from placement.cost import request_cost
from topics import names
from topics.codec import ContractError
from topics.vision import VisionResult, decode_result

POLICIES = {  # name -> (device policy, edge admission, DC spill)
    "edge_only": ("edge", False, False),
    "edge_dc": ("edge", True, True),
    "device_crops": ("crops", False, False),
    "adaptive": ("auto", True, True),
}
NODE = "bench-edge"


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


async def _collect(port: int, into: dict[tuple[str, int], tuple[VisionResult, int]], ready: asyncio.Event,
                   duplicates: dict[tuple[str, int], int]) -> None:
    """Every result, first one kept; a second outcome of one frame is counted in ``duplicates``."""
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(names.RESULTS_FILTER, qos=1)
        ready.set()
        async for m in client.messages:
            try:
                r = decode_result(bytes(m.payload))  # type: ignore[arg-type]
            except ContractError:
                continue
            key = (r.device, r.seq)
            if key in into:
                duplicates[key] = duplicates.get(key, 0) + 1
            else:
                into[key] = (r, int(time.time() * 1000))


@dataclass
class DeviceRun:
    """What one simulated camera did in a step (returned from the fleet process)."""

    camera: CameraStats
    placements: dict[str, int]
    device_energy_j: float
    device_busy: int
    returned: int


def _fleet(port: int, images: list[bytes], profile: dict[str, Any], cache_dir: Path, policy: str,
           camera_fps: float, cameras: int, seconds: float, seq0: int) -> list[DeviceRun]:
    """The fleet of one step (runs in its own process, as devices have their own CPUs): ``cameras``
    cameras at ``camera_fps`` each, started at spread phases, each with its own device workers."""
    prof = DeviceProfileSettings.model_validate(profile)
    placers = [DevicePlacer(policy, prof, cache_dir, f"cam-{i}", simulate_compute=True) for i in range(cameras)]
    if policy != "edge":
        placers[0].warm(images)  # device outputs, computed once per process before the clock runs

    def camera(i: int) -> DeviceRun:
        time.sleep(i / cameras / camera_fps)  # cameras are not in step with each other
        st = run_camera("127.0.0.1", port, f"cam-{i}", images, fps=camera_fps, seconds=seconds, start_seq=seq0,
                        placer=placers[i], edge_node=NODE)
        ps = placers[i].stats
        return DeviceRun(st, dict(ps.placements), ps.device_energy_j, ps.device_busy, ps.returned)

    with ThreadPoolExecutor(cameras) as pool:
        return list(pool.map(camera, range(cameras)))


async def _step(
    fleet: ProcessPoolExecutor,
    port: int,
    images: list[bytes],
    profile: DeviceProfileSettings,
    cache_dir: Path,
    policy: str,
    rate: float,
    max_camera_fps: float,
    seconds: float,
    seq0: int,
    drain_s: float,
    results: dict[tuple[str, int], tuple[VisionResult, int]],
) -> tuple[list[DeviceRun], int, float]:
    """Offer ``rate`` frames/s for ``seconds``: ceil(rate / max_camera_fps) cameras at rate / cameras each."""
    cameras = max(1, math.ceil(rate / max_camera_fps - 1e-9))
    camera_fps = rate / cameras
    loop = asyncio.get_running_loop()
    runs = await loop.run_in_executor(fleet, _fleet, port, images, profile.model_dump(), cache_dir, policy,
                                      camera_fps, cameras, seconds, seq0)
    want = {(r.camera.device, q) for r in runs for q in r.camera.sent_at}
    end = time.monotonic() + drain_s
    while time.monotonic() < end and not want <= results.keys():
        await asyncio.sleep(0.05)  # polling the collector's map (bench only)
    return runs, cameras, camera_fps


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    base = load_settings()
    images = photo_frames(base.cache_dir)
    profile = base.device_profile.model_copy(update={"deadline_ms": args.deadline_ms})
    out: dict[str, Any] = {
        "simulated": {
            "wan_one_way_ms": args.wan_ms,
            "device_compute": "profile times (sleep) in each device's own workers (device_profile.parallelism), "
            "in a process of their own; outputs from a real inference of the same image",
            "dc_compute": "real, on the same machine as the edge (no GPU)",
        },
        "deadline_ms": args.deadline_ms,
        "margin_ms": args.margin_ms,
        "max_camera_fps": args.camera_fps,
        "device_parallelism": profile.parallelism,
        "step_s": args.seconds,
        "runs": [],
    }
    fleet = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    with fleet, MosquittoBroker(max_queued_messages=100_000) as mqtt_broker, TansuBroker() as kafka_broker:
        s = Settings.model_validate(
            {
                # admission happens when a frame is received: let frames in at once (a large window), so
                # they wait in the edge's own queue, where the prediction sees them, not in the broker's
                "mqtt": {
                    "port": mqtt_broker.port,
                    "client_id": "bench-edge",
                    "share_group": "bench",
                    "receive_maximum": 2000,
                },
                "kafka": {"bootstrap_servers": kafka_broker.bootstrap_servers},
                "edge": {"node_name": NODE, "http_port": 0},
                "offload": {
                    "status_interval_s": 0.25,
                    "load_window_s": 1.0,
                    "margin_ms": args.margin_ms,
                    "dc_wan_delay_ms": args.wan_ms,
                    "dc_initial_latency_ms": 4 * args.wan_ms + 100,
                    "dc_timeout_ms": 5000,
                    "dc_group": "bench-dc",
                    "dc_partitions": 2,
                },
                "vision": {**base.vision.model_dump(), "max_pending_frames": 2000},
            }
        )
        agent = VisionService(s, build_vision_pipeline(s))
        worker = DcInferenceWorker(
            s.kafka, build_vision_pipeline(s), "dc-worker-1", group_id="bench-dc", partitions=2, max_batch=16
        )
        stop = asyncio.Event()
        tasks = [asyncio.create_task(agent.run(stop)), asyncio.create_task(worker.run(stop))]
        spill = DcSpill(s.kafka, s.offload, NODE)
        results: dict[tuple[str, int], tuple[VisionResult, int]] = {}
        ready = asyncio.Event()
        duplicates: dict[tuple[str, int], int] = {}
        collector = asyncio.create_task(_collect(mqtt_broker.port, results, ready, duplicates))
        try:
            await asyncio.wait_for(agent.connected.wait(), 30)
            await asyncio.wait_for(worker.ready.wait(), 60)
            await spill.start()
            await ready.wait()
            # capacity: a saturating burst, frames/s between the first and the last result
            s.offload.admission = False
            n = args.capacity_frames
            loop = asyncio.get_running_loop()
            cap_stats = await loop.run_in_executor(
                None, lambda: run_camera("127.0.0.1", mqtt_broker.port, "cam-cap", images, fps=0, count=n)
            )
            while len([k for k in results if k[0] == "cam-cap"]) < n:
                await asyncio.sleep(0.05)
            t_first = min(cap_stats.sent_at.values())
            t_last = max(at for (dev, _), (_, at) in results.items() if dev == "cam-cap")
            capacity = n / ((t_last - t_first) / 1000.0)
            out["edge_capacity_fps"] = round(capacity, 2)
            seq0 = 0
            dump: list[dict[str, Any]] = []
            dc_busy = worker.stats.busy_s
            for name in args.policies:
                device_policy, admission, dc = POLICIES[name]
                s.offload.admission = admission
                agent.dc = spill if dc else None
                for factor in args.loads:
                    wan0 = agent.metrics.value("edge_offload_wan_bytes_total")
                    devs, cameras, camera_fps = await _step(
                        fleet,
                        mqtt_broker.port,
                        images,
                        profile,
                        base.cache_dir,
                        device_policy,
                        factor * capacity,
                        args.camera_fps,
                        args.seconds,
                        seq0,
                        args.drain_s,
                        results,
                    )
                    frames = [(d.camera.device, q, at) for d in devs for q, at in d.camera.sent_at.items()]
                    placements: dict[str, int] = {}
                    for d in devs:
                        for k, v in d.placements.items():
                            placements[k] = placements.get(k, 0) + v
                    lat: list[float] = []
                    lat_by: dict[str, list[float]] = {}
                    missed = unaccounted = served_in_time = 0
                    where: dict[str, int] = {}
                    misses: dict[str, int] = {}  # late:{served_by} or shed:{reason}
                    for dev, q, _at in frames:
                        got = results.get((dev, q))
                        if got is None:
                            unaccounted += 1
                            missed += 1
                            continue
                        r, at = got
                        key = r.served_by if r.outcome == "served" else f"shed:{r.shed_reason}"
                        where[key] = where.get(key, 0) + 1
                        ms = at - r.captured_at_ms
                        if r.outcome == "served":
                            lat.append(ms)
                            lat_by.setdefault(r.served_by, []).append(ms)
                        if r.outcome == "served" and ms <= args.deadline_ms:
                            served_in_time += 1
                        else:
                            missed += 1
                            why = f"late:{r.served_by}" if r.outcome == "served" else key
                            if args.dump_misses is not None:
                                dump.append({"policy": name, "load": factor, "device": dev, "seq": q, "why": why,
                                             "e2e_ms": ms, "timing": dataclasses.asdict(r.timing)})
                            misses[why] = misses.get(why, 0) + 1
                    busy = worker.stats.busy_s - dc_busy
                    dc_busy = worker.stats.busy_s
                    wan = int(agent.metrics.value("edge_offload_wan_bytes_total") - wan0)
                    total = max(len(frames), 1)
                    out["runs"].append(
                        {
                            "policy": name,
                            "load": factor,
                            "offered_fps": round(factor * capacity, 2),
                            "cameras": cameras,
                            "camera_fps": round(camera_fps, 2),
                            "frames": len(frames),
                            "sent_fps": round(len(frames) / args.seconds, 2),
                            "p50_ms": _pct(lat, 50),
                            "p99_ms": _pct(lat, 99),
                            "p50_p99_ms_by": {k: [_pct(v, 50), _pct(v, 99)] for k, v in sorted(lat_by.items())},
                            "miss_rate": round(missed / total, 4),
                            "goodput_fps": round(served_in_time / args.seconds, 2),
                            "device_energy_j_per_frame": round(
                                sum(d.device_energy_j for d in devs) / total, 4
                            ),
                            "bytes_sent": sum(d.camera.bytes_sent for d in devs),
                            "placements": placements,
                            "returned": sum(d.returned for d in devs),
                            "dc_busy_s": round(busy, 3),
                            "wan_bytes": wan,
                            "dc_cost": round(request_cost(s.offload, dc_s=busy, wan_bytes=wan).total, 6),
                            "outcomes": where,
                            "misses": misses,
                            "unaccounted": unaccounted,
                            "duplicate_outcomes": sum(duplicates.get((dev, q), 0) for dev, q, _ in frames),
                        }
                    )
                    print(json.dumps(out["runs"][-1]), file=sys.stderr)
                    seq0 += 100_000
        finally:
            stop.set()
            collector.cancel()
            await spill.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            agent.pipeline.close()
            worker.pipeline.close()
        if args.dump_misses is not None:
            args.dump_misses.write_text(json.dumps(dump, indent=1))
    runs = out["runs"]

    def miss_at(policy: str, load: float) -> float | None:
        return next((r["miss_rate"] for r in runs if r["policy"] == policy and r["load"] == load), None)

    top = max(args.loads)
    out["adaptive_miss_rate_3x"] = miss_at("adaptive", top)
    out["edge_only_miss_rate_3x"] = miss_at("edge_only", top)
    out["unaccounted"] = sum(r["unaccounted"] for r in runs)
    out["duplicate_outcomes"] = sum(duplicates.values())  # over the whole run, late arrivals included
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.offload", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", action="store_true", help="print the JSON object (the only output format)")
    p.add_argument("--loads", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0])
    p.add_argument("--seconds", type=float, default=4.0, help="length of one load step")
    p.add_argument("--drain-s", type=float, default=20.0, help="longest wait for the outcomes of a step")
    p.add_argument("--camera-fps", type=float, default=10.0,
                   help="frame rate of one camera: a step offering R frames/s runs ceil(R / this) cameras")
    p.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES))
    p.add_argument("--deadline-ms", type=int, default=500)
    p.add_argument("--wan-ms", type=float, default=20.0, help="simulated one-way WAN delay edge <-> DC")
    p.add_argument("--capacity-frames", type=int, default=80)
    p.add_argument(
        "--margin-ms",
        type=float,
        default=100.0,
        help="offload.margin_ms: slack for what the edge's prediction leaves out (MQTT transit)",
    )
    p.add_argument("--dump-misses", type=Path, default=None, help="write every missed frame (JSON) to this file")
    add_record_flag(p)
    args = p.parse_args(argv)
    run = start("bench.offload", argv) if args.record else None
    result = asyncio.run(bench(args))
    print(json.dumps(result, indent=2))
    if run is not None:
        finish(run, result, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
