"""Per-stage CPU cost of the edge speech path: ``python -m bench.speech_cost --json``.

Runs the held-out two-party call (Piper voices, 10 dB background noise, G.711, 2 % loss)
through the same synchronous per-leg pipeline the service runs (``bench.speech.run_conversation``:
RTP -> jitter buffer -> G.711 -> resample -> Silero VAD -> Whisper partials and finals ->
speaker embedding and clustering) under :mod:`cProfile` with a **process CPU** timer, in one
Python thread. Whisper's own native threads run while the calling thread waits for them, so
their CPU lands on the stage that called them; nothing else runs in this process meanwhile.

Each stage is the cumulative CPU of its entry points (see ``STAGES``), in CPU-ms per second of
leg audio (``cpu_ms_per_leg_s``). ``publish`` is the contract encoding of every partial and
segment (msgpack), the part of an MQTT publish this process pays besides the socket write.
``other`` is the rest of the run (RTP parsing, tracker, Python glue). The profiler's own overhead
is in the table (``profiled_cpu_ms_per_leg_s``); ``total_cpu_ms_per_leg_s`` is a run without it.
CPU time is counted, not wall time, so a busy machine inflates it less than latency figures, but shared caches and
hyper-threads still do: say what else ran when you quote it.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time

from bench.heldout_speech import HELDOUT, PIPER, build_heldout_call
from bench.speech import run_conversation
from common.settings import SpeechServiceConfig, load_settings
from common.speech_settings import PipelineConfig
from models.edge_asr import load_edge_asr
from models.speaker import SpeakerEncoder
from models.vad import SileroVad
from topics.transcript import encode_segment

__all__ = ["STAGES", "stage_costs", "main"]

# stage -> entry points (file suffix, function name); a stage's cost is the sum of their
# cumulative times (entry points of one stage never call each other).
STAGES: dict[str, tuple[tuple[str, str], ...]] = {
    "jitter_g711_resample": (("speech/stream.py", "push"), ("speech/stream.py", "flush")),
    "vad": (("models/vad.py", "push"), ("models/vad.py", "end"), ("models/vad.py", "skip")),
    "partial_asr": (("models/edge_asr.py", "decode_partial"),),
    "final_asr": (("models/edge_asr.py", "decode_final"),),
    "embedding_clustering": (("speech/diarize.py", "label"),),
}


def stage_costs(stats: pstats.Stats) -> dict[str, float]:
    """Seconds of cumulative time per stage of :data:`STAGES` in a profile."""
    table = stats.stats  # type: ignore[attr-defined]
    out = dict.fromkeys(STAGES, 0.0)
    for (filename, _line, func), (_cc, _nc, _tt, ct, _callers) in table.items():
        for stage, entries in STAGES.items():
            if any(filename.endswith(suffix) and func == name for suffix, name in entries):
                out[stage] += ct
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.speech_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--sentences", type=int, default=16, help="held-out sentences in the call")
    ap.add_argument("--asr-threads", type=int, default=SpeechServiceConfig().asr_threads,
                    help="CPU threads of one Whisper call")
    ap.add_argument("--final-model", default="whisper_base", choices=["whisper_tiny_en", "whisper_base"])
    ap.add_argument("--partial-model", default="whisper_tiny_en", choices=["whisper_tiny_en", "whisper_base"])
    ap.add_argument("--partial-every-s", type=float, default=None,
                    help="speech between partials (default: the pipeline's setting)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    cache = load_settings().cache_dir
    vad = SileroVad()
    encoder = SpeakerEncoder("cpu")
    edge = load_edge_asr(cache, args.final_model, args.partial_model, device="cpu", cpu_threads=args.asr_threads)
    pipeline = PipelineConfig()
    if args.partial_every_s is not None:
        pipeline = pipeline.model_copy(update={"partial_every_s": args.partial_every_s})
    call = build_heldout_call(HELDOUT[:args.sentences], (PIPER, PIPER), snr_db=10.0, noise="background")
    run_conversation(call, vad, encoder, edge, loss=0.02, seed=3, config=pipeline)  # warm-up: first calls pay lazy init
    # without the profiler:
    _, plain_cpu_s, _ = run_conversation(call, vad, encoder, edge, loss=0.02, seed=3, config=pipeline)
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    segments, cpu_s, _ = run_conversation(call, vad, encoder, edge, loss=0.02, seed=3, config=pipeline)
    profile.disable()
    t0 = time.process_time()
    # What one publish of each output costs in this process: the contract encoding.
    for seg in segments:
        encode_segment(seg)
    publish_s = time.process_time() - t0
    stages = stage_costs(pstats.Stats(profile))
    stages["publish"] = publish_s
    leg_s = call.duration_s * len(call.legs)
    stages["other"] = max(0.0, cpu_s - sum(stages.values()))
    table = {k: round(1000 * v / leg_s, 2) for k, v in stages.items()}
    result = {
        "cpu_ms_per_leg_s": table,
        "total_cpu_ms_per_leg_s": round(1000 * plain_cpu_s / leg_s, 2),
        "profiled_cpu_ms_per_leg_s": round(1000 * cpu_s / leg_s, 2),
        "legs_per_core_bound": round(leg_s / max(1e-9, plain_cpu_s), 2),
        "leg_seconds": round(leg_s, 1),
        "segments": len(segments),
        "asr_final": args.final_model,
        "asr_partial": args.partial_model,
        "asr_threads": args.asr_threads,
        "partial_every_s": pipeline.partial_every_s,
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    edge.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
