"""Speaker labels on real recordings (:mod:`sim.real_speech`): ``python -m bench.real_speakers --json``.

Each scenario goes through the per-leg pipeline the service runs (``bench.speech.run_conversation``:
RTP G.711 mu-law packets with the scenario's loss -> jitter buffer -> VAD -> Whisper); its finished
utterances are then labelled by a :class:`~edge_agent.speech.diarize.Diarizer` in the order they
finished, as the conversation tracker does, with a conference scenario's leg marked shared (as an
operator flags a bridge leg). Keys (the held-out part with ``_heldout`` appended; scored, never
tuned on):

- ``speaker_error_real``: two-leg calls; the fraction of segments whose label is not their party's
  under the best one-to-one mapping of labels to parties (:func:`sim.scoring.speaker_error`); a
  segment's party is the reference speaker talking longest within it on its leg.
- ``der_real_conference``: conference legs; diarization error rate (:func:`sim.scoring.der`,
  collar 0.25 s), pooled over the legs by reference speech.
- ``speakers_real_call`` / ``speakers_real_conference``: labels given against speakers present.

:func:`speaker_figures` takes runs of ``bench.real_speech`` (anything with ``scenario`` and
``utterances``), so ``bench.real_speech`` can call it as one of its ``SPEAKER_HOOKS``.

``--calibrate``: the similarity distributions the diarizer's thresholds were set from (dev part
only): every reference turn of the dev scenarios (each recording once), cut from its leg and sent through G.711
mu-law, embedded; cosine similarity of turn pairs of the same speaker and of different
speakers, and of each turn to the centroid of its speaker's other turns and to the centroids of
the other speakers (the running centroid is what the diarizer compares with). A text table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.speech_settings import DiarizerConfig
from edge_agent.speech.diarize import Diarizer
from edge_agent.speech.pipeline import Utterance
from models.speaker import SpeakerEncoder
from sim.real_speech import RealScenario
from sim.scoring import der, segment_parties, speaker_error

__all__ = ["LabelledRun", "label_run", "speaker_figures", "main"]


class _Run(Protocol):
    scenario: RealScenario
    utterances: list[Utterance]


@dataclass(frozen=True)
class LabelledRun:
    """A scenario's segments as ``(leg, speaker, start_s, end_s)`` on the conversation clock."""

    scenario: RealScenario
    turns: list[tuple[str, str, float, float]]


def label_run(scenario: RealScenario, utterances: Iterable[Utterance], encoder: SpeakerEncoder,
              config: DiarizerConfig | None = None) -> LabelledRun:
    """Label ``utterances`` (leg clock = conversation clock: every leg starts at 0) in the order
    they finished; a conference scenario's legs are marked shared."""
    diarizer = Diarizer(encoder, config)
    if scenario.category == "conference":
        for leg in scenario.conversation.legs:
            diarizer.mark_shared(leg)
    turns = []
    for utt in sorted(utterances, key=lambda u: (u.end_s, u.leg)):
        for t in diarizer.label(utt.leg, utt.samples, utt.start_s):
            turns.append((utt.leg, t.speaker, t.start_s, t.end_s))
    return LabelledRun(scenario, turns)


def _call_pairs(run: LabelledRun) -> list[tuple[str, str]]:
    ref = [(t.speaker, t.leg, t.start_s, t.end_s) for t in run.scenario.conversation.turns]
    parties = segment_parties(ref, [(leg, a, b) for leg, _, a, b in run.turns])
    name = run.scenario.name
    return [(f"{name}:{p}", f"{name}:{s}") for p, (_, s, _, _) in zip(parties, run.turns) if p is not None]


def _conference_der(runs: Sequence[LabelledRun]) -> float:
    total, weight = 0.0, 0.0
    for run in runs:
        ref = [(t.speaker, t.start_s, t.end_s) for t in run.scenario.conversation.turns]
        speech = sum(b - a for _, a, b in ref)
        total += der(ref, [(s, a, b) for _, s, a, b in run.turns]) * speech
        weight += speech
    return total / weight if weight else float("nan")


def figures(runs: Sequence[LabelledRun], suffix: str = "") -> dict[str, float]:
    """The speaker keys of one split's labelled runs (``suffix`` "" for dev, "_heldout")."""
    calls = [r for r in runs if r.scenario.category == "call"]
    confs = [r for r in runs if r.scenario.category == "conference"]
    out: dict[str, float] = {}
    if calls:
        out[f"speaker_error_real{suffix}"] = round(speaker_error([p for r in calls for p in _call_pairs(r)]), 4)
        out[f"speakers_real_call{suffix}"] = float(sum(len({s for _, s, _, _ in r.turns}) for r in calls))
        out[f"speakers_real_call_present{suffix}"] = float(
            sum(len({t.speaker for t in r.scenario.conversation.turns}) for r in calls))
    if confs:
        out[f"der_real_conference{suffix}"] = round(_conference_der(confs), 4)
        out[f"speakers_real_conference{suffix}"] = float(sum(len({s for _, s, _, _ in r.turns}) for r in confs))
        out[f"speakers_real_conference_present{suffix}"] = float(
            sum(len({t.speaker for t in r.scenario.conversation.turns}) for r in confs))
    return out


def speaker_figures(runs: Sequence[_Run], *, encoder: SpeakerEncoder | None = None,
                    config: DiarizerConfig | None = None, suffix: str = "") -> dict[str, float]:
    """Speaker keys of pipeline runs (a ``SPEAKER_HOOKS`` entry of ``bench.real_speech``)."""
    encoder = encoder or SpeakerEncoder("cpu")
    return figures([label_run(r.scenario, r.utterances, encoder, config) for r in runs], suffix)


