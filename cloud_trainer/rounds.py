"""One retraining round per model: gather labelled samples, make a candidate, judge it.

A round never touches the registry or Kafka itself: it returns a :class:`Candidate`
(artifact, gate result, lineage) and the service registers, promotes or rejects it.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cloud_trainer.asr_adapt import build_candidate_vocabulary, corpus_wer, pcm_to_float, transcribe
from cloud_trainer.fer_train import LabelledCrop, agreement, decode_crop, fine_tune, label_index
from cloud_trainer.gate import GateResult, judge
from cloud_trainer.labeler import FaceLabeler, ReplaySet
from cloud_trainer.registry import Lineage
from cloud_trainer.store import SampleStore, StoredSample
from common.trainer_settings import AsrAdaptSettings, FerTrainSettings
from models.edge_asr import VOCAB_FORMAT, vocabulary_from_bytes, vocabulary_manifest, vocabulary_to_bytes
from models.fer_artifact import FER_FORMAT, fer_from_bytes, fer_to_bytes
from models.whisper_asr import WhisperAsr

__all__ = ["Candidate", "ModelRound", "FerRound", "AsrRound", "keys_digest"]


@dataclass(frozen=True, slots=True)
class Candidate:
    artifact: bytes
    format: str
    gate: GateResult
    lineage: Lineage


class ModelRound(Protocol):
    """What the service needs of one trainable model."""

    name: str
    format: str
    retrain_min_samples: int
    interval_min_samples: int

    async def label(self) -> int:
        """Label what can be labelled automatically; return how many were labelled."""

    async def labelled_train_count(self) -> int:
        """Labelled training samples in the store (the retraining trigger counts these)."""

    async def run(self, parent_version: str, parent_artifact: bytes, seed: int) -> Candidate:
        """Train a candidate from the serving version and evaluate both on the holdout."""


def keys_digest(samples: list[StoredSample]) -> str:
    """sha256 over the sorted sample keys: which samples a version was trained on."""
    h = hashlib.sha256()
    for key in sorted(s.key for s in samples):
        h.update(key.encode() + b"\n")
    return h.hexdigest()


def _crops(samples: list[StoredSample]) -> list[LabelledCrop]:
    out = []
    for s in samples:
        try:
            out.append(LabelledCrop(decode_crop(s.data), label_index(s.label or "")))
        except ValueError:  # invalid label or undecodable crop: not trainable
            continue
    return out


class FerRound:
    """Edge FER fine-tuning on teacher labels, gated on holdout agreement with the teacher."""

    format = FER_FORMAT

    def __init__(self, store: SampleStore, labeler: FaceLabeler, replay: ReplaySet,
                 settings: FerTrainSettings) -> None:
        self.store = store
        self.labeler = labeler
        self.replay = replay
        self.settings = settings
        self.name = settings.model
        self.retrain_min_samples = settings.retrain_min_samples
        self.interval_min_samples = settings.interval_min_samples

    async def label(self) -> int:
        return await self.labeler.label_pending()

    async def labelled_train_count(self) -> int:
        return await self.store.count(self.name, split="train", labelled=True)

    async def run(self, parent_version: str, parent_artifact: bytes, seed: int) -> Candidate:
        train_rows = await self.store.samples(self.name, split="train", labelled=True)
        holdout_rows = await self.store.samples(self.name, split="holdout", labelled=True)
        cut = max(0, len(train_rows) - self.settings.max_train_samples)
        new_rows, older_rows = train_rows[cut:], train_rows[:cut]

        def work() -> Candidate:
            new, older, holdout = _crops(new_rows), _crops(older_rows), _crops(holdout_rows)
            parent = fer_from_bytes(parent_artifact)
            model, report = fine_tune(parent, new, list(self.replay.train) + older, self.settings, seed)
            replay_guard = None
            if self.replay.holdout:
                replay_guard = ("replay_agreement", agreement(parent, self.replay.holdout),
                                agreement(model, self.replay.holdout), self.settings.max_replay_drop)
            gate = judge("agreement", current=agreement(parent, holdout), candidate=agreement(model, holdout),
                         higher_is_better=True, margin=self.settings.min_gain, n_holdout=len(holdout),
                         min_holdout=self.settings.min_holdout, guard=replay_guard)
            lineage: Lineage = {
                "parent": parent_version,
                "samples_new": report.n_new,
                "samples_replay": report.n_replay,
                "labelled_train_total": len(train_rows),
                "max_sample_id": max((r.id for r in train_rows), default=0),
                "samples_sha256": keys_digest(new_rows),
                "labels": self.labeler.source,
                "epochs": report.epochs,
                "train_seconds": round(report.seconds, 3),
                "final_loss": round(report.final_loss, 4),
            }
            return Candidate(fer_to_bytes(model), FER_FORMAT, gate, lineage)

        return await asyncio.to_thread(work)


class AsrRound:
    """Whisper vocabulary (prompt) adaptation on operator / DC transcripts, gated on holdout WER
    measured with the edge's own final model."""

    format = VOCAB_FORMAT

    def __init__(self, store: SampleStore, settings: AsrAdaptSettings, work_dir: Path, asr: WhisperAsr) -> None:
        self.store = store
        self.settings = settings
        self.work_dir = work_dir
        self.asr = asr
        self.name = settings.model
        self.retrain_min_samples = settings.retrain_min_samples
        self.interval_min_samples = settings.interval_min_samples

    async def label(self) -> int:
        return 0  # audio is labelled by operators (``edge-offload label``)

    async def labelled_train_count(self) -> int:
        return await self.store.count(self.name, split="train", labelled=True)

    async def run(self, parent_version: str, parent_artifact: bytes, seed: int) -> Candidate:
        train_rows = [r for r in await self.store.samples(self.name, split="train", labelled=True)
                      if r.kind == "audio" and r.label]
        holdout_rows = [r for r in await self.store.samples(self.name, split="holdout", labelled=True)
                        if r.kind == "audio" and r.label]

        def work() -> Candidate:
            vocab = build_candidate_vocabulary(self.settings.base_sentences, [r.label or "" for r in train_rows])
            parent_words = set(vocabulary_manifest(parent_artifact).get("words", []))
            artifact = vocabulary_to_bytes(vocab, {"transcripts": len(train_rows),
                                                   "base_sentences": len(self.settings.base_sentences)})
            current = vocabulary_from_bytes(parent_artifact, self.name, parent_version)
            clips = [pcm_to_float(r.data) for r in holdout_rows]
            refs = [r.label or "" for r in holdout_rows]
            gate = judge("wer", current=corpus_wer(refs, transcribe(self.asr, clips, current.prompt or None)),
                         candidate=corpus_wer(refs, transcribe(self.asr, clips, vocab.prompt or None)),
                         higher_is_better=False, margin=self.settings.min_gain,
                         n_holdout=len(holdout_rows), min_holdout=self.settings.min_holdout)
            lineage: Lineage = {
                "parent": parent_version,
                "samples_new": len(train_rows),
                "labelled_train_total": len(train_rows),
                "max_sample_id": max((r.id for r in train_rows), default=0),
                "samples_sha256": keys_digest(train_rows),
                "labels": {"operator": sum(1 for r in train_rows if (r.label_source or "").startswith("operator:")),
                           "dc": sum(1 for r in train_rows if (r.label_source or "").startswith("dc:"))},
                "vocabulary": len(vocab.words),
                "new_words": sorted(set(vocab.words) - parent_words),
                "judged_with": f"{self.asr.name}/{self.asr.version}",
            }
            return Candidate(artifact, VOCAB_FORMAT, gate, lineage)

        return await asyncio.to_thread(work)
