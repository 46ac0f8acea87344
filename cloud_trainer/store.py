"""The DC sample store: hard examples, their labels, and dead letters.

Idempotent on the hard-example key (model, device, stream, seq, item): storing the same
example twice keeps one row, so the consumer can be at-least-once. Each sample is put in
the ``train`` or ``holdout`` split by a hash of its key, so a sample never moves. Labels
that arrive before their sample wait in ``pending_labels``. An operator's label
(source ``operator:...``) is never replaced by another source's (the DC's revisions, ``dc:...``).
Two back ends with the same
SQL: SQLite (default, a file) and PostgreSQL (``postgresql://`` URL, via asyncpg).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.files import ensure_private
from topics.codec import now_ms
from topics.dc import HardExample, Label

__all__ = ["StoredSample", "SampleStore", "SqliteStore", "PostgresStore", "open_store", "split_of"]

_COLUMNS = ("key", "model", "device", "stream", "seq", "item", "kind", "encoding", "sample_rate",
            "data", "edge_result", "edge_version", "confidences", "reasons", "node",
            "captured_at_ms", "received_at_ms", "split")


def _schema(blob: str, serial: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS samples (
            id {serial},
            key TEXT NOT NULL UNIQUE,
            model TEXT NOT NULL, device TEXT NOT NULL, stream TEXT NOT NULL,
            seq BIGINT NOT NULL, item INTEGER NOT NULL,
            kind TEXT NOT NULL, encoding TEXT NOT NULL, sample_rate INTEGER,
            data {blob} NOT NULL,
            edge_result TEXT NOT NULL, edge_version TEXT NOT NULL,
            confidences TEXT NOT NULL, reasons TEXT NOT NULL, node TEXT NOT NULL,
            captured_at_ms BIGINT NOT NULL, received_at_ms BIGINT NOT NULL,
            split TEXT NOT NULL,
            label TEXT, label_source TEXT, labelled_at_ms BIGINT)""",
        "CREATE INDEX IF NOT EXISTS samples_model_split ON samples (model, split, label)",
        """CREATE TABLE IF NOT EXISTS pending_labels (
            key TEXT PRIMARY KEY, text TEXT NOT NULL, source TEXT NOT NULL,
            labelled_at_ms BIGINT NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS dead_letters (
            id {serial}, origin TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
            payload {blob} NOT NULL, at_ms BIGINT NOT NULL)""",
    ]


