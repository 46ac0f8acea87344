"""Speech on real recordings (:mod:`sim.real_speech`): ``python -m bench.real_speech --json``.

Each scenario's legs go as 20 ms RTP G.711 mu-law packets, with the scenario's packet loss,
through the per-leg pipeline the service runs (``bench.speech.run_conversation``). The edge's
final segments are scored, then the same transcript after the DC: every segment whose
confidence is below ``mine_below`` goes to :class:`~cloud_trainer.speech_revise.SpeechReviser`
with ``pad_s`` of the leg's neighbouring audio either side, and its text is replaced only when
the reviser publishes a revision. ``--live``: instead, each segment goes as the running edge sends
it: the hard example the edge builds (its audio with the lead/tail audio the leg had at hand,
``speech.pipeline.example_context_s``) through the DC service's ``revision_of``.

WER is :func:`models.text.wer` (one normalisation both sides), per leg: a leg's reference
turns in order against its segments in order, summed over the legs of a category. Keys:
``wer_real_edge`` / ``wer_real_final`` (all dev scenarios), ``wer_real_<category>_edge`` /
``_final`` for call, conference, read; the held-out part (scored, never tuned on) under the
same keys with ``_heldout`` appended. :data:`SPEAKER_HOOKS` add speaker figures from the same
runs (each hook takes the dev runs and returns keys to merge).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.real_speakers import speaker_figures
from cloud_trainer.speech_revise import ReviseRule, SpeechReviser
from edge_agent.speech.pipeline import PipelineConfig, Utterance
from models.edge_asr import EdgeAsr
from models.speaker import SpeakerEncoder
from models.vad import SileroVad
from sim.real_speech import CATEGORIES, RealScenario, build_set, load_clips
from sim.scoring import wer
from topics.transcript import TranscriptSegment

__all__ = ["ScenarioRun", "SPEAKER_HOOKS", "run_scenario", "real_speech_figures", "main"]

SAMPLE_RATE = 16000


@dataclass
class ScenarioRun:
    """One scenario through the edge, and the DC's final text of each segment."""

    scenario: RealScenario
    segments: list[TranscriptSegment]
    utterances: list[Utterance]
    final_texts: list[str]
    revised: int = 0
    published: int = 0
    dc_seconds: float = 0.0


# Speaker figures (speaker_error_real, der_real_conference, ...) computed from the dev runs.
SPEAKER_HOOKS: list[Callable[[list[ScenarioRun]], dict[str, float]]] = []
SPEAKER_HOOKS.append(speaker_figures)  # bench.real_speakers: the runs' utterances through the leg rule


def _leg_clip(audio: np.ndarray, start_s: float, end_s: float, pad_s: float) -> tuple[np.ndarray, float, float]:
    """The leg's audio from ``start_s - pad_s`` to ``end_s + pad_s`` (as far as the leg goes),
    and how much padding it got at each end."""
    lo = max(0, int((start_s - pad_s) * SAMPLE_RATE))
    hi = min(len(audio), int((end_s + pad_s) * SAMPLE_RATE))
    return audio[lo:hi], start_s - lo / SAMPLE_RATE, hi / SAMPLE_RATE - end_s


def _live_revision(sc: RealScenario, seg: TranscriptSegment, utt: Utterance, reviser: SpeechReviser,
                   stream: str) -> str | None:
    """The DC's text of one segment sent as the running edge sends it (None: nothing published)."""
    from cloud_trainer.revise_service import revision_of
    from edge_agent.hard_examples import speech_pcm
    from topics.dc import HardExample

    pcm, lead_s, tail_s = speech_pcm(utt.samples, utt.lead, utt.tail, SAMPLE_RATE)
    ex = HardExample(device="bench", model="asr", model_version=utt.model.version, kind="audio",
                     seq=utt.utterance, item=0, encoding="pcm_s16le", data=pcm, result=utt.result.text,
                     confidences=(utt.result.confidence,), reasons=("threshold",), node="bench", captured_at_ms=0,
                     stream=stream, sample_rate=SAMPLE_RATE, lead_s=lead_s, tail_s=tail_s)
    rev = revision_of(ex, reviser)
    return None if rev is None else rev.text


