"""Model updates from the DC: verify, load beside the serving version, warm up, swap.

:class:`ModelUpdater` follows the model-updates topic from its start (the last
announcement per model wins). For each announcement it fetches the artifact (inline or
by URL), checks its size and sha256, checks the ed25519 signature against the trusted
DC keys, loads and warms the new version in a worker thread while the old one keeps
serving, then swaps it into the model's :class:`ModelSlot` in one step. Batches that
already took the old version finish on it. A refused update is counted, kept in
``refusals`` and passed to ``on_refused``; it never stops the updater.

Versions only move forward: each announcement carries a serial number and a signature over
(name, version, sha256, action, serial). One with a serial below the last applied is a replay
(``stale``); a ``promote`` of a version older than the serving one is a ``downgrade``; only a
signed ``rollback`` (with a new serial) may go back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from common.dc_settings import UpdateSettings
from common.files import write_private
from common.kafka_clients import make_consumer
from common.logs import RateLimitedLog
from common.retry import Restarter
from common.settings import KafkaSettings
from inference.model_slot import Loaded, ModelSlot
from topics.codec import ContractError, now_ms
from topics.dc import ModelUpdate, decode_model_update
from topics.names import KAFKA_MODEL_UPDATES
from topics.signing import announcement_message, key_id, verify, verify_message

__all__ = ["ModelHandler", "Refusal", "UpdateStats", "ModelUpdater", "load_trusted_keys", "version_number"]

log = logging.getLogger(__name__)
M = TypeVar("M")


@dataclass(slots=True)
class ModelHandler(Generic[M]):
    """How one model's artifacts become a served model: ``load(bytes, version)``, ``warmup(model)``."""

    slot: ModelSlot[M]
    format: str
    load: Callable[[bytes, str], M]
    warmup: Callable[[M], None]


@dataclass(frozen=True, slots=True)
class Refusal:
    name: str
    version: str
    reason: str
    detail: str
    at_ms: int


@dataclass(slots=True)
class UpdateStats:
    received: int = 0
    applied: int = 0
    already_serving: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    last_swap_s: float = 0.0


