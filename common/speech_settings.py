"""Tuning of the speech pipeline: VAD, jitter buffer, diarizer and the pipeline's own knobs.

Sections of the speech settings (``EDGE_OFFLOAD_SPEECH__JITTER__LATENCY_S``,
``EDGE_OFFLOAD_SPEECH__PIPELINE__VAD__THRESHOLD``, ...); the components take these models as
their configuration. All are frozen: a configuration is a value.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["VadConfig", "JitterConfig", "DiarizerConfig", "DegradationConfig", "PipelineConfig"]


class VadConfig(BaseModel):
    """Hysteresis of the speech/silence decision. Times in seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.5, description="speech probability of a 32 ms window that starts speech")
    neg_threshold: float | None = Field(None, description="probability below which speech ends; "
                                        "None: threshold - 0.15")
    min_silence_s: float = Field(0.4, description="silence that ends speech")
    speech_pad_s: float = Field(0.15, description="audio added before and after speech")
    start_pad_s: float | None = Field(None, ge=0, description="audio added before speech instead of "
                                      "speech_pad_s (None: speech_pad_s); never reaches back into the "
                                      "previous speech")
    max_speech_s: float = Field(20.0, description="speech longer than this is cut")

    @property
    def pre_pad_s(self) -> float:
        """Audio added before speech."""
        return self.start_pad_s if self.start_pad_s is not None else self.speech_pad_s

    @property
    def off_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)


class JitterConfig(BaseModel):
    """How long to wait for missing packets and what counts as a broken stream."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_s: float = Field(0.06, ge=0, description="how long a missing RTP packet is waited for")
    max_packets: int = Field(64, ge=1, description="packets buffered at most; then the missing one is declared lost")
    max_ts_jump_s: float = Field(10.0, gt=0, description="a packet whose timestamp jumps further does not fit")
    max_seq_jump: int = Field(1000, description="a packet this far ahead in sequence does not fit the stream")
    max_misorder: int = Field(100, description="a packet this far behind in sequence does not fit the stream")
    fade_s: float = Field(0.02, ge=0, description="fade of concealment audio for lost packets")
    follow_window: int = Field(16, description="sequence window in which packets confirm a misfit as a new stream")


class DiarizerConfig(BaseModel):
    """Online speaker clustering of finished segments, with the leg rule: on a leg-separated
    call a leg's speech is its party's unless the audio shows otherwise; legs matching
    ``shared_legs`` (conference bridges, speakerphones) carry several voices."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.82, description="on a shared leg: cosine similarity of a 1.6 s window to "
                             "one of the leg's speakers that keeps it in a long segment's turn")
    recluster_threshold: float = Field(0.0, description="on a shared leg: average cosine similarity, with the "
                                       "leg's mean embedding removed, at which segments cluster as one voice "
                                       "(all the leg's segments are re-clustered at every segment)")
    pair_threshold: float = Field(0.80, description="on a shared leg with one segment so far: similarity at "
                                  "which the next is the same voice")
    new_voice_threshold: float = Field(0.55, description="on a one-party leg: a segment is a new voice only "
                                       "below this similarity to every voice of the leg")
    cross_leg_threshold: float = Field(0.90, description="similarity at which a voice joins a speaker "
                                       "first heard on another leg")
    min_evidence_s: float = Field(2.0, ge=0, description="speech a segment needs to be a new voice on a one-party "
                                  "leg or to join another leg's speaker")
    shared_min_evidence_s: float = Field(1.0, ge=0, description="speech a voice needs to found a new speaker "
                                         "on a shared leg")
    shared_legs: list[str] = Field(["conf*", "bridge*"], description="leg ids (fnmatch patterns) "
                                         "that carry several voices")
    min_embed_s: float = Field(1.0, description="shorter segments take their leg's speaker, never move a centroid")
    split_above_s: float = Field(5.0, description="longer segments on a shared leg are split into turns "
                                 "window by window")
    min_run_windows: int = Field(3, description="windows of another speaker in a row that split a segment")
    leg_bonus: float = Field(0.04, description="on a shared leg: similarity added for the leg's current speaker")
    max_speakers: int = Field(32, description="speakers per conversation at most")


class DegradationConfig(BaseModel):
    """What the speech engine gives up as its lag grows (``edge_agent.speech.governor``): partials
    first, then finals wait, then new legs are refused. Lag: seconds a worker step's packets waited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_target: float = Field(0.6, gt=0, le=1, description="share of the node's CPUs the process may use before "
                              "partials thin out (the speech between two partials grows with use / cpu_target, "
                              "up to 4x): partials give way before a lag builds up")
    cpus: float | None = Field(None, gt=0, description="CPUs the process may use (None: the CPUs it may run on, "
                               "capped by the container's cgroup v2 CPU limit)")
    thin_above_s: float = Field(0.1, ge=0, description="lag above which partials thin out")
    partials_off_above_s: float = Field(0.5, gt=0, description="lag above which no partial is decoded")
    refuse_legs_above_s: float = Field(1.0, gt=0, description="lag above which new legs are refused "
                                       "(reason overloaded); open legs carry on")
    smoothing: float = Field(0.2, gt=0, le=1, description="weight of the newest step's lag in the smoothed lag")
    stale_partial_s: float = Field(0.5, gt=0, description="a partial whose newest audio waited longer than this "
                                   "before its worker step is not decoded: it would show old text, and the leg "
                                   "is behind (counted as thinned)")

    @model_validator(mode="after")
    def _in_order(self) -> DegradationConfig:
        if not self.thin_above_s < self.partials_off_above_s <= self.refuse_legs_above_s:
            raise ValueError("degradation must go thin_above_s < partials_off_above_s <= refuse_legs_above_s")
        return self


class PipelineConfig(BaseModel):
    """Knobs of the speech pipeline (seconds unless named otherwise)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    partial_every_s: float = Field(0.5, description="speech between partial transcripts")
    min_utterance_s: float = Field(0.25, description="shorter utterances are dropped")
    max_gap_s: float = Field(1.0, description="a gap in a leg's audio up to this is filled with silence")
    hold_max_s: float = Field(2.0, description="a final segment waits at most this long for the other legs to catch up")
    keep_s: float = Field(1.0, description="audio kept behind the newest sample for an utterance's start")
    merge_below_s: float = Field(1.0, ge=0, description="an utterance shorter than this waits for the leg's next "
                                 "one and is decoded with it (0: never; a lone \"and\" before a pause is then "
                                 "not decoded on its own)")
    merge_gap_s: float = Field(1.0, ge=0, description="how long a short utterance waits for the next one (its "
                               "final is delayed by up to this much when none comes)")
    context_s: float = Field(0.0, ge=0, description="a leg's previous final, if it ended at most this long before "
                             "an utterance starts, is the ASR's previous text for it (0: no context)")
    example_context_s: float = Field(1.0, ge=0, le=5.0, description="a hard example carries up to this much of "
                                     "its leg's audio before the utterance and what has already arrived after it "
                                     "(for the DC's decode; the leg keeps this much more audio)")
    vad: VadConfig = VadConfig()
    diarizer: DiarizerConfig = DiarizerConfig()
