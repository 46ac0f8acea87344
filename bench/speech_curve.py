"""The speech engine's degradation curve: ``python -m bench.speech_curve --json``.

Runs ``bench.speech``'s capacity trial (N legs of the held-out call paced in real time through
:class:`~edge_agent.speech.service.SpeechEngine`) at every N of ``--legs`` without stopping at
the first failure, and prints per N: partial and final latency p95, backlog, partials thinned,
legs refused and ``ok`` (the trial kept up: ``bench.speech.trial_ok``); see
``edge_agent.speech.governor`` for the order things are given up in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bench.heldout_speech import HELDOUT, PIPER, build_heldout_call
from bench.speech import capacity_trial, trial_ok
from common.settings import SpeechServiceConfig, load_settings
from common.speech_settings import PipelineConfig
from models.edge_asr import load_edge_asr
from models.speaker import SpeakerEncoder
from models.vad import SileroVad

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.speech_curve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ap.add_argument("--legs", default="2,4,8,12,16", help="comma-separated leg counts")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each trial")
    ap.add_argument("--threads", type=int, default=8, help="speech worker threads")
    service = SpeechServiceConfig()
    ap.add_argument("--asr-threads", type=int, default=service.asr_threads, help="CPU threads of one Whisper call")
    ap.add_argument("--asr-parallel", type=int, default=service.asr_parallel,
                    help="Whisper calls each model runs at once")
    ap.add_argument("--final-model", default="whisper_base", choices=["whisper_tiny_en", "whisper_base"])
    ap.add_argument("--partial-model", default="whisper_tiny_en", choices=["whisper_tiny_en", "whisper_base"])
    ap.add_argument("--call", choices=["synthetic", "real"], default="synthetic",
                    help="synthetic: the held-out Piper call (default); real: the first real two-party call of "
                         "the real-speech dev set (sim.real_speech), with its short turns")
    ap.add_argument("--partial-every-s", type=float, default=None,
                    help="speech between partials (default: the pipeline's setting)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    cache = load_settings().cache_dir
    vad, encoder = SileroVad(), SpeakerEncoder("cpu")
    edge = load_edge_asr(cache, args.final_model, args.partial_model, device="cpu", cpu_threads=args.asr_threads,
                         parallel=args.asr_parallel)
    if args.call == "real":
        from sim.real_speech import build_set

        held = next(s.conversation for s in build_set("dev", cache) if s.category == "call")
    else:
        held = build_heldout_call(HELDOUT, (PIPER, PIPER), snr_db=10.0, noise="background")
    pipeline = PipelineConfig()
    if args.partial_every_s is not None:
        pipeline = pipeline.model_copy(update={"partial_every_s": args.partial_every_s})
    curve = []
    for n in (int(x) for x in args.legs.split(",")):
        trial = capacity_trial(n, args.seconds, held, vad, encoder, edge, args.threads, pipeline)
        trial["ok"] = trial_ok(trial)
        curve.append(trial)
        if not args.json:
            print(json.dumps(trial), file=sys.stderr)
    result = {"curve": curve, "asr_final": args.final_model, "asr_partial": args.partial_model,
              "partial_every_s": pipeline.partial_every_s, "asr_threads": args.asr_threads,
              "asr_parallel": args.asr_parallel, "worker_threads": args.threads,
              "trial_seconds": args.seconds, "call": args.call, "cpus": os.cpu_count(),
              "loadavg_1m": round(os.getloadavg()[0], 2)}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    edge.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
