"""``--record``: write a bench's JSON figures to a dated page under ``docs/benchmarks/``.

A figure means little without the machine it ran on and what else ran there, so every record
states the command, the CPU model and cores, the GPUs (if any), the load average before and
after the run, and the git commit. Usage in a bench's ``main``::

    add_record_flag(parser)
    args = parser.parse_args(argv)
    run = start("bench.vision", argv) if args.record else None
    ...
    if run:
        finish(run, figures, args.record)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["RESULTS_DIR", "Machine", "Run", "add_record_flag", "finish", "machine", "start"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "docs" / "benchmarks"
INDEX = "README.md"
_INDEX_HEADER = "| date | bench | machine | file |"


@dataclass(frozen=True)
class Machine:
    """What a figure was measured on."""

    cpu_model: str
    cores: int
    gpus: tuple[str, ...]
    system: str

    def summary(self) -> str:
        gpus = ", ".join(self.gpus) if self.gpus else "no GPU"
        return f"{self.cpu_model}, {self.cores} cores, {gpus}"


@dataclass
class Run:
    """A bench run being recorded: its command and the machine's state when it began."""

    bench: str
    argv: list[str]
    started: datetime
    load_before: tuple[float, float, float]
    machine: Machine = field(default_factory=lambda: machine())


def add_record_flag(parser: argparse.ArgumentParser) -> None:
    """``--record [DIR]``: also write the figures to a dated page in DIR (default docs/benchmarks)."""
    parser.add_argument("--record", nargs="?", type=Path, const=RESULTS_DIR, default=None, metavar="DIR",
                        help=f"also write the figures, machine and load to DIR/<date>-<bench>.md "
                             f"(default DIR: {RESULTS_DIR.relative_to(ROOT)})")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _gpus() -> tuple[str, ...]:
    """GPU names from ``nvidia-smi``; none when it is absent or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def machine() -> Machine:
    """The machine this process runs on."""
    return Machine(cpu_model=_cpu_model(), cores=os.cpu_count() or 0, gpus=_gpus(),
                   system=f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def _load() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{sha} (uncommitted changes)" if dirty else sha


def start(bench: str, argv: list[str] | None = None) -> Run:
    """Note the command, the time and the load average before the bench runs."""
    return Run(bench=bench, argv=list(sys.argv[1:] if argv is None else argv), started=datetime.now(UTC),
               load_before=_load())


def _free_path(directory: Path, date: str, name: str) -> Path:
    path = directory / f"{date}-{name}.md"
    n = 2
    while path.exists():
        path = directory / f"{date}-{name}-{n}.md"
        n += 1
    return path


def _loads(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def render(run: Run, figures: Mapping[str, Any], ended: datetime, load_after: tuple[float, float, float],
           commit: str) -> str:
    """The Markdown page of one recorded run."""
    m = run.machine
    command = shlex.join(["python", "-m", run.bench, *run.argv])
    return (
        f"# {run.bench}, {run.started:%Y-%m-%d}\n\n"
        f"Written by the bench itself (`--record`, bench/record.py).\n\n"
        f"- **Command:** `{command}`\n"
        f"- **Commit:** {commit}\n"
        f"- **Run:** {run.started:%Y-%m-%d %H:%M:%S} to {ended:%H:%M:%S} UTC\n"
        f"- **Machine:** {m.summary()}; {m.system}\n"
        f"- **Load average (1 / 5 / 15 min):** {_loads(run.load_before)} before, {_loads(load_after)} after "
        f"(the bench itself included in the after figure)\n\n"
        f"## Figures\n\n```json\n{json.dumps(figures, indent=2, default=str)}\n```\n"
    )


def _add_to_index(directory: Path, run: Run, page: Path) -> None:
    """Add the page to the results table of ``DIR/README.md`` (newest first), if the folder has one."""
    index = directory / INDEX
    if not index.is_file():
        return
    lines = index.read_text().splitlines()
    try:
        at = lines.index(_INDEX_HEADER) + 2  # below the header and its |---| row
    except ValueError:
        return
    row = f"| {run.started:%Y-%m-%d} | {run.bench} | {run.machine.summary()} | [{page.name}]({page.name}) |"
    lines.insert(at, row)
    index.write_text("\n".join(lines) + "\n")


def finish(run: Run, figures: Mapping[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """Write the dated page for ``run`` into ``directory`` (and its index); return the page's path."""
    load_after = _load()
    ended = datetime.now(UTC)
    directory.mkdir(parents=True, exist_ok=True)
    page = _free_path(directory, f"{run.started:%Y-%m-%d}", run.bench.removeprefix("bench."))
    page.write_text(render(run, figures, ended, load_after, _commit()))
    _add_to_index(directory, run, page)
    print(f"recorded {page}", file=sys.stderr)
    return page
