"""Topic names (the only place in the project that spells an MQTT topic or Kafka topic) and model names.

Media lives under ``offload/v1/...``, which edgecore neither routes to the twin module nor
uploads to the cloud (see :data:`EDGECORE_FILTERS`). Device status uses the KubeEdge
twin/data topics in their own JSON formats (:mod:`topics.kubeedge`).
"""

from __future__ import annotations

import re

from topics.codec import ContractError

__all__ = [
    "ROOT",
    "FRAMES_FILTER",
    "AUDIO_FILTER",
    "RESULTS_FILTER",
    "VISION_RESULTS_FILTER",
    "TRANSCRIPT_FILTER",
    "PARTIAL_FILTER",
    "EDGE_STATUS_FILTER",
    "TWIN_UPDATE_FILTER",
    "DEAD_LETTER_FILTER",
    "CLIPS_FILTER",
    "THUMBNAILS_FILTER",
    "EDGECORE_FILTERS",
    "KAFKA_HARD_EXAMPLES",
    "KAFKA_MODEL_UPDATES",
    "KAFKA_LABELS",
    "KAFKA_SPEECH_REVISIONS",
    "FER_MODEL",
    "CASE_PROPERTY",
    "ASR_MODEL",
    "check_id",
    "frames",
    "audio",
    "vision_results",
    "frame_returns",
    "transcript",
    "partial_transcript",
    "audio_clip",
    "thumbnail",
    "dead_letter",
    "edge_status",
    "shared",
    "device_of",
    "parse_audio",
    "matches",
    "routed_by_edgecore",
]

ROOT = "offload/v1"

FRAMES_FILTER = f"{ROOT}/frames/+"
AUDIO_FILTER = f"{ROOT}/audio/+/+/+"
RESULTS_FILTER = f"{ROOT}/results/#"
VISION_RESULTS_FILTER = f"{ROOT}/results/vision/+"
TRANSCRIPT_FILTER = f"{ROOT}/results/transcript/+"
PARTIAL_FILTER = f"{ROOT}/results/partial/+"
EDGE_STATUS_FILTER = f"{ROOT}/edge/+/status"
TWIN_UPDATE_FILTER = "$hw/events/device/+/+/twin/update"  # KubeEdge twin updates (devices report status)
DEAD_LETTER_FILTER = f"{ROOT}/deadletter/#"
CLIPS_FILTER = f"{ROOT}/clips/+"  # audio clips of segments (sensitive media: not under results/)
THUMBNAILS_FILTER = f"{ROOT}/thumbs/+"  # camera thumbnails (sensitive media: not under results/)

KAFKA_HARD_EXAMPLES = "offload.hard-examples"
KAFKA_MODEL_UPDATES = "offload.model-updates"
KAFKA_LABELS = "offload.labels"
KAFKA_SPEECH_REVISIONS = "offload.speech-revisions"  # DC -> edge: re-decoded utterances

# MQTT v5 user property that names the case (warrant) of raw media without an envelope (RTP audio).
CASE_PROPERTY = "case_id"

# Model names, as they appear in results, hard examples, model updates and settings keys.
FER_MODEL = "fer-mini-xception"  # the edge facial-expression classifier
ASR_MODEL = "whisper-vocab"  # the edge ASR's vocabulary prompt over pinned Whisper weights

# What edgecore's EventBus subscribes to itself (kubeedge/kubeedge, edge/pkg/eventbus).
EDGECORE_FILTERS: tuple[str, ...] = (
    "$hw/events/upload/#",
    "$hw/events/device/+/+/state/update",
    "$hw/events/device/+/+/twin/+",
    "$hw/events/node/+/membership/get",
    "SYS/dis/upload_records",
    "+/user/#",
)

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is safe as one topic level (no wildcards, no slash), else raise."""
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(f"{what} {value!r} must match {_ID.pattern}")
    return value


def frames(device: str) -> str:
    """Camera frames of one device."""
    return f"{ROOT}/frames/{check_id(device, 'device')}"


def audio(device: str, conversation: str, leg: str) -> str:
    """Raw RTP packets of one call leg of one conversation, sent by one device."""
    return (f"{ROOT}/audio/{check_id(device, 'device')}/"
            f"{check_id(conversation, 'conversation')}/{check_id(leg, 'leg')}")


def vision_results(device: str) -> str:
    """Facial-expression results for one device's frames."""
    return f"{ROOT}/results/vision/{check_id(device, 'device')}"