def similarity_distributions(scenarios: Sequence[RealScenario], encoder: SpeakerEncoder, *,
                             min_s: float = 1.0) -> dict[str, list[float]]:
    """Same- and different-speaker cosine similarities of the scenarios' reference turns
    (at least ``min_s`` long) through G.711: pairwise, and turn vs. speaker centroid."""
    from sim.speech_corpus import telephone

    rate = 16000
    embs: list[np.ndarray] = []
    who: list[str] = []
    seen: set[tuple[str, str]] = set()  # a recording used in several scenarios counts once
    for sc in scenarios:
        for t in sc.conversation.turns:
            if t.end_s - t.start_s < min_s or (t.speaker, t.text) in seen:
                continue
            seen.add((t.speaker, t.text))
            leg = sc.conversation.legs[t.leg]
            clip = leg[max(0, int((t.start_s - 0.1) * rate)):int((t.end_s + 0.1) * rate)]
            e = encoder.embed(telephone(clip))
            embs.append(e / (np.linalg.norm(e) + 1e-12))
            who.append(t.speaker)
    out: dict[str, list[float]] = {"pair_same": [], "pair_diff": [], "centroid_same": [], "centroid_diff": []}
    for i, j in itertools.combinations(range(len(embs)), 2):
        out["pair_same" if who[i] == who[j] else "pair_diff"].append(float(embs[i] @ embs[j]))
    for i, e in enumerate(embs):
        for spk in sorted(set(who)):
            rest = [embs[k] for k in range(len(embs)) if who[k] == spk and k != i]
            if rest:
                c = np.sum(rest, axis=0)
                out["centroid_same" if spk == who[i] else "centroid_diff"].append(
                    float(e @ c / (np.linalg.norm(c) + 1e-12)))
    return out


def histogram_table(dist: dict[str, list[float]], lo: float = 0.3, step: float = 0.05) -> str:
    """The distributions as a Markdown table: counts per similarity bin, then percentiles."""
    keys = list(dist)
    edges = np.round(np.arange(lo, 1.0 + 1e-9, step), 2)
    rows = ["| similarity | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    below = [sum(1 for v in dist[k] if v < lo) for k in keys]
    rows.append(f"| < {lo:.2f} | " + " | ".join(str(n) for n in below) + " |")
    for a in edges[:-1]:
        counts = [sum(1 for v in dist[k] if a <= v < a + step) for k in keys]
        bars = [f"{n} {'#' * n}" if n <= 40 else f"{n} {'#' * 40}+" for n in counts]
        rows.append(f"| {a:.2f}-{a + step:.2f} | " + " | ".join(bars) + " |")
    for q in (0, 5, 50, 95, 100):
        vals = [f"{np.percentile(dist[k], q):.2f}" if dist[k] else "-" for k in keys]
        rows.append(f"| p{q} | " + " | ".join(vals) + " |")
    rows.append("| n | " + " | ".join(str(len(dist[k])) for k in keys) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.real_speakers", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--split", choices=["dev", "heldout", "both"], default="both")
    ap.add_argument("--final-model", default="whisper_tiny_en", choices=["whisper_tiny_en", "whisper_base"],
                    help="the edge's final model (it only decides which utterances have words)")
    ap.add_argument("--verbose", action="store_true", help="each segment's party and label (stderr)")
    ap.add_argument("--calibrate", action="store_true",
                    help="print the dev part's same/different-speaker similarity table instead")
    args = ap.parse_args(argv)

    import torch

    from bench.speech import run_conversation
    from common.settings import load_settings
    from models.edge_asr import load_edge_asr
    from models.vad import SileroVad
    from sim.real_speech import RealSpeechError, build_set, load_clips

    torch.set_num_threads(1)
    cache = load_settings().cache_dir
    try:
        clips = load_clips(cache)
    except RealSpeechError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.calibrate:
        dist = similarity_distributions(build_set("dev", cache, clips=clips), SpeakerEncoder("cpu"))
        print(json.dumps({k: [round(v, 4) for v in vs] for k, vs in dist.items()}) if args.json
              else histogram_table(dist))
        return 0
    vad, encoder = SileroVad(), SpeakerEncoder("cpu")
    edge = load_edge_asr(cache, args.final_model, None, device="cpu", cpu_threads=2)
    result: dict[str, float] = {}
    try:
        for split in ("dev", "heldout") if args.split == "both" else (args.split,):
            labelled = []
            for sc in build_set(split, cache, clips=clips):
                _, _, utts = run_conversation(sc.conversation, vad, encoder, edge, loss=sc.loss, seed=7,
                                              conversation=sc.name)
                labelled.append(label_run(sc, utts, encoder))
                if args.verbose:
                    run = labelled[-1]
                    ref = [(t.speaker, t.leg, t.start_s, t.end_s) for t in sc.conversation.turns]
                    parties = segment_parties(ref, [(leg, a, b) for leg, _, a, b in run.turns])
                    for p, (leg, s, a, b) in zip(parties, run.turns):
                        print(json.dumps({"scenario": sc.name, "leg": leg, "start_s": round(a, 2),
                                          "end_s": round(b, 2), "party": p, "label": s}), file=sys.stderr)
            result.update(figures(labelled, "" if split == "dev" else "_" + split))
    finally:
        edge.close()
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
