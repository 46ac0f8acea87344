"""Liveness is progress: /healthz fails when acks or the worker stall with work pending."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from common.settings import DeliverySettings, Settings
from edge_agent.health import HealthServer
from edge_agent.mqtt import InOrderAcker
from edge_agent.mqtt_session import Connection
from edge_agent.vision.service import VisionService


@dataclass
class _Msg:
    mid: int
    qos: int = 1


class _Client:
    """The part of :class:`edge_agent.mqtt.MqttClient` the acker and the session use."""

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.disconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)


async def test_agent_is_not_live_when_acks_stall_with_work_pending() -> None:
    settings = Settings(delivery=DeliverySettings(liveness_stall_s=30))
    agent = VisionService(settings, pipeline=None)  # type: ignore[arg-type]  # the model is not needed here
    client = _Client()
    acker = InOrderAcker(client)  # type: ignore[arg-type]
    agent.session.current = Connection(client, acker)  # type: ignore[arg-type]
    assert agent.live()  # nothing pending
    first = acker.received(_Msg(1))  # type: ignore[arg-type]
    second = acker.received(_Msg(2))  # type: ignore[arg-type]
    acker.last_progress_s = time.monotonic() - 31  # the head of the line has not moved for 31 s
    assert not agent.live()
    acker.done(second)  # finishing a later message does not move the head
    assert not agent.live() and client.acked == []
    acker.done(first)  # the head moves: both acked in order, live again
    assert client.acked == [1, 2] and agent.live()
    acker.last_progress_s = time.monotonic() - 300  # a quiet spell with nothing pending ...
    acker.received(_Msg(3))  # type: ignore[arg-type]
    assert agent.live()  # ... is not a stall: the new head waits from now
    agent._batch_started_s = time.monotonic() - 31  # a batch running for 31 s: a wedged worker
    assert not agent.live()


async def test_healthz_answers_503_when_not_live() -> None:
    live = [True]
    server = HealthServer("127.0.0.1", 0, CollectorRegistry(), ready=lambda: True, live=lambda: live[0])
    await server.start()

    async def get() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        data = await reader.read()
        writer.close()
        return data.split(b"\r\n", 1)[0]

    try:
        assert await get() == b"HTTP/1.1 200 OK"
        live[0] = False
        assert await get() == b"HTTP/1.1 503 Service Unavailable"
    finally:
        await server.stop()
