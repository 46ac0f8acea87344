"""One typed settings object for every part, read from the environment and an optional TOML file.

Environment variables use the prefix ``EDGE_OFFLOAD_`` and ``__`` between sections, e.g.
``EDGE_OFFLOAD_MQTT__PORT=1884`` or ``EDGE_OFFLOAD_VISION__MAX_BATCH_SIZE=8``. A TOML file
named by ``EDGE_OFFLOAD_CONFIG`` (or passed to :func:`load_settings`) supplies defaults that
the environment overrides. A missing TOML file, or a key in it (or an ``EDGE_OFFLOAD_*``
variable) that names no setting, is an error: a typo never silently falls back to a default.
Secrets are :class:`~pydantic.SecretStr`: they print as ``**********``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from common.archive_settings import ArchiveSettings
from common.dc_settings import HardExampleSettings, OutboxSettings, UpdateSettings
from common.device_settings import DeviceProfileSettings
from common.offload_settings import OffloadSettings
from common.speech_settings import DegradationConfig, JitterConfig, PipelineConfig
from common.trainer_settings import TrainerSettings

__all__ = [
    "MqttSettings",
    "KafkaSettings",
    "VisionSettings",
    "EdgeSettings",
    "DeliverySettings",
    "SpeechServiceConfig",
    "LogSettings",
    "Settings",
    "ConfigError",
    "load_settings",
    "use_config_file",
    "reference",
    "reference_table",
]

CONFIG_ENV = "EDGE_OFFLOAD_CONFIG"
ENV_PREFIX = "EDGE_OFFLOAD_"


class ConfigError(ValueError):
    """The configuration file is missing or names a setting that does not exist."""


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
    username: str | None = Field(None, description="MQTT username (Mosquitto password_file)")
    password: SecretStr | None = Field(None, description="MQTT password; never logged")
    tls: bool = Field(False, description="connect over TLS (implied by ca_file / cert_file)")
    ca_file: Path | None = Field(None, description="CA bundle that signed the broker's certificate "
                                 "(default with tls: the system store)")
    cert_file: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    key_file: Path | None = Field(None, description="private key (PEM) of cert_file")
    tls_insecure: bool = Field(False, description="skip the broker host-name check (chain still verified)")

    @property
    def use_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None


class KafkaSettings(BaseModel):
    """Connection to the central DC's Kafka cluster."""

    bootstrap_servers: str = "127.0.0.1:9092"
    enable_idempotence: bool = Field(False, description="off against Tansu, which lacks InitProducerId")
    client_id: str = "edge-offload"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_ca_file: Path | None = Field(None, description="CA bundle of the brokers (SSL, SASL_SSL)")
    ssl_cert_file: Path | None = Field(None, description="client certificate for mutual TLS")
    ssl_key_file: Path | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(None, description="never logged")
    partitions: int = Field(1, ge=1, description="kafka-init: partitions of hard-examples, labels and speech "
                            "revisions (model updates and dc-results: 1; dc-frames: offload.dc_partitions)")
    replication_factor: int = Field(1, ge=1, description="kafka-init: replicas of every topic (3 in production)")
    min_insync_replicas: int = Field(2, ge=1, description="kafka-init: min.insync.replicas when replicated")
    retention_days: int = Field(7, ge=1, description="kafka-init: retention of the non-compacted data topics")


