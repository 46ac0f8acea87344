"""``edge-offload``: one console script, one subcommand per part."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from edge_offload.settings import load_settings

__all__ = ["main"]


def _fetch_models(args: argparse.Namespace) -> int:
    from models.artifacts import fetch_all

    settings = load_settings()
    for folder in fetch_all(settings.cache_dir):
        print(f"ok {folder}")
    return 0


def _edge(args: argparse.Namespace) -> int:
    from edge_agent.app import EdgeNode

    settings = load_settings()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await EdgeNode(settings).run(stop)

    asyncio.run(run())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from edge_offload.demo import run_demo

    summary = asyncio.run(run_demo(load_settings(), seconds=args.seconds, fps=args.fps))
    print(summary.as_json(), flush=True)
    return 0


def _device(args: argparse.Namespace) -> int:
    if args.kind == "camera":
        from devices.camera import main as camera_main

        return camera_main(args.rest)
    from devices.audio import main as audio_main

    return audio_main(args.rest)


def _tail(args: argparse.Namespace) -> int:
    from edge_offload.tail import main as tail_main

    return tail_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-offload", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch-models", help="download and sha256-check the pinned model artifacts")
    p.set_defaults(func=_fetch_models)
    p = sub.add_parser("edge", help="run the edge agent: vision + speech (settings from EDGE_OFFLOAD_* / EDGE_OFFLOAD_CONFIG)")
    p.set_defaults(func=_edge)
    p = sub.add_parser("demo", help="run the whole pipeline locally and print a JSON summary")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--fps", type=float, default=10.0)
    p.set_defaults(func=_demo)
    p = sub.add_parser("device", help="device simulators: camera | audio (see `device KIND --help`)",
                       add_help=False)
    p.add_argument("kind", choices=("camera", "audio"))
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_device)
    p = sub.add_parser("tail", help="follow result topics (see `tail --help`)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_tail)
    from cloud_trainer.cli import add_trainer_commands

    add_trainer_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
