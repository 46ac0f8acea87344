"""One MQTT service's session over its whole life: connect, subscribe, status and will, the in-order
acker of each connection, the redelivery cache, and reconnecting (shared by vision and speech).

A service hands :meth:`MqttSession.run` its ``serve(connection, stop)``: it consumes the
connection's messages and returns once ``stop`` is set (after finishing what it took) or raises
the :class:`aiomqtt.MqttError` that ended the connection. The session does the rest:

- each connection: a fresh client (from the service's ``make_client``), its subscriptions, the
  retained online status (with the offline one as the will, when the service has a status), the
  connection's :class:`InOrderAcker` (manual acks), ``connected`` set while it serves;
- a handler that could not finish a message (its publish was not confirmed) or a QoS 1 message the
  client's queue refused sets ``connection.broken``: the connection is ended (unacked inputs are
  redelivered by the broker next connection);
- reconnecting after a lost connection through :class:`common.retry.Restarter` (jittered backoff);
- on stop: the service's ``serve`` finishes, then the retained offline status, then disconnect.

:class:`RedeliveryCache` keeps answers whose publish was not confirmed, by input, so that the
redelivered input gets the same answer instead of a new computation or decision.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import aiomqtt

from common.retry import Restarter
from edge_agent.mqtt import InOrderAcker, MqttClient, SessionLost, session_gone

__all__ = ["Connection", "MqttSession", "RedeliveryCache", "Status"]

log = logging.getLogger("edge_agent.mqtt")
T = TypeVar("T")


@dataclass(eq=False)
class Connection:
    """One MQTT connection of a session: its client, its acker (None without manual acks), and
    ``broken``, set by a handler that could not finish a message: the connection then ends."""

    client: MqttClient
    acker: InOrderAcker | None
    broken: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False

    @property
    def live(self) -> bool:
        return not self.ended and not session_gone(self.client)


@dataclass(frozen=True, slots=True)
class Status:
    """A retained status topic: ``payload(online)`` is published online on connect, offline on stop,
    and offline as the connection's will."""

    topic: str
    payload: Callable[[bool], bytes]


class RedeliveryCache(Generic[T]):
    """Answers not confirmed by the broker, by input key, oldest evicted beyond ``limit`` (counted by
    ``on_evict``); ``limit`` 0 keeps none."""

    def __init__(self, limit: int, on_evict: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self._on_evict = on_evict
        self._items: OrderedDict[bytes, T] = OrderedDict()

    def keep(self, key: bytes, item: T) -> None:
        if self.limit <= 0:
            return
        self._items[key] = item
        while len(self._items) > self.limit:
            self._items.popitem(last=False)
            if self._on_evict is not None:
                self._on_evict()

    def take(self, key: bytes) -> T | None:
        return self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class MqttSession:
    """See the module docstring. ``make_client(on_unacked_drop, will)`` builds one connection's client."""

    def __init__(self, name: str, make_client: Callable[[Callable[[], None], aiomqtt.Will | None], MqttClient],
                 subscriptions: Sequence[tuple[str, int]], *, manual_ack: bool, status: Status | None = None,
                 reconnect_s: tuple[float, float] = (0.2, 5.0),
                 on_connected: Callable[[bool], None] | None = None,
                 on_reconnect: Callable[[BaseException], None] | None = None) -> None:
        self.name = name
        self._make_client = make_client
        self.subscriptions = tuple(subscriptions)
        self.manual_ack = manual_ack
        self.status = status
        self._on_connected = on_connected
        self.restarter = Restarter(name, log, *reconnect_s, errors=(aiomqtt.MqttError,), on_restart=on_reconnect)
        self.connected = asyncio.Event()
        self.current: Connection | None = None

    async def run(self, stop: asyncio.Event,
                  serve: Callable[[Connection, asyncio.Event], Coroutine[object, object, None]]) -> None:
        """Connections one after another, each served by ``serve``, until ``stop`` is set."""
        async def connections() -> None:
            while not stop.is_set():
                await self._connection(stop, serve)
                self.restarter.healthy()

        await self.restarter.run(connections, stop)

    async def _connection(self, stop: asyncio.Event,
                          serve: Callable[[Connection, asyncio.Event], Coroutine[object, object, None]]) -> None:
        status = self.status
        will = None if status is None else aiomqtt.Will(status.topic, status.payload(False), qos=1, retain=True)
        broken = asyncio.Event()  # a QoS 1 message the client queue refused is a hole in the window
        client = self._make_client(broken.set, will)
        conn = Connection(client, InOrderAcker(client) if self.manual_ack else None, broken)
        try:
            async with client:
                for topic_filter, qos in self.subscriptions:
                    await client.subscribe(topic_filter, qos=qos)
                if status is not None:
                    await client.publish(status.topic, status.payload(True), qos=1, retain=True)
                self.current = conn
                self.connected.set()
                if self._on_connected is not None:
                    self._on_connected(True)
                serving = asyncio.create_task(serve(conn, stop))
                breaking = asyncio.create_task(conn.broken.wait())
                try:
                    done, _ = await asyncio.wait({serving, breaking}, return_when=asyncio.FIRST_COMPLETED)
                    if serving not in done and not stop.is_set():
                        serving.cancel()
                        raise SessionLost("a publish was not confirmed or a QoS 1 message was refused; reconnecting")
                    await serving  # raises the MqttError that ended the connection
                finally:
                    breaking.cancel()
                    serving.cancel()
                if stop.is_set() and status is not None:
                    await client.publish(status.topic, status.payload(False), qos=1, retain=True)
        finally:
            self._end(conn)

    def _end(self, conn: Connection) -> None:
        """Nothing more is acked on this connection."""
        conn.ended = True
        if conn.acker is not None:
            conn.acker.close()
        if self.current is conn:
            self.current = None
        self.connected.clear()
        if self._on_connected is not None:
            self._on_connected(False)
