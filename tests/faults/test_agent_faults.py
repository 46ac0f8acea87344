"""Agent-side faults against a real Mosquitto: broker stall, QoS 0 flood, agent kill -9.

Each test asserts the operator's counts: answered, missing, duplicates, and an RSS bound.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from cli.brokers import MosquittoBroker
from devices.camera import photo_frames
from tests.edge_helpers import agent_settings, running_agent
from tests.faults.helpers import AgentProcess, publish_frames, results_tally, rss_mib, wait_answered, wait_results

pytestmark = pytest.mark.integration

RSS_BOUND_MIB = 2048  # agent (in-process: the whole pytest process) resident set bound


@pytest.mark.faults
async def test_broker_stall_longer_than_publish_timeout_does_not_wedge(own_mosquitto: MosquittoBroker,
                                                                      cache_dir: Path) -> None:
    """SIGSTOP the broker for 12 s (aiomqtt's publish timeout is 10 s) with 64 frames in flight;
    afterwards every frame, old and new, is answered without a restart, once."""
    images = photo_frames(cache_dir)[:4]
    port, device = own_mosquitto.port, "cam-stall"
    first, second = list(range(64)), list(range(64, 264))
    async with running_agent(agent_settings(port, "stall-agent", group="stall")) as agent, \
            results_tally(port, device) as (tally, changed):
        await publish_frames(port, device, images, first)
        await wait_results(tally, changed, 1, timeout_s=60)  # the agent is working on the rest
        own_mosquitto.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(12)  # the fault itself: the broker is frozen this long
        finally:
            own_mosquitto.send_signal(signal.SIGCONT)
        await publish_frames(port, device, images, second)
        await wait_answered(tally, changed, first + second, timeout_s=180)
        assert agent.live()
        stalled_publishes = agent.metrics.value("edge_messages_abandoned_total", stage="vision", reason="session_lost")
    expected = first + second
    print(f"\nstall: answered={tally.answered(expected)}/{len(expected)} missing={len(tally.missing(expected))} "
          f"duplicates={tally.duplicates} abandoned={stalled_publishes:.0f} rss={rss_mib():.0f}MiB")
    assert tally.missing(expected) == []
    assert tally.duplicates == 0
    assert rss_mib() < RSS_BOUND_MIB


@pytest.mark.faults
async def test_qos0_flood_then_qos1_frames_are_all_answered(own_mosquitto: MosquittoBroker, cache_dir: Path) -> None:
    """A QoS 0 flood (more than every local bound: overflow is shed and counted) must not cost
    the QoS 1 frames that follow: all of them are answered."""
    images = photo_frames(cache_dir)[:4]
    port, device = own_mosquitto.port, "cam-flood"
    flood, qos1 = list(range(3000)), list(range(10_000, 10_150))
    async with running_agent(agent_settings(port, "flood-agent", group="flood")) as agent, \
            results_tally(port, device) as (tally, changed):
        await publish_frames(port, device, images, flood, qos=0)
        await publish_frames(port, device, images, qos1, qos=1)
        await wait_answered(tally, changed, qos1, timeout_s=240)
        shed = agent.metrics.value("edge_messages_shed_total", stage="vision", reason="client_queue_full")
        assert agent.live()
    flood_answered = tally.answered(flood)
    print(f"\nflood: qos1 answered={tally.answered(qos1)}/{len(qos1)} missing={len(tally.missing(qos1))} "
          f"duplicates={tally.duplicates} flood answered={flood_answered} shed={shed:.0f} rss={rss_mib():.0f}MiB")
    assert tally.missing(qos1) == []
    assert tally.duplicates == 0
    assert rss_mib() < RSS_BOUND_MIB


async def _kill9_under_load(broker: MosquittoBroker, cache_dir: Path, tmp_path: Path, n: int, kills: int) -> None:
    images = photo_frames(cache_dir)[:4]
    port, device, node = broker.port, "cam-kill9", "kill9-agent"
    expected = list(range(n))
    agent = AgentProcess(port, node, receive_maximum=16, log_path=tmp_path / "agent.log")
    peak_rss = 0.0
    try:
        async with results_tally(port, device) as (tally, changed):
            await agent.start()
            await publish_frames(port, device, images, expected)
            for k in range(kills):
                await wait_results(tally, changed, (k + 1) * n // (kills + 2), timeout_s=120)
                peak_rss = max(peak_rss, rss_mib(agent.pid))
                agent.kill9()
                await agent.start()
            await wait_answered(tally, changed, expected, timeout_s=240)
            peak_rss = max(peak_rss, rss_mib(agent.pid))
    finally:
        agent.stop()
    print(f"\nkill -9 x{kills}: answered={tally.answered(expected)}/{n} missing={len(tally.missing(expected))} "
          f"duplicates={tally.duplicates} agent peak rss={peak_rss:.0f}MiB")
    assert tally.missing(expected) == []
    # at least once: a result published just before the kill, its input not yet acked, is answered again
    assert tally.duplicates <= 16 * kills
    assert peak_rss < RSS_BOUND_MIB


async def test_agent_kill9_under_load_loses_nothing(own_mosquitto: MosquittoBroker, cache_dir: Path,
                                                    tmp_path: Path) -> None:
    await _kill9_under_load(own_mosquitto, cache_dir, tmp_path, n=60, kills=1)


@pytest.mark.faults
async def test_agent_kill9_repeatedly_under_load_loses_nothing(own_mosquitto: MosquittoBroker, cache_dir: Path,
                                                               tmp_path: Path) -> None:
    await _kill9_under_load(own_mosquitto, cache_dir, tmp_path, n=300, kills=4)