class _Refused(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


_VERSION = re.compile(r"^v(\d+)$")


def version_number(version: str) -> int:
    """``v<n>`` -> n; any other name (a base version) counts as 0, older than every ``v<n>``."""
    m = _VERSION.match(version)
    return int(m.group(1)) if m else 0


def load_trusted_keys(settings: UpdateSettings) -> dict[str, bytes]:
    """key id -> raw public key, from the hex keys and key files in ``settings``."""
    texts = list(settings.trusted_public_keys) + [Path(p).read_text() for p in settings.trusted_key_files]
    keys: dict[str, bytes] = {}
    for text in texts:
        raw = bytes.fromhex(text.strip())
        if len(raw) != 32:
            raise ValueError("an ed25519 public key is 32 bytes (64 hex digits)")
        keys[key_id(raw)] = raw
    return keys


class ModelUpdater:
    """Applies signed model updates to the edge's model slots; a component (``run(stop)``)."""

    name = "updates"

    def __init__(self, settings: UpdateSettings, kafka: KafkaSettings, node: str,
                 handlers: dict[str, ModelHandler[Any]],
                 on_refused: Callable[[Refusal], None] | None = None,
                 on_applied: Callable[[ModelUpdate], None] | None = None) -> None:
        self.settings = settings
        self.kafka = kafka
        self.node = node
        self.handlers = handlers
        self.trusted = load_trusted_keys(settings)
        self.on_refused = on_refused
        self.on_applied = on_applied
        self.stats = UpdateStats()
        self.refusals: deque[Refusal] = deque(maxlen=100)
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self.serials: dict[str, int] = self._load_serials()
        self._log = RateLimitedLog(log, interval_s=30.0)  # a replay flood: counted, logged now and then

    def ready(self) -> bool:
        return True  # following updates is optional to the edge: it serves without Kafka

    def live(self) -> bool:
        return True

    def _load_serials(self) -> dict[str, int]:
        path = self.settings.state_file
        if path is None or not path.exists():
            return {}
        data = json.loads(path.read_text())
        return {str(k): int(v) for k, v in data.get("serials", {}).items()}

    def _save_serials(self) -> None:
        path = self.settings.state_file
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_private(path, json.dumps({"serials": self.serials}).encode())

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked after every handled announcement."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    def _refuse(self, name: str, version: str, reason: str, detail: str) -> None:
        self.stats.refused[reason] = self.stats.refused.get(reason, 0) + 1
        refusal = Refusal(name, version, reason, detail[:500], now_ms())
        self.refusals.append(refusal)
        self._log.warning(reason, "model update %s %s refused: %s %s", name, version, reason, detail[:200])
        if self.on_refused is not None:
            self.on_refused(refusal)

    def _fetch(self, url: str) -> bytes:
        limit = self.settings.max_artifact_bytes
        with urllib.request.urlopen(url, timeout=self.settings.fetch_timeout_s) as resp:
            data = resp.read(limit + 1)
        if len(data) > limit:
            raise _Refused("too_large", f"over {limit} bytes")
        return data

    async def _verified_artifact(self, update: ModelUpdate) -> bytes:
        if not update.signature:
            raise _Refused("unsigned")
        if not self.trusted:
            raise _Refused("no_trusted_key", "no trusted DC key is configured")
        if update.size > self.settings.max_artifact_bytes:
            raise _Refused("too_large", f"{update.size} bytes")
        if update.artifact is not None:
            data = update.artifact
        else:
            assert update.url is not None
            try:
                data = await asyncio.to_thread(self._fetch, update.url)
            except (OSError, ValueError) as exc:
                raise _Refused("fetch_failed", f"{update.url}: {exc}") from None
        if len(data) != update.size:
            raise _Refused("size_mismatch", f"{len(data)} != {update.size}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != update.sha256:
            raise _Refused("hash_mismatch", f"{digest} != {update.sha256}")
        keys = [self.trusted[update.key_id]] if update.key_id in self.trusted else list(self.trusted.values())
        if not any(verify(k, update.signature, update.name, update.version, digest) for k in keys):
            raise _Refused("bad_signature", f"key id {update.key_id!r}")
        if not update.announce_signature:
            raise _Refused("unsigned_announcement")
        message = announcement_message(update.name, update.version, digest, update.action, update.serial)
        if not any(verify_message(k, update.announce_signature, message) for k in keys):
            raise _Refused("bad_announcement_signature", f"{update.action} serial {update.serial}")
        return data

    def _check_order(self, update: ModelUpdate, serving: str) -> None:
        """Refuse a replayed announcement and a downgrade that is not a rollback (signatures checked)."""
        last = self.serials.get(update.name, 0)
        if update.serial < last:
            raise _Refused("stale", f"serial {update.serial} < {last} already applied")
        if update.action != "rollback" and version_number(update.version) < version_number(serving):
            raise _Refused("downgrade", f"{update.version} is older than serving {serving}; use a rollback")

    async def apply(self, update: ModelUpdate) -> bool:
        """Verify, load, warm up and swap in one announced version; False if refused or a no-op."""
        async with self._lock:
            try:
                return await self._apply(update)
            except _Refused as exc:
                self._refuse(update.name, update.version, exc.reason, exc.detail)
                return False
            finally:
                async with self._changed:
                    self._changed.notify_all()

    async def _apply(self, update: ModelUpdate) -> bool:
        self.stats.received += 1
        handler = self.handlers.get(update.name)
        if handler is None:
            raise _Refused("unknown_model", update.name)
        if handler.slot.current().version == update.version:
            self.stats.already_serving += 1
            return False
        if update.format != handler.format:
            raise _Refused("wrong_format", f"{update.format} != {handler.format}")
        data = await self._verified_artifact(update)
        self._check_order(update, handler.slot.current().version)
        try:
            model = await asyncio.to_thread(handler.load, data, update.version)
        except Exception as exc:  # a signed artifact that does not load: refuse, keep serving
            raise _Refused("load_failed", f"{type(exc).__name__}: {exc}") from None
        try:
            for _ in range(max(1, self.settings.warmup_batches)):
                await asyncio.to_thread(handler.warmup, model)
        except Exception as exc:
            raise _Refused("warmup_failed", f"{type(exc).__name__}: {exc}") from None
        old = handler.slot.swap(Loaded(model, update.name, update.version))
        self.serials[update.name] = max(update.serial, self.serials.get(update.name, 0))
        self._save_serials()
        self.stats.applied += 1
        self.stats.last_swap_s = time.monotonic()
        log.info("model %s: %s -> %s (%s)", update.name, old.version, update.version, update.action)
        if self.on_applied is not None:
            self.on_applied(update)
        return True

    async def apply_batch(self, payloads: list[bytes]) -> None:
        """Apply one consumed batch of announcements: undecodable ones and ones replayed after a
        newer announcement of the same model are refused; the newest per model is applied."""
        latest: dict[str, ModelUpdate] = {}
        for payload in payloads:
            try:
                update = decode_model_update(payload)
            except ContractError as exc:
                self._refuse("?", "?", exc.reason, exc.detail)
                async with self._changed:
                    self._changed.notify_all()
                continue
            seen = latest.get(update.name)
            if seen is not None and update.serial < seen.serial:  # replayed after a newer one
                self._refuse(update.name, update.version, "stale", f"serial {update.serial} < {seen.serial}")
                continue
            latest[update.name] = update  # a later announcement supersedes an earlier one
        for update in latest.values():
            await self.apply(update)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the model-updates topic from its start until ``stop`` is set."""
        restarter = Restarter("model updates", log, 2.0, 2.0, errors=(KafkaError, OSError))

        async def follow() -> None:
            while not stop.is_set():
                consumer = make_consumer(
                    self.kafka, KAFKA_MODEL_UPDATES,
                    client_id=f"{self.kafka.client_id}-updates-{self.node}", group_id=None,
                    auto_offset_reset="earliest", enable_auto_commit=False,
                    max_partition_fetch_bytes=self.settings.max_artifact_bytes + (1 << 20),
                    fetch_max_bytes=self.settings.max_artifact_bytes + (1 << 20),
                    metadata_max_age_ms=10_000,
                )
                await consumer.start()
                restarter.healthy()
                try:
                    await self._follow(consumer, stop)
                finally:
                    await consumer.stop()

        await restarter.run(follow, stop)

    async def _follow(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                fetch = asyncio.ensure_future(consumer.getmany(timeout_ms=1000, max_records=100))
                await asyncio.wait({fetch, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    break
                batch = fetch.result()
                await self.apply_batch([r.value for rs in batch.values() for r in rs if r.value is not None])
        finally:
            stopper.cancel()
