"""Fast checks of the admission pieces: the client queue's per-QoS bounds and speech leg admission."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from common.settings import SpeechServiceConfig
from edge_agent.mqtt import ArrivalQueue, CountingQueue
from edge_agent.speech.pipeline import StepOutput
from edge_agent.speech.service import SpeechEngine
from topics import names
from topics.rtp import build_rtp


@dataclass
class _Msg:
    qos: int


async def test_qos0_cannot_crowd_out_qos1_and_a_refused_qos1_is_reported() -> None:
    drops: list[str] = []
    q = CountingQueue(2, on_drop=lambda: drops.append("any"), qos1_headroom=1,
                      on_unacked_drop=lambda: drops.append("unacked"))
    q.put_nowait(_Msg(0))
    q.put_nowait(_Msg(0))
    with pytest.raises(asyncio.QueueFull):
        q.put_nowait(_Msg(0))  # QoS 0 at the bound: shed, counted
    q.put_nowait(_Msg(1))  # QoS 1 still fits in its headroom
    with pytest.raises(asyncio.QueueFull):
        q.put_nowait(_Msg(1))
    assert drops == ["any", "any", "unacked"]
    assert q.qsize() == 3


async def test_arrival_queue_stamps_on_arrival() -> None:
    seen: list[float] = []
    q = ArrivalQueue(4, on_arrival=lambda m, t: seen.append(t), clock=lambda: 42.0)
    msg = _Msg(1)
    q.put_nowait(msg)
    assert q.get_nowait() == (42.0, msg) and seen == [42.0]


def _packet(seq: int = 1) -> bytes:
    return build_rtp(bytes(160), payload_type=0, sequence=seq, timestamp=160 * seq, ssrc=7)


async def test_legs_are_validated_before_open_and_refused_in_legs() -> None:
    sunk: list[tuple[str, str]] = []

    async def sink(out: StepOutput, topic: str) -> None:
        sunk.extend((err.reason, topic) for err, _ in out.rejected)

    now = [1000.0]
    config = SpeechServiceConfig(max_legs=2, idle_close_s=5.0)
    engine = SpeechEngine(vad=None, encoder=None, asr=lambda: None, sink=sink,  # type: ignore[arg-type]
                          config=config, clock=lambda: now[0])
    try:
        assert not engine.submit(names.audio("d", "c0", "leg1"), b"\x00junk")  # bad first packet
        assert engine.open_legs == 0 and engine.counters.packets_rejected == {"truncated": 1}
        assert engine.submit(names.audio("d", "c1", "leg1"), _packet())
        assert engine.submit(names.audio("d", "c2", "leg1"), _packet())
        for seq in range(1, 6):  # a third leg: refused once, its packets counted
            assert not engine.submit(names.audio("d", "c3", "leg1"), _packet(seq))
        c = engine.counters
        assert engine.open_legs == 2 and c.legs_opened == 2 and c.legs_open_peak == 2
        assert c.legs_refused == 1 and c.packets_of_refused_legs == 5
        now[0] += 6.0  # the refused leg fell quiet for idle_close_s: a new attempt is a new refusal
        assert not engine.submit(names.audio("d", "c3", "leg1"), _packet(9))
        assert c.legs_refused == 2
        assert not engine.submit(f"{names.ROOT}/audio/d/c\u00f6/leg1", _packet())
        assert c.bad_topics == 1 and c.packets_rejected["bad_conversation_id"] == 1
        assert c.packets_received == 10
        await asyncio.sleep(0)  # let the dead-letter tasks run
        while len(sunk) < 4:
            await asyncio.sleep(0)
        assert sorted(r for r, _ in sunk) == ["bad_conversation_id", "leg_limit", "leg_limit", "truncated"]
    finally:
        now[0] += 100.0
        await engine.close()


def test_leg_limit_is_max_legs_lowered_by_the_memory_budget() -> None:
    assert SpeechServiceConfig(max_legs=64, leg_memory_mib=128, legs_memory_budget_mib=768).leg_limit == 6
    assert SpeechServiceConfig(max_legs=4, leg_memory_mib=8, legs_memory_budget_mib=768).leg_limit == 4
    assert SpeechServiceConfig(max_legs=4, leg_memory_mib=800, legs_memory_budget_mib=768).leg_limit == 1


async def test_idle_is_measured_on_network_arrival_not_on_dequeue() -> None:
    async def sink(out: StepOutput, topic: str) -> None:
        pass

    now = [1000.0]
    engine = SpeechEngine(vad=None, encoder=None, asr=lambda: None, sink=sink,  # type: ignore[arg-type]
                          config=SpeechServiceConfig(idle_close_s=5.0), clock=lambda: now[0])
    topic = names.audio("d", "c1", "leg1")
    try:
        assert engine.submit(topic, _packet(1), arrival_s=1000.0)
        engine.note_arrival(topic, 1004.0)  # the next packet reached the MQTT client, waits in its queue
        assert engine.last_arrival_s("c1", "leg1") == 1004.0
        assert engine.submit(topic, _packet(2), arrival_s=1004.0)  # dequeued later, stamped with arrival
        assert engine.submit(topic, _packet(3), arrival_s=1003.0)  # an older stamp never moves it back
        assert engine.last_arrival_s("c1", "leg1") == 1004.0
    finally:
        now[0] += 100.0
        await engine.close()
