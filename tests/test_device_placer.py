"""The device's own work: off the capture loop in its workers, and shed when it cannot end in time."""

from __future__ import annotations

import threading
from pathlib import Path

from common.device_settings import DeviceProfileSettings
from devices.camera import photo_frames
from devices.placer import DevicePlacer, Prepared
from topics.codec import now_ms
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