def split_of(key: str, holdout_percent: int) -> str:
    """``holdout`` for a stable ``holdout_percent`` share of keys, else ``train``."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 100
    return "holdout" if bucket < holdout_percent else "train"


@dataclass(frozen=True, slots=True)
class StoredSample:
    """One stored hard example and its label (``None`` until labelled)."""

    id: int
    key: str
    model: str
    device: str
    kind: str
    encoding: str
    sample_rate: int | None
    data: bytes
    edge_result: str
    edge_version: str
    confidences: tuple[float, ...]
    split: str
    label: str | None
    label_source: str | None


def _row(ex: HardExample, received_at_ms: int, holdout_percent: int) -> tuple[Any, ...]:
    return (ex.key, ex.model, ex.device, ex.stream, ex.seq, ex.item, ex.kind, ex.encoding,
            ex.sample_rate, ex.utterance_data, ex.result, ex.model_version, json.dumps(list(ex.confidences)),
            json.dumps(list(ex.reasons)), ex.node, ex.captured_at_ms, received_at_ms,
            split_of(ex.key, holdout_percent))


_SELECT = ("SELECT id, key, model, device, kind, encoding, sample_rate, data, edge_result, "
           "edge_version, confidences, split, label, label_source FROM samples")


def _sample(r: Sequence[Any]) -> StoredSample:
    return StoredSample(id=int(r[0]), key=r[1], model=r[2], device=r[3], kind=r[4], encoding=r[5],
                        sample_rate=r[6], data=bytes(r[7]), edge_result=r[8], edge_version=r[9],
                        confidences=tuple(json.loads(r[10])), split=r[11], label=r[12],
                        label_source=r[13])


class SampleStore(ABC):
    """Async sample store; see the module docstring."""

    def __init__(self, holdout_percent: int) -> None:
        self.holdout_percent = holdout_percent

    @abstractmethod
    async def add_many(self, examples: Sequence[HardExample]) -> int:
        """Store examples (one transaction); return how many were new. Applies waiting labels."""

    async def add(self, example: HardExample) -> bool:
        return await self.add_many([example]) == 1

    @abstractmethod
    async def set_labels(self, labels: Sequence[Label]) -> int:
        """Label stored samples (last label wins); labels of unknown keys wait. Return matched."""

    @abstractmethod
    async def samples(self, model: str, *, split: str | None = None, labelled: bool | None = None,
                      limit: int | None = None, newest: bool = False) -> list[StoredSample]:
        """Samples of ``model``, oldest first (or newest first)."""

    @abstractmethod
    async def get(self, key: str) -> StoredSample | None:
        """One sample by key."""

    @abstractmethod
    async def count(self, model: str, *, split: str | None = None, labelled: bool | None = None) -> int:
        """How many samples match."""

    @abstractmethod
    async def keys(self, model: str | None = None) -> list[str]:
        """Every stored key (of ``model``), in arrival order."""

    @abstractmethod
    async def dead_letter(self, origin: str, reason: str, detail: str, payload: bytes) -> None:
        """Keep a rejected message (its first 64 KiB)."""

    @abstractmethod
    async def dead_letters(self) -> list[tuple[str, str]]:
        """(origin, reason) of the dead letters, oldest first."""

    @abstractmethod
    async def close(self) -> None: ...

    @staticmethod
    def _where(model: str, split: str | None, labelled: bool | None) -> tuple[str, list[Any]]:
        clauses, args = ["model = ?"], [model]
        if split is not None:
            clauses.append("split = ?")
            args.append(split)
        if labelled is not None:
            clauses.append("label IS NOT NULL" if labelled else "label IS NULL")
        return " WHERE " + " AND ".join(clauses), args


class SqliteStore(SampleStore):
    """The store in one SQLite file (WAL); calls run in a worker thread."""

    def __init__(self, path: Path, holdout_percent: int) -> None:
        super().__init__(holdout_percent)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        ensure_private(Path(path))  # face crops and voice clips: owner-only (0600)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a stored sample is committed to disk
        for stmt in _schema("BLOB", "INTEGER PRIMARY KEY AUTOINCREMENT"):
            self._db.execute(stmt)
        self._lock = threading.Lock()

    async def _run(self, fn: Any, *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return fn(*args)
        return await asyncio.to_thread(locked)

    def _tx(self, body: Any) -> Any:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            out = body()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return out

    async def add_many(self, examples: Sequence[HardExample]) -> int:
        now = now_ms()
        sql = (f"INSERT INTO samples ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
               "ON CONFLICT (key) DO NOTHING")

        def body() -> int:
            added = 0
            for ex in examples:
                added += self._db.execute(sql, _row(ex, now, self.holdout_percent)).rowcount
            self._db.execute(
                "UPDATE samples SET (label, label_source, labelled_at_ms) = "
                "(SELECT text, source, labelled_at_ms FROM pending_labels p WHERE p.key = samples.key) "
                "WHERE key IN (SELECT key FROM pending_labels)")
            self._db.execute("DELETE FROM pending_labels WHERE key IN (SELECT key FROM samples)")
            return added
        return int(await self._run(self._tx, body))

    async def set_labels(self, labels: Sequence[Label]) -> int:
        def body() -> int:
            matched = 0
            for lb in labels:
                n = self._db.execute(
                    "UPDATE samples SET label = ?, label_source = ?, labelled_at_ms = ? WHERE key = ? AND "
                    "(label_source IS NULL OR label_source NOT LIKE 'operator:%' OR ? LIKE 'operator:%')",
                    (lb.text, lb.source, lb.labelled_at_ms, lb.key, lb.source)).rowcount
                if n or self._db.execute("SELECT 1 FROM samples WHERE key = ?", (lb.key,)).fetchone():
                    matched += 1  # updated, or an operator's label kept over the DC's
                else:
                    self._db.execute(
                        "INSERT INTO pending_labels (key, text, source, labelled_at_ms) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET text = excluded.text, source = excluded.source, "
                        "labelled_at_ms = excluded.labelled_at_ms WHERE pending_labels.source NOT LIKE 'operator:%' "
                        "OR excluded.source LIKE 'operator:%'", (lb.key, lb.text, lb.source, lb.labelled_at_ms))
            return matched
        return int(await self._run(self._tx, body))

    async def samples(self, model: str, *, split: str | None = None, labelled: bool | None = None,
                      limit: int | None = None, newest: bool = False) -> list[StoredSample]:
        where, args = self._where(model, split, labelled)
        sql = _SELECT + where + (" ORDER BY id DESC" if newest else " ORDER BY id")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = await self._run(lambda: self._db.execute(sql, args).fetchall())
        return [_sample(r) for r in rows]

    async def get(self, key: str) -> StoredSample | None:
        row = await self._run(lambda: self._db.execute(_SELECT + " WHERE key = ?", (key,)).fetchone())
        return None if row is None else _sample(row)

    async def count(self, model: str, *, split: str | None = None, labelled: bool | None = None) -> int:
        where, args = self._where(model, split, labelled)
        return int(await self._run(lambda: self._db.execute(
            "SELECT COUNT(*) FROM samples" + where, args).fetchone()[0]))

    async def keys(self, model: str | None = None) -> list[str]:
        if model is None:
            rows = await self._run(lambda: self._db.execute("SELECT key FROM samples ORDER BY id").fetchall())
        else:
            rows = await self._run(lambda: self._db.execute(
                "SELECT key FROM samples WHERE model = ? ORDER BY id", (model,)).fetchall())
        return [r[0] for r in rows]

    async def dead_letter(self, origin: str, reason: str, detail: str, payload: bytes) -> None:
        await self._run(lambda: self._db.execute(
            "INSERT INTO dead_letters (origin, reason, detail, payload, at_ms) VALUES (?, ?, ?, ?, ?)",
            (origin, reason, detail[:1000], payload[:65536], now_ms())))

    async def dead_letters(self) -> list[tuple[str, str]]:
        rows = await self._run(lambda: self._db.execute(
            "SELECT origin, reason FROM dead_letters ORDER BY id").fetchall())
        return [(r[0], r[1]) for r in rows]

    async def close(self) -> None:
        await self._run(self._db.close)


def _pg(sql: str) -> str:
    """``?`` placeholders -> ``$1, $2, ...``."""
    parts = sql.split("?")
    return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))


class PostgresStore(SampleStore):
    """The store in PostgreSQL (asyncpg pool). Create with :meth:`connect`."""

    def __init__(self, pool: Any, holdout_percent: int) -> None:
        super().__init__(holdout_percent)
        self._pool = pool

    @classmethod
    async def connect(cls, url: str, holdout_percent: int) -> PostgresStore:
        import asyncpg

        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        async with pool.acquire() as conn:
            # Two trainers starting at once must not race on CREATE TABLE.
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(7240501)")
                for stmt in _schema("BYTEA", "BIGSERIAL PRIMARY KEY"):
                    await conn.execute(stmt)
        return cls(pool, holdout_percent)

    async def add_many(self, examples: Sequence[HardExample]) -> int:
        now = now_ms()
        sql = _pg(f"INSERT INTO samples ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
                  "ON CONFLICT (key) DO NOTHING RETURNING 1")
        added = 0
        async with self._pool.acquire() as conn, conn.transaction():
            for ex in examples:
                added += len(await conn.fetch(sql, *_row(ex, now, self.holdout_percent)))
            await conn.execute(
                "UPDATE samples s SET label = p.text, label_source = p.source, "
                "labelled_at_ms = p.labelled_at_ms FROM pending_labels p WHERE p.key = s.key")
            await conn.execute("DELETE FROM pending_labels p USING samples s WHERE p.key = s.key")
        return added

    async def set_labels(self, labels: Sequence[Label]) -> int:
        matched = 0
        async with self._pool.acquire() as conn, conn.transaction():
            for lb in labels:
                status = await conn.execute(
                    "UPDATE samples SET label = $1, label_source = $2, labelled_at_ms = $3 WHERE key = $4 AND "
                    "(label_source IS NULL OR label_source NOT LIKE 'operator:%' OR $2 LIKE 'operator:%')",
                    lb.text, lb.source, lb.labelled_at_ms, lb.key)
                if status.endswith(" 0") and not await conn.fetchval("SELECT 1 FROM samples WHERE key = $1", lb.key):
                    await conn.execute(
                        "INSERT INTO pending_labels (key, text, source, labelled_at_ms) VALUES ($1, $2, $3, $4) "
                        "ON CONFLICT (key) DO UPDATE SET text = excluded.text, source = excluded.source, "
                        "labelled_at_ms = excluded.labelled_at_ms WHERE pending_labels.source NOT LIKE 'operator:%' "
                        "OR excluded.source LIKE 'operator:%'", lb.key, lb.text, lb.source, lb.labelled_at_ms)
                else:
                    matched += 1
        return matched

    async def samples(self, model: str, *, split: str | None = None, labelled: bool | None = None,
                      limit: int | None = None, newest: bool = False) -> list[StoredSample]:
        where, args = self._where(model, split, labelled)
        sql = _SELECT + where + (" ORDER BY id DESC" if newest else " ORDER BY id")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_sample(r) for r in await self._pool.fetch(_pg(sql), *args)]

    async def get(self, key: str) -> StoredSample | None:
        row = await self._pool.fetchrow(_SELECT + " WHERE key = $1", key)
        return None if row is None else _sample(row)

    async def count(self, model: str, *, split: str | None = None, labelled: bool | None = None) -> int:
        where, args = self._where(model, split, labelled)
        return int(await self._pool.fetchval(_pg("SELECT COUNT(*) FROM samples" + where), *args))

    async def keys(self, model: str | None = None) -> list[str]:
        if model is None:
            rows = await self._pool.fetch("SELECT key FROM samples ORDER BY id")
        else:
            rows = await self._pool.fetch("SELECT key FROM samples WHERE model = $1 ORDER BY id", model)
        return [r[0] for r in rows]

    async def dead_letter(self, origin: str, reason: str, detail: str, payload: bytes) -> None:
        await self._pool.execute(
            "INSERT INTO dead_letters (origin, reason, detail, payload, at_ms) VALUES ($1, $2, $3, $4, $5)",
            origin, reason, detail[:1000], payload[:65536], now_ms())

    async def dead_letters(self) -> list[tuple[str, str]]:
        rows = await self._pool.fetch("SELECT origin, reason FROM dead_letters ORDER BY id")
        return [(r[0], r[1]) for r in rows]

    async def close(self) -> None:
        await self._pool.close()


async def open_store(url: str, holdout_percent: int = 20) -> SampleStore:
    """``sqlite:///path`` (or a plain path) -> :class:`SqliteStore`; ``postgresql://`` -> :class:`PostgresStore`."""
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresStore.connect(url, holdout_percent)
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
    return SqliteStore(Path(path), holdout_percent)
