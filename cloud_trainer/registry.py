"""The model registry: versions with metrics, lineage, sha256 and an ed25519 signature.

Artifacts live as files under ``registry_dir/<name>/<version>``; their metadata, the gate's
decisions and the serving history live in ``registry_dir/registry.sqlite3``. Versions of a
model are ``v1, v2, ...`` (a base version registered with :meth:`Registry.ensure_base`
keeps its own name). The signing key is made in ``keys_dir`` when absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from topics.codec import now_ms
from topics.dc import ModelUpdate
from topics.names import check_id
from topics.signing import announcement_message, key_id, signed_message

__all__ = ["Signer", "Lineage", "VersionRecord", "Decision", "RegistryError", "Registry"]

_PRIVATE = "signing.ed25519"
_PUBLIC = "signing.pub"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version TEXT NOT NULL, n INTEGER NOT NULL,
    parent TEXT, status TEXT NOT NULL, format TEXT NOT NULL,
    sha256 TEXT NOT NULL, signature BLOB NOT NULL, key_id TEXT NOT NULL, size INTEGER NOT NULL,
    metrics TEXT NOT NULL, lineage TEXT NOT NULL, created_ms INTEGER NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version TEXT NOT NULL,
    action TEXT NOT NULL, metrics TEXT NOT NULL, reason TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS serving (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version TEXT NOT NULL,
    action TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS announcements (
    serial INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version TEXT NOT NULL,
    action TEXT NOT NULL, at_ms INTEGER NOT NULL);
"""


class RegistryError(RuntimeError):
    """A version is unknown, an artifact was tampered with, or an action is impossible."""


class Signer:
    """The DC's ed25519 signing key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = key_id(self.public_key)

    @property
    def public_key_hex(self) -> str:
        return self.public_key.hex()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    @classmethod
    def load_or_create(cls, keys_dir: Path) -> Signer:
        """Load ``keys_dir/signing.ed25519``; make it (mode 0600) and ``signing.pub`` if absent."""
        keys_dir.mkdir(parents=True, exist_ok=True)
        private_path = keys_dir / _PRIVATE
        if private_path.is_file():
            return cls(Ed25519PrivateKey.from_private_bytes(private_path.read_bytes()))
        key = Ed25519PrivateKey.generate()
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        tmp = private_path.with_suffix(".part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        tmp.replace(private_path)
        signer = cls(key)
        (keys_dir / _PUBLIC).write_text(signer.public_key_hex + "\n")
        return signer


class Lineage(TypedDict, total=False):
    """How a version was made (stored as JSON beside it). Every key a round writes is listed here,
    so the trainer's own reads (the retrain trigger's ``labelled_train_total``) are type-checked."""

    origin: str  # "base": a pinned artifact registered at start-up
    parent: str | None  # the version it was trained from
    samples_new: int
    samples_replay: int
    labelled_train_total: int  # labelled samples it was trained on: the retrain trigger counts from it
    max_sample_id: int
    samples_sha256: str
    labels: Any  # FER: the labeller; ASR: label counts per source
    epochs: int
    train_seconds: float
    final_loss: float
    vocabulary: int
    new_words: list[str]
    judged_with: str


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One registered version. ``lineage``: parent, samples used, how it was made."""

    name: str
    version: str
    parent: str | None
    status: str
    format: str
    sha256: str
    signature: bytes
    key_id: str
    size: int
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: Lineage = field(default_factory=lambda: Lineage())
    created_ms: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """A gate decision or an operator action, with the figures it was made on."""

    name: str
    version: str
    action: str
    metrics: dict[str, float]
    reason: str
    at_ms: int


