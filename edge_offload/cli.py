"""``edge-offload``: one console script, one subcommand per part."""

from __future__ import annotations

import argparse
import sys

from edge_offload.settings import load_settings

__all__ = ["main"]


def _fetch_models(args: argparse.Namespace) -> int:
    from models.artifacts import fetch_all

    settings = load_settings()
    for folder in fetch_all(settings.cache_dir):
        print(f"ok {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-offload", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch-models", help="download and sha256-check the pinned model artifacts")
    p.set_defaults(func=_fetch_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