def run_scenario(sc: RealScenario, vad: SileroVad, encoder: SpeakerEncoder, edge: EdgeAsr,
                 reviser: SpeechReviser | None, *, mine_below: float = 0.75, pad_s: float = 1.0,
                 seed: int = 7, config: PipelineConfig | None = None, live: bool = False) -> ScenarioRun:
    """The scenario through the edge, then the DC on its low-confidence segments (``live``: as
    the running system sends them, see the module doc)."""
    from bench.speech import run_conversation
    from sim.speech_corpus import telephone

    segs, _, utts = run_conversation(sc.conversation, vad, encoder, edge, loss=sc.loss, seed=seed,
                                     conversation=sc.name, config=config)
    run = ScenarioRun(sc, segs, utts, [s.text for s in segs])
    if reviser is None:
        return run
    by_key = {(u.leg, u.utterance): u for u in utts}
    # the DC's conversation context is per leg and per run (another seed's run is another conversation)
    conv_of = {leg: f"{sc.name}.{leg}" if seed == 7 else f"{sc.name}.s{seed}.{leg}" for leg in sc.conversation.legs}
    phone = {leg: telephone(a) for leg, a in sc.conversation.legs.items()}  # what the edge heard, less loss
    t0 = time.perf_counter()
    for i, seg in enumerate(segs):
        utt = by_key.get((seg.leg, seg.utterance))
        if utt is None or seg.confidence >= mine_below:
            continue
        run.revised += 1
        if live:
            text = _live_revision(sc, seg, utt, reviser, conv_of[seg.leg])
            if text is not None:
                run.published += 1
                run.final_texts[i] = text
            continue
        if pad_s > 0:
            clip, lead, tail = _leg_clip(phone[seg.leg], utt.start_s, utt.end_s, pad_s)
        else:
            clip, lead, tail = utt.samples, 0.0, 0.0
        rev = reviser.revise(conv_of[seg.leg], clip, utt.result, lead_s=lead, tail_s=tail)
        if rev.published:
            run.published += 1
            run.final_texts[i] = rev.result.text
    run.dc_seconds = time.perf_counter() - t0
    return run


def _leg_pairs(run: ScenarioRun, final: bool) -> list[tuple[str, str]]:
    conv = run.scenario.conversation
    texts = run.final_texts if final else [s.text for s in run.segments]
    pairs = []
    for leg in conv.legs:
        ref = " ".join(t.text for t in conv.turns if t.leg == leg)
        hyp = " ".join(txt for s, txt in sorted(zip(run.segments, texts, strict=True), key=lambda p: p[0].start_s)
                       if s.leg == leg)
        pairs.append((ref, hyp))
    return pairs


def _wer(runs: list[ScenarioRun], final: bool) -> float:
    pairs = [p for r in runs for p in _leg_pairs(r, final)]
    return round(wer([r for r, _ in pairs], [h for _, h in pairs]), 4) if pairs else float("nan")


def real_speech_figures(runs: list[ScenarioRun], suffix: str = "") -> dict[str, object]:
    """The WER keys of one split's runs (``suffix`` "" for dev, "_heldout")."""
    out: dict[str, object] = {
        f"wer_real_edge{suffix}": _wer(runs, False),
        f"wer_real_final{suffix}": _wer(runs, True),
    }
    for cat in CATEGORIES:
        sub = [r for r in runs if r.scenario.category == cat]
        out[f"wer_real_{cat}_edge{suffix}"] = _wer(sub, False)
        out[f"wer_real_{cat}_final{suffix}"] = _wer(sub, True)
    out[f"dc_real_sent{suffix}"] = sum(r.revised for r in runs)
    out[f"dc_real_published{suffix}"] = sum(r.published for r in runs)
    out[f"dc_real_seconds_per_segment{suffix}"] = round(sum(r.dc_seconds for r in runs)
                                                        / max(1, sum(r.revised for r in runs)), 3)
    return out


