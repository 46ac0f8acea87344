"""A durable outbox between hard-example mining and Kafka.

Messages are written to SQLite (WAL) first; :class:`KafkaForwarder` sends them with
``acks=all`` and deletes a row only after Kafka acknowledged it. While the DC is
unreachable the rows wait (store-and-forward) and the forwarder retries with backoff.
The outbox is bounded in messages and bytes: beyond that the oldest rows are evicted and
counted. Rows are deduplicated on their key while they wait. A message Kafka can never
take (too large, invalid topic) is moved to a bounded dead-letter table, counted.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
)

from common.dc_settings import OutboxSettings
from common.files import ensure_private
from common.kafka_clients import make_producer
from common.retry import Backoff
from common.settings import KafkaSettings
from common.tracing import kafka_headers
from topics.codec import now_ms

__all__ = ["OutboxRow", "OutboxStats", "Outbox", "KafkaForwarder"]

log = logging.getLogger(__name__)

# Errors that retrying cannot fix: the message goes to the dead-letter table.
_UNSENDABLE = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidTopicError,
               TopicAuthorizationFailedError)
_MAX_DEAD = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    kafka_key BLOB,
    payload BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    traceparent TEXT
);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    dead_ms INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    key: str
    topic: str
    kafka_key: bytes | None
    payload: bytes
    traceparent: str | None = None  # W3C trace context of the input that caused it (a Kafka header)


@dataclass(slots=True)
class OutboxStats:
    enqueued: int = 0
    duplicates: int = 0
    evicted: int = 0
    sent: int = 0
    dead_lettered: int = 0
    send_errors: int = 0
    connects: int = 0


class Outbox:
    """The SQLite outbox. Thread-safe; every method is a short synchronous transaction."""

    def __init__(self, settings: OutboxSettings) -> None:
        self.settings = settings
        Path(settings.path).parent.mkdir(parents=True, exist_ok=True)
        ensure_private(Path(settings.path))  # face crops and voice clips: owner-only (0600)
        self._db = sqlite3.connect(settings.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={settings.synchronous}")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "traceparent" not in columns:  # an outbox written before trace headers
            self._db.execute("ALTER TABLE outbox ADD COLUMN traceparent TEXT")
        self._lock = threading.Lock()
        self.stats = OutboxStats()
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        self._count, self._bytes = int(count), int(size)
        self._listeners: list[Callable[[], None]] = []

    def on_put(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (from the putting thread) after every put that stored something."""
        self._listeners.append(listener)

    @property
    def pending(self) -> int:
        return self._count

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def put(self, key: str, topic: str, payload: bytes, kafka_key: bytes | None = None,
            traceparent: str | None = None) -> bool:
        """Store one message; False if a message with ``key`` is already waiting."""
        return self.put_many([(key, topic, payload, kafka_key, traceparent)]) == 1

    def put_many(self, items: Iterable[tuple[str, str, bytes, bytes | None]
                                       | tuple[str, str, bytes, bytes | None, str | None]]) -> int:
        """Store messages (key, topic, payload, kafka key[, traceparent]) in one transaction;
        return how many were new (not duplicates)."""
        now = now_ms()
        added = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for item in items:
                    key, topic, payload, kafka_key = item[:4]
                    traceparent = item[4] if len(item) > 4 else None
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO outbox (key, topic, kafka_key, payload, created_ms, traceparent)"
                        " VALUES (?, ?, ?, ?, ?, ?)", (key, topic, kafka_key, payload, now, traceparent))
                    if cur.rowcount == 1:
                        added += 1
                        self._count += 1
                        self._bytes += len(payload)
                    else:
                        self.stats.duplicates += 1
                self._evict_locked()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._reload_locked()
                raise
            self.stats.enqueued += added
        if added:
            for listener in self._listeners:
                listener()
        return added

    def _reload_locked(self) -> None:
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        self._count, self._bytes = int(count), int(size)

    def _evict_locked(self) -> None:
        while self._count > self.settings.max_messages or self._bytes > self.settings.max_bytes:
            over = max(self._count - self.settings.max_messages, 1)
            rows = self._db.execute(
                "SELECT id, LENGTH(payload) FROM outbox ORDER BY id LIMIT ?", (over,)).fetchall()
            if not rows:
                break
            self._db.execute("DELETE FROM outbox WHERE id <= ?", (rows[-1][0],))
            self._count -= len(rows)
            self._bytes -= sum(r[1] for r in rows)
            self.stats.evicted += len(rows)

    def peek(self, limit: int) -> list[OutboxRow]:
        """The oldest waiting messages, at most ``limit``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, key, topic, kafka_key, payload, traceparent FROM outbox ORDER BY id LIMIT ?",
                (limit,)).fetchall()
        return [OutboxRow(*r) for r in rows]

    def delete(self, ids: Iterable[int]) -> int:
        """Remove acknowledged messages; return how many were still there."""
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            gone = self._db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE id IN "
                f"({','.join('?' * len(ids))})", ids).fetchone()
            self._db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(ids))})", ids)
            self._db.execute("COMMIT")
            self._count -= int(gone[0])
            self._bytes -= int(gone[1])
        return int(gone[0])

    def dead_letter(self, row: OutboxRow, reason: str) -> None:
        """Move a message Kafka will never take to the dead table (kept bounded)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO dead (key, topic, payload, reason, dead_ms) VALUES (?, ?, ?, ?, ?)",
                (row.key, row.topic, row.payload[:65536], reason[:500], now_ms()))
            self._db.execute(
                "DELETE FROM dead WHERE id <= (SELECT MAX(id) FROM dead) - ?", (_MAX_DEAD,))
            cur = self._db.execute("DELETE FROM outbox WHERE id = ?", (row.id,))
            self._db.execute("COMMIT")
            if cur.rowcount:
                self._count -= 1
                self._bytes -= len(row.payload)
            self.stats.dead_lettered += 1

    def dead(self) -> list[tuple[str, str]]:
        """(key, reason) of dead-lettered messages, oldest first."""
        with self._lock:
            return self._db.execute("SELECT key, reason FROM dead ORDER BY id").fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class KafkaForwarder:
    """Sends the outbox to Kafka (acks=all), deleting rows only after their acknowledgement; the
    mining side's component (``run(stop)``)."""

    name = "outbox"

    def __init__(self, outbox: Outbox, kafka: KafkaSettings, settings: OutboxSettings) -> None:
        self.outbox = outbox
        self.kafka = kafka
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = asyncio.Event()
        self._progress = asyncio.Condition()
        outbox.on_put(self.notify)

    def ready(self) -> bool:
        return True  # forwarding (the outbox stores meanwhile) is optional to the edge: it serves without Kafka

    def live(self) -> bool:
        return True

    @property
    def stats(self) -> OutboxStats:
        return self.outbox.stats

    def notify(self) -> None:
        """Wake the forwarder (safe from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            if asyncio.get_running_loop() is loop:
                self._wake.set()
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(self._wake.set)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is re-checked after every send round."""
        async with self._progress:
            await self._progress.wait_for(predicate)

    async def _round_done(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _producer_started(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = make_producer(
                self.kafka,
                client_id=self.kafka.client_id,
                acks="all",
                enable_idempotence=self.kafka.enable_idempotence,
                request_timeout_ms=int(self.settings.send_timeout_s * 1000),
                linger_ms=2,
            )
            try:
                await producer.start()
            except BaseException:
                await self._stop(producer)
                raise
            self._producer = producer
            self.outbox.stats.connects += 1
            self.connected.set()
        return self._producer

    async def _stop(self, producer: AIOKafkaProducer) -> None:
        # stop() flushes; against a dead broker that would wait for the request timeout.
        try:
            await asyncio.wait_for(producer.stop(), timeout=1.0)
        except (TimeoutError, KafkaError, OSError):
            log.debug("producer did not stop cleanly", exc_info=True)

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        self.connected.clear()
        if producer is not None:
            await self._stop(producer)

    async def _send_round(self, rows: list[OutboxRow]) -> bool:
        """Send ``rows``; delete the acknowledged ones. True if every row was dealt with."""
        producer = await self._producer_started()
        futures: list[asyncio.Future[object]] = []
        sendable: list[OutboxRow] = []
        for row in rows:
            try:
                fut = await producer.send(row.topic, row.payload, key=row.kafka_key,
                                          headers=kafka_headers(row.payload, row.traceparent))
            except _UNSENDABLE as exc:
                await asyncio.to_thread(self.outbox.dead_letter, row, f"{type(exc).__name__}: {exc}")
                continue
            futures.append(fut)
            sendable.append(row)
        results = await asyncio.wait_for(
            asyncio.gather(*futures, return_exceptions=True), self.settings.send_timeout_s)
        acked: list[int] = []
        ok = True
        for row, result in zip(sendable, results):
            if isinstance(result, _UNSENDABLE):
                await asyncio.to_thread(self.outbox.dead_letter, row, f"{type(result).__name__}: {result}")
            elif isinstance(result, BaseException):
                ok = False
            else:
                acked.append(row.id)
        await asyncio.to_thread(self.outbox.delete, acked)
        self.outbox.stats.sent += len(acked)
        return ok

    async def run(self, stop: asyncio.Event) -> None:
        """Forward until ``stop`` is set; never raises for broker trouble."""
        self._loop = asyncio.get_running_loop()
        first_s = self.settings.backoff_initial_s
        backoff = Backoff(first_s, max(self.settings.backoff_max_s, first_s), jitter=0.5)
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._wake.clear()
                rows = await asyncio.to_thread(self.outbox.peek, self.settings.batch_size)
                if not rows:
                    waker = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait({waker, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    waker.cancel()
                    continue
                try:
                    ok = await self._send_round(rows)
                except (TimeoutError, KafkaError, OSError) as exc:
                    log.warning("outbox: Kafka unavailable (%s: %s); retry in %.2fs",
                                type(exc).__name__, exc, backoff.delay_s)
                    ok = False
                    await self._drop_producer()
                await self._round_done()
                if ok:
                    backoff.reset()
                    continue
                self.outbox.stats.send_errors += 1
                await backoff.wait(stop)
        finally:
            stopper.cancel()
            await self._drop_producer()
