"""The shared MQTT session: status and will, broken connections, reconnects, the redelivery cache
(a real Mosquitto; no sleeps: every wait is on an event or a received message)."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from cli.brokers import MosquittoBroker
from common.settings import MqttSettings
from edge_agent.mqtt import make_client
from edge_agent.mqtt_session import Connection, MqttSession, RedeliveryCache, Status


def test_the_redelivery_cache_keeps_the_newest_and_counts_evictions() -> None:
    evicted: list[int] = []
    cache: RedeliveryCache[str] = RedeliveryCache(2, lambda: evicted.append(1))
    for key in (b"a", b"b", b"c"):
        cache.keep(key, key.decode())
    assert len(cache) == 2 and len(evicted) == 1
    assert cache.take(b"a") is None and cache.take(b"c") == "c" and cache.take(b"c") is None
    off: RedeliveryCache[str] = RedeliveryCache(0)
    off.keep(b"x", "x")
    assert off.take(b"x") is None


def _session(port: int, name: str, states: list[bool], reconnects: list[BaseException]) -> MqttSession:
    settings = MqttSettings(host="127.0.0.1", port=port, client_id=name)
    return MqttSession(
        name, lambda on_unacked_drop, will: make_client(settings, will=will, on_unacked_drop=on_unacked_drop),
        [(f"test/{name}/in", 1)], manual_ack=True,
        status=Status(f"test/{name}/status", lambda online: b"online" if online else b"offline"),
        reconnect_s=(0.01, 0.01), on_connected=states.append, on_reconnect=reconnects.append)


@pytest.mark.integration
async def test_status_online_then_offline_a_broken_connection_reconnects(mosquitto: MosquittoBroker) -> None:
    name = "session-status"
    states: list[bool] = []
    reconnects: list[BaseException] = []
    session = _session(mosquitto.port, name, states, reconnects)
    served: asyncio.Queue[Connection] = asyncio.Queue()

    async def serve(conn: Connection, stop: asyncio.Event) -> None:
        served.put_nowait(conn)
        await stop.wait()

    stop = asyncio.Event()
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=f"{name}-watch",
                              protocol=aiomqtt.ProtocolVersion.V5) as watch:
        await watch.subscribe(f"test/{name}/status", qos=1)
        seen = aiter(watch.messages)
        running = asyncio.create_task(session.run(stop, serve))
        first = await asyncio.wait_for(served.get(), 20)
        assert (await asyncio.wait_for(anext(seen), 20)).payload == b"online"
        assert session.connected.is_set() and session.current is first and first.acker is not None
        first.broken.set()  # a publish not confirmed: the connection ends, a new one starts
        second = await asyncio.wait_for(served.get(), 20)
        assert second is not first and first.ended and first.acker.closed
        assert len(reconnects) == 1 and session.restarter.restarts == 1
        stop.set()
        await asyncio.wait_for(running, 20)
        payloads = [(await asyncio.wait_for(anext(seen), 20)).payload for _ in range(2)]
    assert payloads == [b"online", b"offline"]  # the second connection's online, then the offline on stop
    assert states == [True, False, True, False] and not session.connected.is_set() and session.current is None
