"""Edge-side settings of the DC loop: hard-example mining, the Kafka outbox, model updates."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from topics.names import ASR_MODEL, FER_MODEL

__all__ = [
    "FilterSpec",
    "ModelMiningSettings",
    "HardExampleSettings",
    "OutboxSettings",
    "UpdateSettings",
]


class FilterSpec(BaseModel):
    """One hard-example filter. ``threshold``: Sedna's meaning for ``threshold`` (mean score
    below it) and ``cross_entropy`` (1 + sum p ln p / ln N below it); the top-2 gap below it
    for ``margin``; the sampling probability for ``random``."""

    kind: Literal["threshold", "cross_entropy", "margin", "random"]
    threshold: float = Field(ge=0.0, le=1.0)


class ModelMiningSettings(BaseModel):
    """Mining of one model's results: a case is hard if any filter says so."""

    filters: list[FilterSpec]
    rate_per_device_s: float = Field(2.0, gt=0, description="sustained hard examples/s per device")
    burst_per_device: int = Field(20, ge=1)


def _default_models() -> dict[str, ModelMiningSettings]:
    return {
        FER_MODEL: ModelMiningSettings(filters=[
            FilterSpec(kind="threshold", threshold=0.5),
            FilterSpec(kind="margin", threshold=0.15),
            FilterSpec(kind="random", threshold=0.01),
        ]),
        ASR_MODEL: ModelMiningSettings(filters=[  # the segment's calibrated confidence
            FilterSpec(kind="threshold", threshold=0.75),
            FilterSpec(kind="random", threshold=0.02),
        ]),
    }


class HardExampleSettings(BaseModel):
    """Which results leave the edge as hard examples, and how many at most."""

    enabled: bool = True
    models: dict[str, ModelMiningSettings] = Field(default_factory=_default_models)
    rate_total_s: float = Field(20.0, gt=0, description="sustained hard examples/s of this node")
    burst_total: int = Field(200, ge=1)
    max_crop_side: int = Field(96, ge=16, description="face crops are shrunk to at most this side")
    seed: int | None = Field(None, description="seed of the random filter (tests)")


class OutboxSettings(BaseModel):
    """The durable SQLite outbox between mining and Kafka."""

    path: Path = Path("edge-outbox.sqlite3")
    max_messages: int = Field(50_000, ge=1, description="oldest are evicted, counted, beyond this")
    max_bytes: int = Field(512 * 1024 * 1024, ge=1)
    batch_size: int = Field(256, ge=1, description="messages per produce round")
    send_timeout_s: float = Field(10.0, gt=0)
    backoff_initial_s: float = Field(0.05, gt=0)
    backoff_max_s: float = Field(2.0, gt=0)
    synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL", description="FULL also survives power loss (an fsync per commit)")


class UpdateSettings(BaseModel):
    """Model updates from the DC: who is trusted, and how updates are fetched."""

    enabled: bool = True
    trusted_public_keys: list[str] = Field(
        default_factory=list, description="raw ed25519 public keys of the DC, hex")
    trusted_key_files: list[Path] = Field(
        default_factory=list, description="files holding such a hex key (the DC's keys_dir/signing.pub)")
    fetch_timeout_s: float = Field(30.0, gt=0)
    max_artifact_bytes: int = Field(256 << 20, ge=1)
    warmup_batches: int = Field(2, ge=0)
    work_dir: Path = Field(Path("edge-models"), description="where ASR language-model artifacts are unpacked")
    state_file: Path | None = Field(
        None, description="keeps the highest announcement serial applied per model across restarts "
                          "(0600); None: kept in memory (the topic's history restores it)")
