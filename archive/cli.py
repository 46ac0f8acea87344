"""Subcommands ``archive``, ``search``, ``audit``, ``operator`` and ``console`` of ``edge-offload``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import signal
import sys
from typing import Any

from archive.store import ALL, Access, SearchQuery, open_store
from common.settings import load_settings

__all__ = ["add_archive_commands", "parse_time_ms", "hash_password", "verify_password"]


def hash_password(password: str) -> str:
    """An argon2id hash (argon2-cffi defaults, RFC 9106 low-memory profile)."""
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return PasswordHasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def parse_time_ms(text: str) -> int:
    """An ISO 8601 time (``2026-12-06T20:00``, UTC unless it names a zone) or epoch ms -> epoch ms."""
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time or epoch ms") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def _store_url(args: argparse.Namespace) -> str:
    return args.store or load_settings().archive.store_url


def _who(args: argparse.Namespace) -> str:
    return getattr(args, "operator", None) or f"cli:{getpass.getuser()}"


def _archive(args: argparse.Namespace) -> int:
    from archive.service import ArchiveService
    from edge_agent.health import HealthServer

    settings = load_settings()
    service = ArchiveService(settings, store_url=_store_url(args))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        health = HealthServer("0.0.0.0", settings.archive.http_port, service.registry, service.ready.is_set)
        await health.start()
        print(f"archive: health and metrics on port {health.port}", flush=True)  # signals are handled from here
        try:
            await service.run(stop)
        finally:
            await health.stop()

    asyncio.run(run())
    return 0


def _search(args: argparse.Namespace) -> int:
    with open_store(_store_url(args)) as store:
        access: Access = ALL
        if args.operator is not None:
            op = store.operator(args.operator)
            if op is None:
                print(f"edge-offload search: error: no operator {args.operator!r}", file=sys.stderr)
                return 1
            access = op.access
        q = SearchQuery(text=" ".join(args.words), conversation=args.conversation, speaker=args.speaker,
                        device=args.device, case_id=args.case, since_ms=args.since, until_ms=args.until,
                        all_revisions=args.all_revisions, limit=args.limit)
        rows = store.search(q, access)
        store.audit(_who(args), "search", target=q.text, remote="cli",
                    detail=json.dumps({k: v for k, v in vars(args).items() if k in (
                        "conversation", "speaker", "device", "case", "since", "until") and v is not None}
                                      | {"hits": len(rows)}))
    for row in rows:
        if args.json:
            print(json.dumps(row.as_dict(), separators=(",", ":")), flush=False)
        else:
            at = dt.datetime.fromtimestamp(row.at_ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            print(f"{at} {row.case_id or '-'} {row.conversation}/{row.leg}#{row.utterance} r{row.revision} "
                  f"{row.speaker}: {row.text}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    with open_store(_store_url(args)) as store:
        rows = list(store.audit_log(since_ms=args.since, operator=args.operator))
    for row in rows:
        if args.json:
            print(json.dumps(row.as_dict(), separators=(",", ":")))
        else:
            at = dt.datetime.fromtimestamp(row.at_ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            print(f"{at} {row.operator} {row.action} {row.target!r} from {row.remote} {row.detail}")
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise ValueError("the passwords differ")
    if len(password) < 8:
        raise ValueError("a password needs 8 characters or more")
    return password


def _operator_add(args: argparse.Namespace) -> int:
    from topics.names import check_id

    for case in args.case:
        check_id(case, "case")
    check_id(args.name, "operator name")
    if args.role == "operator" and not args.case:
        print("edge-offload operator add: error: an operator needs --case (or --role admin)", file=sys.stderr)
        return 2
    password_hash = hash_password(_read_password(args))
    with open_store(_store_url(args)) as store:
        store.add_operator(args.name, password_hash, args.role, args.case)
        store.audit(f"cli:{getpass.getuser()}", "operator_add", target=args.name, remote="cli",
                    detail=json.dumps({"role": args.role, "cases": sorted(args.case)}))
    print(f"ok operator {args.name} ({args.role}; cases: {', '.join(sorted(args.case)) or 'all'})")
    return 0


def _console(args: argparse.Namespace) -> int:
    from archive.console import serve_console

    settings = load_settings()
    serve_console(settings, store_url=_store_url(args), host=args.host or settings.archive.console_host,
                  port=args.port if args.port is not None else settings.archive.console_port)
    return 0


def add_archive_commands(sub: Any) -> None:
    """Add the store's subcommands to the ``edge-offload`` parser."""
    store_help = "results store URL: sqlite:///PATH or postgresql://... (default: archive.store_url)"
    p = sub.add_parser("archive", help="store every vision result, transcript segment and status from MQTT "
                       "(persistent session, QoS 1)")
    p.add_argument("--store", help=store_help)
    p.set_defaults(func=_archive)

    p = sub.add_parser("search", help="full-text search over stored transcripts")
    p.add_argument("words", nargs="*", help="words that must all occur (none: every segment)")
    p.add_argument("--store", help=store_help)
    p.add_argument("--conversation")
    p.add_argument("--speaker")
    p.add_argument("--device")
    p.add_argument("--case", help="case (warrant) id")
    p.add_argument("--since", type=parse_time_ms, help="stored at or after (ISO 8601, UTC, or epoch ms)")
    p.add_argument("--until", type=parse_time_ms, help="stored before (ISO 8601, UTC, or epoch ms)")
    p.add_argument("--all-revisions", action="store_true", help="every revision, not only the latest")
    p.add_argument("--operator", help="search as this operator: only the cases assigned to them")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_search)

    p = sub.add_parser("audit", help="export the append-only audit log (view, search, label, login)")
    p.add_argument("--store", help=store_help)
    p.add_argument("--since", type=parse_time_ms)
    p.add_argument("--operator")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_audit)

    p = sub.add_parser("operator", help="`operator add NAME --case C`: console accounts (argon2 hashed)")
    osub = p.add_subparsers(dest="operator_command", required=True)
    p = osub.add_parser("add", help="create or replace an account and its case assignments")
    p.add_argument("name")
    p.add_argument("--case", action="append", default=[], help="case id the operator may see (repeatable)")
    p.add_argument("--role", choices=("operator", "admin"), default="operator",
                   help="admin: every case (and the fleet view)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    p.add_argument("--store", help=store_help)
    p.set_defaults(func=_operator_add)

    p = sub.add_parser("console", help="the operator web console (conversations, cameras, fleet, search)")
    p.add_argument("--store", help=store_help)
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=_console)