def frame_returns(device: str) -> str:
    """Frames an edge hands back to the device that sent them (not an outcome: see
    ``topics.offload.FrameReturn``); outside ``results/`` so result readers never see them."""
    return f"{ROOT}/returns/{check_id(device, 'device')}"


def transcript(conversation: str) -> str:
    """Final, speaker-labelled transcript segments of one conversation."""
    return f"{ROOT}/results/transcript/{check_id(conversation, 'conversation')}"


def partial_transcript(conversation: str) -> str:
    """Live partial hypotheses of one conversation."""
    return f"{ROOT}/results/partial/{check_id(conversation, 'conversation')}"


def audio_clip(conversation: str) -> str:
    """Audio clips of one conversation's final segments (opt-in at the edge; see :mod:`topics.clip`).
    Outside ``results/``: result readers never receive the audio."""
    return f"{ROOT}/clips/{check_id(conversation, 'conversation')}"


def thumbnail(device: str) -> str:
    """Thumbnails of one camera's served frames (opt-in at the edge; see :mod:`topics.thumbnail`).
    Outside ``results/``: result readers never receive an image."""
    return f"{ROOT}/thumbs/{check_id(device, 'device')}"


def dead_letter(stage: str) -> str:
    """Rejected input of one pipeline stage (``vision``, ``audio``, ...)."""
    return f"{ROOT}/deadletter/{check_id(stage, 'stage')}"


def edge_status(node: str) -> str:
    """Retained status of one edge node."""
    return f"{ROOT}/edge/{check_id(node, 'node')}/status"


def shared(group: str, topic_filter: str) -> str:
    """An MQTT v5 shared subscription: agents in ``group`` split the messages."""
    return f"$share/{check_id(group, 'group')}/{topic_filter}"


def parse_audio(topic: str) -> tuple[str, str, str]:
    """``offload/v1/audio/{device}/{conversation}/{leg}`` -> (device, conversation, leg)."""
    parts = topic.split("/")
    prefix = ROOT.split("/")
    if len(parts) != len(prefix) + 4 or parts[:len(prefix)] != prefix or parts[len(prefix)] != "audio":
        raise ContractError("bad_topic", f"not an audio topic: {topic[:120]!r}")
    device, conversation, leg = parts[-3:]
    for value, what in ((device, "device"), (conversation, "conversation"), (leg, "leg")):
        try:
            check_id(value, what)
        except ValueError:
            raise ContractError(f"bad_{what}_id", f"{what} {value[:80]!r} is not a valid id") from None
    return device, conversation, leg


def device_of(topic: str) -> str:
    """The device named in a frames or audio topic.

    Raises :class:`~topics.codec.ContractError` (a ``ValueError``): ``bad_topic`` for another
    topic, ``bad_device_id`` for a device level that is not a valid id (empty, non-ASCII, too long)."""
    parts = topic.split("/")
    if len(parts) < 4 or "/".join(parts[:2]) != ROOT or parts[2] not in ("frames", "audio"):
        raise ContractError("bad_topic", f"not an {ROOT} frames/audio topic: {_clip(topic)!r}")
    if not _ID.match(parts[3]):
        raise ContractError("bad_device_id", f"device {_clip(parts[3])!r} must match {_ID.pattern}")
    return parts[3]


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + f"...(+{len(text) - n})"


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic-filter matching (``+`` one level, ``#`` the rest)."""
    f_parts = topic_filter.split("/")
    t_parts = topic.split("/")
    for i, f in enumerate(f_parts):
        if f == "#":
            return True
        if i >= len(t_parts):
            return False
        if f != "+" and f != t_parts[i]:
            return False
    return len(f_parts) == len(t_parts)


def routed_by_edgecore(topic: str) -> bool:
    """True if edgecore itself would consume or upload a message on ``topic``."""
    return any(matches(f, topic) for f in EDGECORE_FILTERS)
