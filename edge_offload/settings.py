"""One typed settings object for every part, read from the environment and an optional TOML file.

Environment variables use the prefix ``EDGE_OFFLOAD_`` and ``__`` between sections, e.g.
``EDGE_OFFLOAD_MQTT__PORT=1884`` or ``EDGE_OFFLOAD_VISION__MAX_BATCH_SIZE=8``. A TOML file
named by ``EDGE_OFFLOAD_CONFIG`` (or passed to :func:`load_settings`) supplies defaults that
the environment overrides.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from cloud_trainer.settings import TrainerSettings
from edge_agent.dc_settings import HardExampleSettings, OutboxSettings, UpdateSettings
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = [
    "MqttSettings",
    "KafkaSettings",
    "VisionSettings",
    "EdgeSettings",
    "DeliverySettings",
    "SpeechServiceConfig",
    "Settings",
    "load_settings",
]


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-offload" / "artifacts"


class MqttSettings(BaseModel):
    """Connection to the KubeEdge EventBus (an MQTT broker)."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "edge-agent-1"
    share_group: str = "edge-agents"
    session_expiry_s: int = Field(3600, ge=0, description="broker keeps our session this long while we are away")
    receive_maximum: int = Field(64, ge=1, le=65535, description="unacked QoS 1 messages the broker may send us")
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = None


class KafkaSettings(BaseModel):
    """Connection to the central DC's Kafka cluster."""

    bootstrap_servers: str = "127.0.0.1:9092"
    enable_idempotence: bool = Field(False, description="off against Tansu, which lacks InitProducerId")
    client_id: str = "edge-offload"


class VisionSettings(BaseModel):
    """Face detection + facial-expression recognition on camera frames."""

    max_batch_size: int = Field(16, ge=1)
    max_queue_delay_ms: float = Field(4.0, ge=0)
    max_pending_frames: int = Field(256, ge=1, description="bound of the batcher queue")
    max_payload_bytes: int = Field(4 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(16_000_000, ge=1)
    detect_max_side: int = Field(400, ge=32, description="faces are found on a copy no larger than this")
    detect_scale_factor: float = Field(1.2, gt=1.0)
    detect_min_neighbors: int = Field(5, ge=0)
    min_face_px: int = Field(36, ge=8, description="smallest face side in full-resolution pixels")
    max_faces: int = Field(16, ge=1)
    preprocess_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1,
                                    description="frames of one batch decoded + searched in parallel")
    cv_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1,
                            description="OpenCV threads for a batch of one frame")
    torch_threads: int = Field(default_factory=lambda: min(2, os.cpu_count() or 1), ge=1,
                               description="FER runs after a batch's detection, so it may use the cores")


class SpeechServiceConfig(BaseModel):
    """The edge agent's speech service (RTP legs -> partials and speaker-labelled segments)."""

    worker_threads: int = Field(2, ge=1, description="threads for VAD/ASR/embedding work")
    max_legs: int = Field(64, ge=1, description="legs decoded at once; more are refused, counted in legs")
    leg_memory_mib: float = Field(128.0, gt=0, description="resident memory one open leg costs (measured: "
                                  "~92 MiB to build a pocketsphinx decoder per leg, ~130 MiB while decoding)")
    legs_memory_budget_mib: float = Field(768.0, gt=0, description="memory all open legs may use together; "
                                          "with leg_memory_mib it lowers max_legs (see leg_limit)")
    client_queue_packets: int = Field(16384, ge=1, description="bound of the MQTT client's packet queue (all "
                                      "legs); overflow is counted (packets_client_queue_full)")
    leg_queue_packets: int = Field(1500, ge=1, description="bound of each leg's packet queue (30 s)")
    batch_max_packets: int = Field(50, ge=1, description="packets handed to a worker at once")
    idle_close_s: float = Field(10.0, gt=0, description="a leg with no packet for this long is closed")
    tick_s: float = Field(0.1, gt=0, description="jitter-buffer flush / idle check period per leg")
    subscribe_qos: int = Field(1, ge=0, le=1)
    partial_qos: int = Field(0, ge=0, le=1)
    segment_qos: int = Field(1, ge=0, le=1)
    lm_path: Path | None = Field(None, description="ARPA LM (with dict_path); default: generic en-us")
    dict_path: Path | None = None
    corpus_path: Path | None = Field(None, description="domain sentences, one a line: build the LM at start")
    device: str = Field("cpu", description="speaker-embedding device: cpu, cuda")
    client_suffix: str = "-speech"
    reconnect_max_s: float = Field(10.0, gt=0)

    @property
    def leg_limit(self) -> int:
        """Legs open at once: ``max_legs``, lowered so that open legs fit the memory budget (at least 1)."""
        return max(1, min(self.max_legs, int(self.legs_memory_budget_mib // self.leg_memory_mib)))


class DeliverySettings(BaseModel):
    """Delivery guarantees of the edge agent under faults (see README "Delivery guarantees")."""

    publish_deadline_s: float = Field(60.0, gt=0, description="longest wait for a result's PUBACK before "
                                      "the session is declared stuck and reconnected (inputs redelivered)")
    liveness_stall_s: float = Field(120.0, gt=0, description="/healthz fails when acks or a worker made "
                                    "no progress for this long with work pending")
    unsent_results: int = Field(1024, ge=0, description="computed results kept across a reconnect, "
                                "answered when their input is redelivered")


class EdgeSettings(BaseModel):
    """The edge agent process."""

    node_name: str = "edge-node-1"
    http_host: str = "0.0.0.0"
    http_port: int = Field(9108, ge=0, description="/metrics, /healthz, /readyz; 0 picks a free port")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    vision: bool = Field(True, description="serve camera frames")
    speech: bool = Field(True, description="serve RTP audio legs")


class Settings(BaseSettings):
    """All settings of edge-offload; see the module docstring for how they are read."""

    model_config = SettingsConfigDict(
        env_prefix="EDGE_OFFLOAD_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    cache_dir: Path = Field(default_factory=_default_cache_dir)
    mqtt: MqttSettings = MqttSettings()
    kafka: KafkaSettings = KafkaSettings()
    vision: VisionSettings = VisionSettings()
    edge: EdgeSettings = EdgeSettings()
    speech: SpeechServiceConfig = SpeechServiceConfig()
    delivery: DeliverySettings = DeliverySettings()
    mining: HardExampleSettings = HardExampleSettings()
    outbox: OutboxSettings = OutboxSettings()
    updates: UpdateSettings = UpdateSettings()
    trainer: TrainerSettings = TrainerSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = os.environ.get("EDGE_OFFLOAD_CONFIG")
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)


def load_settings(**overrides: object) -> Settings:
    """Read settings: explicit ``overrides`` > environment > TOML file > defaults."""
    return Settings(**overrides)  # type: ignore[arg-type]