class Registry:
    """Versions of every model the DC trains; thread-safe, and safe across processes."""

    def __init__(self, registry_dir: Path, signer: Signer) -> None:
        self.dir = registry_dir
        self._signer: Signer | None = signer
        registry_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(registry_dir / "registry.sqlite3", check_same_thread=False,
                                   isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    @classmethod
    def reader(cls, registry_dir: Path) -> Registry | None:
        """The registry opened read-only (no key, no file made); None if there is none yet."""
        path = registry_dir / "registry.sqlite3"
        if not path.is_file():
            return None
        self = cls.__new__(cls)
        self.dir = registry_dir
        self._signer = None
        self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False,
                                   isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        return self

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            raise RegistryError("the registry was opened read-only")
        return self._signer

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- writing ------------------------------------------------------------------------

    def _write_artifact(self, name: str, version: str, artifact: bytes) -> None:
        folder = self.dir / name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{version}.part"
        tmp.write_bytes(artifact)
        tmp.replace(folder / version)

    def _insert(self, name: str, version: str | None, artifact: bytes, fmt: str, parent: str | None,
                status: str, metrics: dict[str, float], lineage: Lineage) -> VersionRecord:
        check_id(name, "model")
        sha = hashlib.sha256(artifact).hexdigest()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = self._db.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM versions WHERE name = ?",
                                     (name,)).fetchone()[0]
                version = check_id(version or f"v{n}", "version")
                signature = self.signer.sign(signed_message(name, version, sha))
                self._write_artifact(name, version, artifact)
                self._db.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, version, n, parent, status, fmt, sha, signature, self.signer.key_id,
                     len(artifact), json.dumps(metrics), json.dumps(lineage), now_ms()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(name, version)

    def ensure_base(self, name: str, version: str, artifact: bytes, fmt: str) -> VersionRecord:
        """Register the shipped model as the first serving version, once."""
        existing = self.find(name, version)
        if existing is not None:
            return existing
        rec = self._insert(name, version, artifact, fmt, None, "promoted", {}, {"origin": "base"})
        self._serve(name, version, "base")
        return rec

    def register(self, name: str, artifact: bytes, fmt: str, *, parent: str | None,
                 metrics: dict[str, float], lineage: Lineage) -> VersionRecord:
        """Add a signed candidate version (``v<n>``)."""
        return self._insert(name, None, artifact, fmt, parent, "candidate", metrics, lineage)

    def _decide(self, name: str, version: str, action: str, status: str | None,
                metrics: dict[str, float], reason: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if status is not None:
                    self._db.execute("UPDATE versions SET status = ? WHERE name = ? AND version = ?",
                                     (status, name, version))
                self._db.execute(
                    "INSERT INTO decisions (name, version, action, metrics, reason, at_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?)", (name, version, action, json.dumps(metrics), reason, now_ms()))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def reject(self, name: str, version: str, metrics: dict[str, float], reason: str) -> None:
        """Record a gate rejection with its figures."""
        self.get(name, version)
        self._decide(name, version, "reject", "rejected", metrics, reason)

    def _serve(self, name: str, version: str, action: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO serving (name, version, action, at_ms) VALUES (?, ?, ?, ?)",
                             (name, version, action, now_ms()))

    def promote(self, name: str, version: str, metrics: dict[str, float] | None = None,
                reason: str = "operator") -> VersionRecord:
        """Make ``version`` the serving one (recorded); announcing it is the caller's job."""
        rec = self.get(name, version)
        self.verify_artifact(rec)
        self._decide(name, version, "promote", "promoted", metrics or rec.metrics, reason)
        self._serve(name, version, "promote")
        return self.get(name, version)

    def rollback_target(self, name: str) -> VersionRecord:
        """The version :meth:`rollback` would serve: the latest earlier one not itself rolled back."""
        current = self.current(name)
        if current is None:
            raise RegistryError(f"{name}: nothing is serving")
        last_action = {d.version: d.action for d in self.decisions(name)}
        rolled = {v for v, action in last_action.items() if action == "rollback"}
        history = self.serving_history(name)
        target = next((v for v in reversed(history) if v != current.version and v not in rolled), None)
        if target is None:
            raise RegistryError(f"{name}: no earlier version to roll back to")
        return self.get(name, target)

    def rollback(self, name: str, reason: str = "operator") -> VersionRecord:
        """Serve the version that served before the current one; the current is marked rolled back."""
        current = self.current(name)
        rec = self.rollback_target(name)
        assert current is not None
        target = rec.version
        self.verify_artifact(rec)
        self._decide(name, current.version, "rollback", "rolled_back", {}, f"{reason}: back to {target}")
        self._serve(name, target, "rollback")
        return rec

    # --- reading ------------------------------------------------------------------------

    def _record(self, row: tuple[Any, ...]) -> VersionRecord:
        return VersionRecord(name=row[0], version=row[1], parent=row[3], status=row[4], format=row[5],
                             sha256=row[6], signature=bytes(row[7]), key_id=row[8], size=row[9],
                             metrics=json.loads(row[10]), lineage=json.loads(row[11]), created_ms=row[12])

    def find(self, name: str, version: str) -> VersionRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM versions WHERE name = ? AND version = ?",
                                   (name, version)).fetchone()
        return None if row is None else self._record(row)

    def get(self, name: str, version: str) -> VersionRecord:
        rec = self.find(name, version)
        if rec is None:
            raise RegistryError(f"{name}: no version {version!r}")
        return rec

    def versions(self, name: str | None = None) -> list[VersionRecord]:
        with self._lock:
            if name is None:
                rows = self._db.execute("SELECT * FROM versions ORDER BY name, n").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM versions WHERE name = ? ORDER BY n", (name,)).fetchall()
        return [self._record(r) for r in rows]

    def serving_history(self, name: str) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT version FROM serving WHERE name = ? ORDER BY id", (name,)).fetchall()
        return [r[0] for r in rows]

    def current_action(self, name: str) -> str:
        """How the serving version came to serve: ``promote`` or ``rollback`` (``base`` if never announced)."""
        with self._lock:
            row = self._db.execute("SELECT action FROM serving WHERE name = ? ORDER BY id DESC LIMIT 1",
                                   (name,)).fetchone()
        return "base" if row is None else str(row[0])

    def current(self, name: str) -> VersionRecord | None:
        """The version announced last (promote or rollback)."""
        history = self.serving_history(name)
        return self.get(name, history[-1]) if history else None

    def decisions(self, name: str | None = None) -> list[Decision]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, version, action, metrics, reason, at_ms FROM decisions "
                + ("WHERE name = ? " if name else "") + "ORDER BY id", (name,) if name else ()).fetchall()
        return [Decision(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]

    def artifact(self, rec: VersionRecord) -> bytes:
        """The artifact bytes, checked against the recorded sha256."""
        data = (self.dir / rec.name / rec.version).read_bytes()
        if hashlib.sha256(data).hexdigest() != rec.sha256:
            raise RegistryError(f"{rec.name} {rec.version}: artifact does not match its sha256")
        return data

    def verify_artifact(self, rec: VersionRecord) -> None:
        self.artifact(rec)

    def artifact_path(self, name: str, version: str) -> Path:
        check_id(name, "model")
        check_id(version, "version")
        return self.dir / name / version

    def announcement(self, rec: VersionRecord, action: str, *, inline_max_bytes: int,
                     base_url: str | None) -> ModelUpdate:
        """The :class:`ModelUpdate` that tells edges to serve ``rec``: inline if small, else by URL.

        Each call takes the next announcement serial and signs (name, version, sha256, action,
        serial), so edges refuse a replay of an older announcement."""
        artifact: bytes | None = None
        url: str | None = None
        if rec.size <= inline_max_bytes or base_url is None:
            artifact = self.artifact(rec)
        else:
            url = f"{base_url.rstrip('/')}/artifacts/{rec.name}/{rec.version}"
        now = now_ms()
        with self._lock:
            cur = self._db.execute("INSERT INTO announcements (name, version, action, at_ms) VALUES (?, ?, ?, ?)",
                                   (rec.name, rec.version, action, now))
            serial = int(cur.lastrowid or 0)
        return ModelUpdate(
            name=rec.name, version=rec.version, sha256=rec.sha256, signature=rec.signature,
            key_id=rec.key_id, format=rec.format, size=rec.size, action=action, parent=rec.parent,
            artifact=artifact, url=url, metrics=dict(rec.metrics), created_at_ms=now,
            serial=serial, announce_signature=self.signer.sign(
                announcement_message(rec.name, rec.version, rec.sha256, action, serial)),
        )
