"""The ASR language model as a registry artifact.

A msgpack map: ``manifest`` (vocabulary size, out-of-vocabulary words and where their
pronunciations came from) and ``files`` holding ``domain.arpa`` and ``domain.dict``; the
generic artifact has no files and stands for PocketSphinx's bundled en-us LM. Only these
two fixed file names are ever written, so an artifact cannot place files elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack

from models.asr import AsrModel, DomainLm
from topics.names import check_id

__all__ = ["ASR_FORMAT", "asr_to_bytes", "generic_asr_bytes", "asr_manifest", "asr_from_bytes"]

ASR_FORMAT = "pocketsphinx-lm/msgpack-v1"
_FILES = ("domain.arpa", "domain.dict")


def asr_to_bytes(lm: DomainLm, extra: dict[str, Any] | None = None) -> bytes:
    """Pack a built domain LM."""
    manifest = {"generic": False, "vocabulary": len(lm.words),
                "oov": {w: {"phones": p, "source": s} for w, (p, s) in lm.oov.items()}, **(extra or {})}
    files = {"domain.arpa": lm.lm_path.read_bytes(), "domain.dict": lm.dict_path.read_bytes()}
    return msgpack.packb({"manifest": manifest, "files": files}, use_bin_type=True)


def generic_asr_bytes() -> bytes:
    """The artifact meaning "PocketSphinx's generic en-us LM and dictionary"."""
    return msgpack.packb({"manifest": {"generic": True}, "files": {}}, use_bin_type=True)


def _unpack(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    obj = msgpack.unpackb(data, raw=False)
    if not isinstance(obj, dict) or not isinstance(obj.get("manifest"), dict) or not isinstance(obj.get("files"), dict):
        raise ValueError("not an ASR artifact")
    return obj["manifest"], obj["files"]


def asr_manifest(data: bytes) -> dict[str, Any]:
    return _unpack(data)[0]


def asr_from_bytes(data: bytes, work_dir: Path, name: str, version: str) -> AsrModel:
    """Unpack into ``work_dir/<name>/<version>/`` and return the :class:`AsrModel` to serve."""
    manifest, files = _unpack(data)
    if manifest.get("generic"):
        return AsrModel(name=name, version=version)
    if set(files) != set(_FILES) or not all(isinstance(v, bytes) and v for v in files.values()):
        raise ValueError(f"an ASR artifact carries exactly {_FILES}")
    folder = Path(work_dir) / check_id(name, "model") / check_id(version, "version")
    folder.mkdir(parents=True, exist_ok=True)
    for fname in _FILES:
        tmp = folder / f".{fname}.part"
        tmp.write_bytes(files[fname])
        tmp.replace(folder / fname)
    return AsrModel(lm_path=folder / "domain.arpa", dict_path=folder / "domain.dict", name=name, version=version)
