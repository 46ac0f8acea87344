"""100 speech legs at once against one agent process (vision + speech) and a real Mosquitto.

Admission is bounded: at most ``speech.leg_limit`` legs are decoded at once (``max_legs``
lowered by the per-leg memory budget; the Whisper models are shared by all legs), the rest
are refused and counted in legs, every packet is accounted for, the agent's RSS stays under
the documented bound, and camera frames sent meanwhile are all answered.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import aiomqtt
import pytest

from cli.brokers import MosquittoBroker, free_port
from common.settings import SpeechServiceConfig
from devices.audio import packetize
from devices.camera import photo_frames
from sim.speech_corpus import SENTENCES, espeak_available, synthesize, telephone, to_8k_int16
from tests.faults.helpers import AgentProcess, publish_frames, results_tally, rss_mib, wait_answered
from topics import names

pytestmark = [pytest.mark.integration, pytest.mark.faults,
              pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")]

LEGS = 100
RSS_BOUND_MIB = 1536  # the documented bound for the agent process (docs/delivery.md)


@pytest.mark.timeout(900)
async def test_hundred_legs_at_once_are_bounded_counted_and_frames_still_answered(
        own_mosquitto: MosquittoBroker, cache_dir: Path, tmp_path: Path) -> None:
    port = own_mosquitto.port
    limit = SpeechServiceConfig().leg_limit
    audio = to_8k_int16(telephone(synthesize(" ".join(SENTENCES[:2]))))
    legs = [packetize(audio, rng=random.Random(i)) for i in range(LEGS)]
    sent = sum(len(p) for p in legs)
    agent = AgentProcess(port, "legs-agent", http_port=free_port(), log_path=tmp_path / "agent.log",
                         extra_env={"EDGE_OFFLOAD_EDGE__SPEECH": "true", "EDGE_OFFLOAD_SPEECH__IDLE_CLOSE_S": "2",
                                    "EDGE_OFFLOAD_SPEECH__WORKER_THREADS": "1"})
    images = photo_frames(cache_dir)[:4]
    frames = list(range(60))
    peak = 0.0
    try:
        await agent.start()
        while agent.http_get("/readyz")[0] != 200:  # the speech part subscribes after vision
            await asyncio.sleep(0.2)
        base_rss = rss_mib(agent.pid)

        async def sample_rss() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_mib(agent.pid))
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample_rss())
        async with results_tally(port, "cam-legs") as (tally, changed), \
                aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, timeout=60) as pub:
            # what Mosquitto itself drops for a slow subscriber (max_queued_messages), from $SYS
            await pub.subscribe("$SYS/broker/publish/messages/dropped", qos=0)
            broker_dropped = [0.0]

            async def read_sys() -> None:
                async for message in pub.messages:
                    if str(message.topic).startswith("$SYS"):
                        broker_dropped[0] = float(bytes(message.payload))  # type: ignore[arg-type]

            sys_reader = asyncio.create_task(read_sys())
            t0 = time.monotonic()
            frames_task = asyncio.create_task(publish_frames(port, "cam-legs", images, frames))
            for k in range(max(len(p) for p in legs)):  # all legs at once, packet k of every leg
                for i, packets in enumerate(legs):
                    if k < len(packets):
                        await pub.publish(names.audio("phone", f"call-{i}", "leg1"), packets[k][1], qos=1)
            burst_s = time.monotonic() - t0
            await frames_task
            await wait_answered(tally, changed, frames, timeout_s=300)

            def accounted() -> float:
                return (agent.metric("edge_speech_packets_received_total")
                        + agent.metric("edge_speech_packets_client_queue_full_total") + broker_dropped[0])

            deadline = time.monotonic() + 300
            while (accounted() < sent or agent.metric("edge_speech_legs_closed_total")
                   < agent.metric("edge_speech_legs_opened_total")) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)  # the agent is a child process: its /metrics is polled
            live = agent.http_get("/healthz")[0]
            sys_reader.cancel()
        sampler.cancel()
        m = {name: agent.metric(f"edge_speech_{name}_total") for name in (
            "packets_received", "packets_client_queue_full", "packets_overload", "packets_of_refused_legs",
            "legs_opened", "legs_refused", "legs_closed", "segments_published", "worker_errors", "bad_topics")}
        peak_legs = agent.metric("edge_speech_legs_open_peak")
        _, text = agent.http_get("/metrics")
        rejected = sum(float(line.split()[1]) for line in text.splitlines()
                       if line.startswith("edge_speech_packets_rejected_total{"))
    finally:
        agent.stop()
    print(f"\n{LEGS} legs x {len(legs[0])} packets ({sent}) in {burst_s:.1f}s: leg limit {limit}, "
          f"opened {m['legs_opened']:.0f} (at once {peak_legs:.0f}), refused {m['legs_refused']:.0f} legs "
          f"({m['packets_of_refused_legs']:.0f} packets), client queue full {m['packets_client_queue_full']:.0f}, "
          f"leg queue full {m['packets_overload']:.0f}, dropped by the broker {broker_dropped[0]:.0f}, "
          f"rejected {rejected:.0f}, segments {m['segments_published']:.0f}; "
          f"frames answered {tally.answered(frames)}/{len(frames)} missing {len(tally.missing(frames))} "
          f"duplicates {tally.duplicates}; agent RSS {base_rss:.0f} MiB idle, peak {peak:.0f} MiB")
    assert m["packets_received"] + m["packets_client_queue_full"] + broker_dropped[0] == sent, "every packet counted"
    assert peak_legs == limit < LEGS
    # refusals are counted in legs: once per leg (again only if a refused leg falls quiet for
    # idle_close_s and comes back), not once per packet
    assert LEGS - m["legs_opened"] <= m["legs_refused"] < m["packets_of_refused_legs"] / 5
    assert m["worker_errors"] == 0 and m["bad_topics"] == 0
    assert m["segments_published"] > 0
    assert tally.missing(frames) == [] and tally.duplicates == 0
    assert live == 200
    assert peak < RSS_BOUND_MIB
