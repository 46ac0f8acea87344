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

    worker_threads: int = Field(8, ge=1, description="threads for VAD/ASR/embedding work (ASR waits in its batcher)")
    max_legs: int = Field(64, ge=1, description="legs decoded at once; more are refused, counted")
    leg_queue_packets: int = Field(1500, ge=1, description="bound of each leg's packet queue (30 s)")
    batch_max_packets: int = Field(50, ge=1, description="packets handed to a worker at once")
    idle_close_s: float = Field(10.0, gt=0, description="a leg with no packet for this long is closed")
    tick_s: float = Field(0.1, gt=0, description="jitter-buffer flush / idle check period per leg")
    subscribe_qos: int = Field(1, ge=0, le=1)
    partial_qos: int = Field(0, ge=0, le=1)
    segment_qos: int = Field(1, ge=0, le=1)
    asr_final_model: Literal["whisper_tiny_en", "whisper_base"] = Field(
        "whisper_base", description="Whisper weights of final segments (pinned artifact folder): the most "
        "accurate that keeps 4 legs real time on 2 cores (README, bench.speech)")
    asr_partial_model: Literal["whisper_tiny_en", "whisper_base"] | None = Field(
        "whisper_tiny_en", description="Whisper weights of partials; None: the final model")
    asr_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA float16 when present, else CPU int8")
    asr_threads: int = Field(2, ge=1, description="CPU threads of each Whisper model")
    asr_max_batch: int = Field(8, ge=1, description="utterances of many legs decoded in one model call")
    corpus_path: Path | None = Field(None, description="domain sentences, one a line: the starting Whisper prompt")
    follow_revisions: bool = Field(True, description="publish the DC's revisions of mined segments")
    device: str = Field("cpu", description="speaker-embedding device: cpu, cuda")
    client_suffix: str = "-speech"
    reconnect_max_s: float = Field(10.0, gt=0)


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
