"""The device's own work: off the capture loop in its workers, and shed when it cannot end in time."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from common.device_settings import DeviceProfileSettings
from devices.camera import photo_frames
from devices.placer import DevicePlacer, Prepared
from topics.codec import now_ms
from topics.status import EdgeLoad, EdgeStatus, encode_status
from topics.vision import Frame


def test_device_work_runs_in_its_workers_and_sheds_what_cannot_end_in_time(cache_dir: Path) -> None:
    profile = DeviceProfileSettings(detect_ms=5.0, fer_ms=1.0, parallelism=2)
    placer = DevicePlacer("local", profile, cache_dir, "cam-p", simulate_compute=True)
    image = photo_frames(cache_dir)[0]
    placer.warm([image])
    now = now_ms()
    in_time = Frame("cam-p", 1, now, "jpeg", image, deadline_ms=now + 10_000)
    too_late = Frame("cam-p", 2, now - 1_000, "jpeg", image, deadline_ms=now - 500)
    assert placer.place(in_time) == "local"
    done: list[Prepared] = []
    lock = threading.Lock()

    def collect(prep: Prepared) -> None:
        with lock:
            done.append(prep)

    placer.submit(in_time, "local", collect)
    placer.submit(too_late, "local", collect)
    placer.drain()
    by_seq = {p.result.seq: p.result for p in done if p.result is not None}
    assert by_seq[1].outcome == "served" and by_seq[1].served_by == "device"
    assert by_seq[2].outcome == "shed" and by_seq[2].shed_reason == "device_busy"
    assert placer.stats.device_busy == 1 and placer.device_queue_ms() == 0.0


def _status(online: bool, at_ms: int) -> bytes:
    load = EdgeLoad(queue_delay_ms=0.0, service_ms={"fer-mini-xception": 20.0}, utilisation=0.1,
                    capacity_per_s=50.0, queue_depth=0)
    return encode_status(EdgeStatus("edge-p", online, at_ms, {}, load if online else None))


def test_auto_without_an_edge_status_says_so_and_serves_on_the_device(
        cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    placer = DevicePlacer("auto", DeviceProfileSettings(edge_share_start=1.0), cache_dir, "cam-q")
    frame = Frame("cam-q", 1, now_ms(), "jpeg", photo_frames(cache_dir)[0])
    with caplog.at_level(logging.WARNING, logger="devices.placer"):
        assert not placer.wait_status("offload/v1/edge/edge-p/status", timeout_s=0.01)
        assert placer.place(frame) == "local" and placer.stats.no_status == 1
        placer.on_status(_status(True, 1))
        assert placer.status_heard and placer.place(frame) == "edge"
        placer.on_status(_status(False, 2))  # the edge's will: offline
        assert placer.place(frame) == "local" and placer.stats.no_status == 2
        placer.on_status(_status(True, 3))
        assert placer.place(frame) == "edge"
    said = [r.getMessage() for r in caplog.records]
    assert any("no edge status on offload/v1/edge/edge-p/status within 0.0 s" in m for m in said)
    assert any("edge edge-p is offline" in m for m in said) and any("online again" in m for m in said)


def test_a_fixed_policy_warns_but_keeps_its_placement(cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    placer = DevicePlacer("edge", DeviceProfileSettings(), cache_dir, "cam-r")
    with caplog.at_level(logging.WARNING, logger="devices.placer"):
        assert not placer.wait_status("offload/v1/edge/edge-p/status", timeout_s=0.01)
    assert "keeping policy edge" in caplog.text
    assert placer.place(Frame("cam-r", 1, now_ms(), "jpeg", b"x" * 100)) == "edge"