class FerCropSettings(BaseModel):
    """How a detector box becomes the crop the FER network classifies (``models.fer_crop``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    refine: bool = Field(True, description="re-find the face with fer's own Haar cascade near the box and crop "
                         "exactly as fer does (about 10-25 ms CPU per face); else the calibrated geometry")
    scale: float = Field(1.265, gt=0, description="calibrated crop side / detector box side")
    dx: float = Field(0.013, description="calibrated crop centre shift right, in box sides")
    dy: float = Field(-0.06, description="calibrated crop centre shift down, in box sides (negative: up)")


class VisionSettings(BaseModel):
    """Face detection + facial-expression recognition on camera frames."""

    max_batch_size: int = Field(16, ge=1)
    max_queue_delay_ms: float = Field(4.0, ge=0)
    max_pending_frames: int = Field(256, ge=1, description="bound of the batcher queue")
    max_payload_bytes: int = Field(4 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(16_000_000, ge=1)
    detector: Literal["blazeface", "haar"] = Field(
        "blazeface", description="blazeface: torch BlazeFace full + short range, batched; haar: OpenCV cascade")
    blazeface_short_range: bool = Field(
        True, description="also run the short-range model (faces filling the frame); merged by NMS")
    blazeface_tiles: bool = Field(
        False, description="also run a frame far from square (long side >= 1.25 x short) as square tiles of its "
        "short side (faces small relative to the frame); each tile costs as much as a frame")
    cascade_fallback: bool = Field(
        False, description="blazeface: fer's Haar cascade also looks at each frame; a face it finds that BlazeFace "
        "did not is kept if BlazeFace's short-range model confirms it on its surroundings (models.face_fallback); "
        "the cascade costs tens to hundreds of ms a frame")
    detect_max_side: int = Field(400, ge=32, description="haar: faces are found on a copy no larger than this")
    detect_scale_factor: float = Field(1.2, gt=1.0)
    detect_min_neighbors: int = Field(5, ge=0)
    min_face_px: int = Field(36, ge=8, description="smallest face side in full-resolution pixels")
    max_faces: int = Field(16, ge=1)
    fer_crop: FerCropSettings = Field(default_factory=FerCropSettings)
    publish_thumbnails: bool = Field(False, description="publish a small JPEG of each served frame (topics.thumbnail) "
                                     "for the archive's camera tiles; off: no image leaves the edge")
    thumbnail_max_side: int = Field(160, ge=16, le=640, description="longest side of a thumbnail, pixels")
    preprocess_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1,
                                    description="frames of one batch decoded + searched in parallel")
    cv_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1,
                            description="OpenCV threads for a batch of one frame")
    torch_threads: int = Field(1, ge=1, description=(
        "torch intra-op threads; more stall badly when the broker and cameras share the cores "
        "(BlazeFace p99 6.4 s with 2 vs 0.12 s with 1 on 2 cores): use detect_workers instead"))
    detect_workers: int = Field(default_factory=lambda: min(2, os.cpu_count() or 1), ge=1,
                                description="blazeface: threads running (model, chunk of frames) pieces of a batch")


class SpeechServiceConfig(BaseModel):
    """The edge agent's speech service (RTP legs -> partials and speaker-labelled segments)."""

    worker_threads: int = Field(8, ge=1, description="threads for VAD/ASR/embedding work (ASR waits in its batcher)")
    max_legs: int = Field(64, ge=1, description="legs decoded at once; more are refused, counted in legs")
    leg_memory_mib: float = Field(8.0, gt=0, description="resident memory one open leg costs: its audio, VAD "
                                  "state and embeddings (the Whisper models are shared by all legs)")
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
    asr_final_model: Literal["whisper_tiny_en", "whisper_base"] = Field(
        "whisper_base", description="Whisper weights of final segments (pinned artifact folder): the most "
        "accurate that keeps 4 legs real time on 2 cores (docs/speech.md, bench.speech)")
    asr_partial_model: Literal["whisper_tiny_en", "whisper_base"] | None = Field(
        "whisper_tiny_en", description="Whisper weights of partials; None: the final model")
    asr_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA float16 when present, else CPU int8")
    asr_threads: int = Field(1, ge=1, description="CPU threads of one Whisper call")
    asr_parallel: int = Field(2, ge=1, description="Whisper calls each model may run at once (each on "
                              "asr_threads threads); on 2 cores 2 x 1 thread carries 12 legs where 1 x 2 "
                              "threads fell behind (docs/speech-capacity.md)")
    asr_max_batch: int = Field(8, ge=1, description="utterances of many legs decoded in one model call")
    corpus_path: Path | None = Field(None, description="domain sentences, one a line: the starting Whisper prompt")
    follow_revisions: bool = Field(True, description="publish the DC's revisions of mined segments")
    publish_clips: bool = Field(False, description="publish each final segment's audio (16 kHz int16, topics.clip) "
                                "for the archive, so operators can play it; off: no audio leaves the edge")
    clip_max_s: float = Field(30.0, gt=0, le=30.0, description="longest clip published; longer utterances are cut")
    device: str = Field("cpu", description="speaker-embedding device: cpu, cuda")
    client_suffix: str = "-speech"
    reconnect_max_s: float = Field(10.0, gt=0)
    pipeline: PipelineConfig = PipelineConfig()
    jitter: JitterConfig = JitterConfig()
    degradation: DegradationConfig = DegradationConfig()

    @property
    def leg_limit(self) -> int:
        """Legs open at once: ``max_legs``, lowered so that open legs fit the memory budget (at least 1)."""
        return max(1, min(self.max_legs, int(self.legs_memory_budget_mib // self.leg_memory_mib)))


class DeliverySettings(BaseModel):
    """Delivery guarantees of the edge agent under faults (see docs/delivery.md)."""

    publish_deadline_s: float = Field(60.0, gt=0, description="longest wait for a result's PUBACK before "
                                      "the session is declared stuck and reconnected (inputs redelivered)")
    liveness_stall_s: float = Field(120.0, gt=0, description="/healthz fails when acks or a worker made "
                                    "no progress for this long with work pending")
    unsent_results: int = Field(1024, ge=0, description="computed results kept across a reconnect, "
                                "answered when their input is redelivered")


class LogSettings(BaseModel):
    """Logging of every ``edge-offload`` command (``--log-level`` / ``--log-format`` override these)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    format: Literal["text", "json"] = Field("text", description="json: one object per line, context fields "
                                            "(node, device, conversation) as keys")


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
    log: LogSettings = LogSettings()
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
    offload: OffloadSettings = OffloadSettings()
    device_profile: DeviceProfileSettings = DeviceProfileSettings()
    archive: ArchiveSettings = ArchiveSettings()

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
        toml_path = os.environ.get(CONFIG_ENV)
        if toml_path:
            sources.append(_CheckedToml(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)


class _CheckedToml(TomlConfigSettingsSource):
    """The TOML source, refusing a missing file and keys that name no setting."""

    def __init__(self, settings_cls: type[BaseSettings], toml_file: Path) -> None:
        if not toml_file.is_file():
            raise ConfigError(f"config file {toml_file} does not exist")
        super().__init__(settings_cls, toml_file=toml_file)
        unknown = _unknown_keys(settings_cls, self.toml_data, "")
        if unknown:
            raise ConfigError(f"unknown setting(s) in {toml_file}: {', '.join(unknown)}")


def _unknown_keys(model: type[BaseModel], data: Any, where: str) -> list[str]:
    """Dotted names in ``data`` that are not fields of ``model`` (nested models, dicts and lists of them)."""
    if not isinstance(data, dict):
        return []
    unknown: list[str] = []
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            unknown.append(f"{where}{key}")
            continue
        unknown += _unknown_in_value(field.annotation, value, f"{where}{key}.")
    return unknown


def _unknown_in_value(annotation: Any, value: Any, where: str) -> list[str]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _unknown_keys(annotation, value, where)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return [k for key, v in value.items() for k in _unknown_in_value(args[1], v, f"{where}{key}.")]
    if origin is list and args and isinstance(value, list):
        return [k for i, v in enumerate(value) for k in _unknown_in_value(args[0], v, f"{where}{i}.")]
    return []


def _unknown_env() -> list[str]:
    """``EDGE_OFFLOAD_*`` variables that name no setting (``EDGE_OFFLOAD_CONFIG`` aside)."""
    unknown = []
    for name, value in os.environ.items():
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_ENV:
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        if _unknown_keys(Settings, nested, ""):
            unknown.append(name)
    return sorted(unknown)


def reference(model: type[BaseModel] | None = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(environment variable, type, default, description) of every setting, nested ones included."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in (model or Settings).model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += reference(ann, f"{prefix}{name}__")
            continue
        if field.default_factory is not None:
            default = "(computed)"
        elif isinstance(field.default, SecretStr):
            default = "**********"
        else:
            default = repr(field.default) if field.default is not None else "unset"
        rows.append((f"{ENV_PREFIX}{prefix}{name}".upper(), _type_name(ann), default, field.description or ""))
    return rows


def reference_table() -> str:
    """:func:`reference` as a Markdown table (the body of docs/settings.md, see common.settings_reference)."""
    lines = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for env, type_name, default, doc in reference():
        lines.append(f"| `{env}` | {type_name} | `{default}` | {doc} |".replace("`unset`", "unset"))
    return "\n".join(lines)


def _type_name(ann: Any) -> str:
    origin, args = get_origin(ann), get_args(ann)
    if origin is Literal:
        return " / ".join(str(a) for a in args)
    if args and origin is not None and getattr(origin, "__name__", "") in ("UnionType", "Union"):
        return " or ".join(_type_name(a) for a in args)
    if args and origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(ann, "__name__", str(ann)).replace("NoneType", "none")


def use_config_file(path: Path | str) -> None:
    """Make ``path`` the TOML file every later :func:`load_settings` reads (also in child processes)."""
    if not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    os.environ[CONFIG_ENV] = str(path)


def load_settings(**overrides: object) -> Settings:
    """Read settings: explicit ``overrides`` > environment > TOML file > defaults.

    Raises :class:`ConfigError` for a missing config file or an unknown key, and pydantic's
    ``ValidationError`` (a ``ValueError``) for a value of the wrong type or out of range.
    """
    unknown = _unknown_env()
    if unknown:
        raise ConfigError(f"unknown setting(s) in the environment: {', '.join(unknown)}")
    return Settings(**overrides)  # type: ignore[arg-type]
