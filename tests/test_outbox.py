"""The durable outbox: dedup, bounds with counted eviction, survival across restarts, and
forwarding to a real Kafka-protocol broker (Tansu) with store-and-forward while it is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cli.brokers import TansuBroker
from common.dc_settings import OutboxSettings
from common.settings import KafkaSettings
from edge_agent.outbox import KafkaForwarder, Outbox
from tests.kafka_helpers import read_topic


def _outbox(tmp_path: Path, **kw: object) -> Outbox:
    return Outbox(OutboxSettings(path=tmp_path / "outbox.sqlite3", **kw))  # type: ignore[arg-type]


def test_dedup_while_waiting(tmp_path: Path) -> None:
    box = _outbox(tmp_path)
    assert box.put("a", "t", b"1")
    assert not box.put("a", "t", b"1 again")
    assert box.put_many([("b", "t", b"2", None), ("a", "t", b"x", None)]) == 1
    assert box.pending == 2 and box.stats.duplicates == 2
    assert [r.payload for r in box.peek(10)] == [b"1", b"2"]


def test_bounds_evict_oldest_and_count(tmp_path: Path) -> None:
    box = _outbox(tmp_path, max_messages=10, max_bytes=10_000)
    for i in range(25):
        box.put(f"k{i}", "t", b"x" * 10)
    assert box.pending == 10 and box.stats.evicted == 15
    assert [r.key for r in box.peek(100)] == [f"k{i}" for i in range(15, 25)]
    box.put("big", "t", b"y" * 9_950)  # bytes bound: the oldest go until it fits
    assert box.pending_bytes <= 10_000
    assert box.peek(100)[-1].key == "big"
    assert box.stats.evicted == 15 + 5  # one for the count, four more for the bytes


def test_rows_survive_reopen_and_delete_is_exact(tmp_path: Path) -> None:
    box = _outbox(tmp_path)
    box.put_many([(f"k{i}", "t", bytes([i]), b"dev") for i in range(5)])
    box.close()
    again = _outbox(tmp_path)
    rows = again.peek(10)
    assert [r.key for r in rows] == [f"k{i}" for i in range(5)] and again.pending == 5
    assert rows[0].kafka_key == b"dev"
    assert again.delete([rows[1].id, rows[3].id, 9999]) == 2
    assert [r.key for r in again.peek(10)] == ["k0", "k2", "k4"]
    assert again.pending == 3 and again.pending_bytes == 3


@pytest.fixture()
async def stop_event() -> AsyncIterator[asyncio.Event]:
    ev = asyncio.Event()
    yield ev
    ev.set()


async def test_forwarder_delivers_and_deletes_after_ack(
    tmp_path: Path, kafka: TansuBroker, stop_event: asyncio.Event
) -> None:
    box = _outbox(tmp_path)
    fw = KafkaForwarder(box, KafkaSettings(bootstrap_servers=kafka.bootstrap_servers), box.settings)
    task = asyncio.create_task(fw.run(stop_event))
    box.put_many([(f"k{i}", "outbox-t1", b"m%d" % i, b"cam") for i in range(50)])
    box.put("huge", "outbox-t1", b"z" * (2 << 20))  # over the producer's request size: never sendable
    box.put("last", "outbox-t1", b"last")
    got = await asyncio.wait_for(read_topic(kafka.bootstrap_servers, "outbox-t1", 51), 30)
    assert sorted(got) == sorted([b"m%d" % i for i in range(50)] + [b"last"])
    await asyncio.wait_for(fw.wait_until(lambda: box.pending == 0), 10)
    assert box.stats.sent == 51 and box.stats.dead_lettered == 1
    assert [k for k, _ in box.dead()] == ["huge"]
    stop_event.set()
    await asyncio.wait_for(task, 10)


async def test_store_and_forward_while_broker_is_down(
    tmp_path: Path, own_kafka: TansuBroker, stop_event: asyncio.Event
) -> None:
    own_kafka.stop()
    box = _outbox(tmp_path, backoff_max_s=0.2, send_timeout_s=2)
    fw = KafkaForwarder(box, KafkaSettings(bootstrap_servers=own_kafka.bootstrap_servers), box.settings)
    task = asyncio.create_task(fw.run(stop_event))
    box.put_many([(f"k{i}", "outbox-t2", b"m%d" % i, b"cam") for i in range(30)])
    # Two failed rounds: nothing may be deleted while nothing was acknowledged.
    await asyncio.wait_for(fw.wait_until(lambda: box.stats.send_errors >= 2), 20)
    assert box.pending == 30 and box.stats.sent == 0
    own_kafka.start()
    got = await asyncio.wait_for(read_topic(own_kafka.bootstrap_servers, "outbox-t2", 30), 30)
    assert sorted(got) == sorted(b"m%d" % i for i in range(30))
    await asyncio.wait_for(fw.wait_until(lambda: box.pending == 0), 10)
    stop_event.set()
    await asyncio.wait_for(task, 10)
