"""Settings of the central DC trainer (nested as ``Settings.trainer``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from topics.names import ASR_MODEL, FER_MODEL

__all__ = ["FerTrainSettings", "AsrAdaptSettings", "TrainerSettings"]


class FerTrainSettings(BaseModel):
    """Fine-tuning the edge FER network on teacher labels, and its evaluation gate."""

    model: str = FER_MODEL
    enabled: bool = True
    retrain_min_samples: int = Field(200, ge=1, description="new labelled training samples that start a round")
    interval_min_samples: int = Field(20, ge=1, description="new samples a timed round needs")
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    max_train_samples: int = Field(2000, ge=1, description="newest labelled samples used per round")
    replay_ratio: float = Field(0.5, ge=0, description="replay samples per new sample, against forgetting")
    replay_dir: Path | None = Field(None, description="original-domain face crops (png/jpg) the teacher labels")
    min_gain: float = Field(0.02, ge=0, description="holdout agreement must rise at least this much")
    max_replay_drop: float = Field(0.05, ge=0, description="agreement on the replay holdout may fall this much")
    min_holdout: int = Field(10, ge=1)
    label_batch: int = Field(64, ge=1, description="face crops the teacher labels per pass")
    device: str = Field("auto", description="where fine-tuning runs: auto (CUDA when present), cpu, cuda")


class AsrAdaptSettings(BaseModel):
    """Vocabulary / language-model adaptation of the edge ASR, and its evaluation gate."""

    model: str = ASR_MODEL
    enabled: bool = True
    whisper_model: str = Field("whisper_base", description="the edge's final Whisper model: the gate decodes with it")
    device: str = Field("auto", description="Whisper device of the DC: auto (CUDA when present), cpu, cuda")
    retrain_min_samples: int = Field(20, ge=1, description="new labelled transcripts that start a round")
    interval_min_samples: int = Field(3, ge=1, description="new transcripts a timed round needs")
    base_version: str = Field("none", description="version name the edge's initial vocabulary is known by")
    base_sentences: list[str] = Field(
        default_factory=list,
        description="always part of the vocabulary prompt; the base version is the prompt of these alone")
    min_gain: float = Field(0.02, ge=0, description="holdout WER must fall at least this much")
    min_holdout: int = Field(2, ge=1)
    revise: bool = Field(True, description="re-decode speech hard examples and send revised segments to the edge")
    revise_models: list[str] = Field(default_factory=lambda: ["whisper_base", "whisper_tiny_en"],
                                     description="Whisper models of the DC's advanced inference: artifact "
                                     "names, size names (tiny.en, base; small, medium, large-v3 from "
                                     "cache_dir/whisper/<size>) or CTranslate2 Whisper directories")
    revise_min_gain: float = Field(0.05, ge=0, le=1, description="a DC revision is published only when its "
                                   "confidence beats the edge's by this much (never-worse rule)")


class TrainerSettings(BaseModel):
    """The DC loop: consumer group, sample store, retraining triggers, registry, push-back."""

    group_id: str = "cloud-trainer"
    store_url: str = Field("sqlite:///trainer-data/samples.sqlite3",
                           description="sqlite:///PATH or postgresql://user@host/db")
    registry_dir: Path = Path("trainer-data/registry")
    keys_dir: Path = Field(Path("trainer-data/keys"), description="ed25519 signing key; made if absent")
    public_key_file: Path | None = Field(None, description="also write the public key (hex) here, e.g. "
                                         "a volume the edges mount as updates.trusted_key_files")
    holdout_percent: int = Field(20, ge=1, le=90, description="share of samples kept for evaluation")
    retrain_interval_s: float = Field(3600.0, gt=0, description="a round also starts this often if "
                                      "the model's interval_min_samples are new")
    auto_promote: bool = Field(True, description="push a candidate that passes the gate at once")
    max_poll_records: int = Field(500, ge=1)
    inline_artifact_max_bytes: int = Field(900_000, ge=0, description="larger artifacts go by URL")
    artifact_base_url: str | None = Field(None, description="where serve.py is reachable from edges")
    serve_host: str = Field("127.0.0.1", description="interface the artifact server binds to "
                            "(0.0.0.0 only behind a network policy)")
    serve_max_bytes: int = Field(256 << 20, ge=1, description="larger artifacts are not served (413)")
    serve_port: int | None = Field(None, ge=0, description="serve artifacts over HTTP (0: any free port)")
    http_host: str = Field("0.0.0.0", description="interface of /metrics, /healthz, /readyz")
    http_port: int = Field(9109, ge=0, description="/metrics, /healthz, /readyz of `trainer`; 0 picks a free port")
    liveness_stall_s: float = Field(1800.0, gt=0, description="/healthz fails when the trainer loop finished "
                                    "no pass for this long (longer than the longest round)")
    torch_threads: int = Field(2, ge=1)
    work_dir: Path = Field(Path("trainer-data/work"), description="scratch space of rounds")
    fer: FerTrainSettings = FerTrainSettings()
    asr: AsrAdaptSettings = AsrAdaptSettings()