def evaluate(vad: SileroVad, encoder: SpeakerEncoder, edge: EdgeAsr, reviser: SpeechReviser | None, *,
             splits: tuple[str, ...] = ("dev", "heldout"), mine_below: float = 0.75, pad_s: float = 1.0,
             verbose: bool = False, config: PipelineConfig | None = None, live: bool = False,
             seeds: tuple[int, ...] = (7,)) -> dict[str, object]:
    """Real-speech figures of ``splits`` (dev first, then the held-out part) plus the speaker hooks.
    Each scenario runs once per packet-loss seed in ``seeds``; WER pools the runs of all seeds
    (one word is worth more than the noise of one seed's losses on this small set), the DC counts
    add up, the speaker hooks see the first seed's runs."""
    from common.settings import load_settings

    cache = load_settings().cache_dir
    clips = load_clips(cache)
    result: dict[str, object] = {}
    for split in splits:
        runs = [run_scenario(sc, vad, encoder, edge, reviser, mine_below=mine_below, pad_s=pad_s, config=config,
                             live=live, seed=seed)
                for seed in seeds for sc in build_set(split, cache, clips=clips)]
        if verbose:
            for r in runs:
                for (ref, hyp), (_, fin) in zip(_leg_pairs(r, False), _leg_pairs(r, True), strict=True):
                    print(json.dumps({"scenario": r.scenario.name, "ref": ref, "edge": hyp, "final": fin}),
                          file=sys.stderr)
        result.update(real_speech_figures(runs, "" if split == "dev" else "_" + split))
        if split == "dev":
            first = runs[:len(runs) // len(seeds)]
            for hook in SPEAKER_HOOKS:
                result.update(hook(first))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.real_speech", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--split", choices=["dev", "heldout", "both"], default="both")
    ap.add_argument("--final-model", default="whisper_base", choices=["whisper_tiny_en", "whisper_base"])
    ap.add_argument("--no-dc", action="store_true", help="edge figures only")
    ap.add_argument("--mine-below", type=float, default=0.75, help="segments below this confidence go to the DC")
    ap.add_argument("--pad-s", type=float, default=1.0, help="neighbouring audio the DC decodes with")
    ap.add_argument("--live", action="store_true",
                    help="the DC gets each segment's hard example as the running edge builds it (ignores --pad-s)")
    ap.add_argument("--example-context-s", type=float, default=None,
                    help="override the audio around an utterance its hard example carries (with --live)")
    ap.add_argument("--min-gain", type=float, default=ReviseRule().min_gain, help="the reviser's never-worse margin")
    ap.add_argument("--vad-threshold", type=float, default=None, help="override the VAD's start threshold")
    ap.add_argument("--vad-pad-s", type=float, default=None, help="override the VAD's speech padding")
    ap.add_argument("--vad-start-pad-s", type=float, default=None, help="override the VAD's padding before speech")
    ap.add_argument("--vad-neg-threshold", type=float, default=None, help="override the VAD's end threshold")
    ap.add_argument("--min-silence-s", type=float, default=None, help="override the silence that ends speech")
    ap.add_argument("--context-s", type=float, default=None, help="override the previous-turn context window")
    ap.add_argument("--merge-below-s", type=float, default=None, help="override: short utterances join the next")
    ap.add_argument("--seeds", default="7", help="packet-loss seeds, comma-separated: WER pools a run per seed")
    ap.add_argument("--merge-gap-s", type=float, default=None, help="override: how long a short utterance waits")
    ap.add_argument("--asr-threads", type=int, default=2)
    ap.add_argument("--verbose", action="store_true", help="each leg's reference, edge and final text (stderr)")
    args = ap.parse_args(argv)

    import torch

    from common.settings import load_settings
    from models.edge_asr import load_edge_asr, load_whisper

    torch.set_num_threads(1)
    cache = load_settings().cache_dir
    vad, encoder = SileroVad(), SpeakerEncoder("cpu")
    edge = load_edge_asr(cache, args.final_model, None, device="cpu", cpu_threads=args.asr_threads)
    reviser = None
    if not args.no_dc:
        reviser = SpeechReviser([load_whisper(cache, "whisper_base", device="cpu", cpu_threads=args.asr_threads),
                                 load_whisper(cache, "whisper_tiny_en", device="cpu", cpu_threads=args.asr_threads)],
                                rule=ReviseRule(min_gain=args.min_gain))
    splits = ("dev", "heldout") if args.split == "both" else (args.split,)
    config = PipelineConfig()
    vad_over = {k: v for k, v in (("threshold", args.vad_threshold), ("speech_pad_s", args.vad_pad_s),
                                  ("min_silence_s", args.min_silence_s), ("start_pad_s", args.vad_start_pad_s),
                                  ("neg_threshold", args.vad_neg_threshold)) if v is not None}
    if vad_over:
        config = config.model_copy(update={"vad": config.vad.model_copy(update=vad_over)})
    if args.context_s is not None:
        config = config.model_copy(update={"context_s": args.context_s})
    if args.merge_below_s is not None:
        config = config.model_copy(update={"merge_below_s": args.merge_below_s})
    if args.merge_gap_s is not None:
        config = config.model_copy(update={"merge_gap_s": args.merge_gap_s})
    if args.example_context_s is not None:
        config = config.model_copy(update={"example_context_s": args.example_context_s})
    try:
        result = evaluate(vad, encoder, edge, reviser, splits=splits, mine_below=args.mine_below,
                          pad_s=args.pad_s, verbose=args.verbose, config=config, live=args.live,
                          seeds=tuple(int(x) for x in args.seeds.split(",")))
    finally:
        edge.close()
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
