"""Broker restarts under load with the shipped persistence config (``compose/mosquitto.conf``).

SIGTERM: Mosquitto saves its store on the way down, every frame is answered. SIGKILL: the
store is as of the last autosave; frames the broker acknowledged more than one autosave
interval before the crash are answered. Duplicates (at least once) are counted and bounded.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from cli.brokers import MosquittoBroker
from devices.camera import photo_frames
from tests.edge_helpers import agent_settings, running_agent
from tests.faults.helpers import (
    autosave_interval_s,
    persistent_tally,
    publish_frames,
    rss_mib,
    shipped_persistence,
    wait_answered,
    wait_results,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RSS_BOUND_MIB = 2048
RECEIVE_MAXIMUM = 32


async def _restart_under_load(sig: int, cache_dir: Path) -> None:
    persistence = shipped_persistence()
    assert "persistence true" in persistence
    images = photo_frames(cache_dir)[:4]
    device = f"cam-restart-{sig}"
    expected = list(range(600))  # enough that the agent is still busy when the broker goes
    with MosquittoBroker(persistence=persistence) as broker:
        port = broker.port
        settings = agent_settings(port, f"restart-agent-{sig}", group="restart", receive_maximum=RECEIVE_MAXIMUM)
        async with running_agent(settings) as agent, persistent_tally(port, device, f"tally-{sig}") as (tally, changed):
            await publish_frames(port, device, images, expected)
            if sig == signal.SIGKILL:  # what the broker acknowledged is in its store after one autosave
                await asyncio.sleep(autosave_interval_s(persistence) + 1.0)
            await wait_results(tally, changed, 20, timeout_s=120)
            answered_before = tally.answered(expected)
            assert answered_before < len(expected), "the fault came after the load: make the backlog longer"
            broker.send_signal(sig)
            broker.start()  # same port, same store
            await wait_answered(tally, changed, expected, timeout_s=240)
            m = agent.metrics
            abandoned = m.value("edge_messages_abandoned_total", stage="vision", reason="session_lost")
            cache_overflow = m.value("edge_messages_shed_total", stage="vision", reason="unsent_results_full")
            assert agent.live()
    name = signal.Signals(sig).name
    print(f"\nbroker {name} restart: answered={tally.answered(expected)}/{len(expected)} "
          f"(before the fault {answered_before}) missing={len(tally.missing(expected))} "
          f"duplicates={tally.duplicates} left for redelivery={abandoned:.0f} rss={rss_mib():.0f}MiB")
    assert tally.missing(expected) == []
    assert cache_overflow == 0  # no computed result was thrown away
    if sig == signal.SIGKILL:
        # The restored store is as of the last autosave: an input acked after it is redelivered
        # (a second result) and a result delivered after it is sent again: at most 3 answers a frame.
        assert max(tally.seen.values()) <= 3
    else:
        assert tally.duplicates <= 2 * RECEIVE_MAXIMUM
    assert rss_mib() < RSS_BOUND_MIB


async def test_broker_sigterm_restart_under_load(cache_dir: Path) -> None:
    await _restart_under_load(signal.SIGTERM, cache_dir)


async def test_broker_sigkill_restart_under_load(cache_dir: Path) -> None:
    await _restart_under_load(signal.SIGKILL, cache_dir)
