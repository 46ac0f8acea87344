"""The hashed lock files that `make` and the image install from: every package pinned with its
sha256 hashes, every dependency of pyproject.toml satisfied, torch left to its own install step."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, sha256 hashes) of a pip-compile --generate-hashes file."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)\s*$", line)
        assert match, f"{path.name}: not a hashed pin: {line[:80]}"
        out[canonicalize_name(match.group(1))] = (match.group(2), re.findall(r"[0-9a-f]{64}", match.group(3)))
    return out


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize(("lock", "extras"), [("requirements.lock", []), ("requirements-test.lock", ["test"])])
def test_lock_pins_every_dependency_with_hashes(lock: str, extras: list[str]) -> None:
    pins = parse_lock(ROOT / lock)
    assert all(hashes for _, hashes in pins.values())
    assert "torch" not in pins  # installed alone: the CPU wheel (make) or the CPU/CUDA index (image)
    assert not any(name.startswith("nvidia-") or name == "triton" for name in pins)  # no CUDA stack via torch
    project = _pyproject()
    wanted = list(project["dependencies"]) + [d for e in extras for d in project["optional-dependencies"][e]]
    for spec in wanted:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pins, f"{lock}: {req.name} is not locked"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"{lock}: {req.name}=={pins[name][0]}"


def test_test_lock_agrees_with_the_runtime_lock() -> None:
    runtime, test = parse_lock(ROOT / "requirements.lock"), parse_lock(ROOT / "requirements-test.lock")
    assert runtime.keys() <= test.keys()
    assert {n: runtime[n][0] for n in runtime} == {n: test[n][0] for n in runtime}  # the image runs what CI tests


def test_make_and_the_image_install_from_the_locks() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q --require-hashes -r $(TESTLOCK)" in makefile
    assert "pip install -q --no-deps -e ." in makefile and "TESTLOCK := requirements-test.lock" in makefile
    assert "torch==2.13.0" in makefile  # the CPU wheel, before the lock
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    assert "pip install --require-hashes -r requirements.lock" in dockerfile
    assert "!requirements.lock" in (ROOT / ".dockerignore").read_text().splitlines()
