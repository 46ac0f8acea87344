"""The operator console in a real browser (headless Chromium via Selenium, the Debian `chromium`
and `chromium-driver` packages): log in, see a live partial and segment arrive, search and find
it, label it and see revision 2 come back through the real label path (Kafka labels topic ->
the DC's revise service -> speech revisions -> the edge's segment index -> MQTT -> archive),
and check that an operator of another case sees and finds nothing, and that the audit log
holds each step. Saves the screenshot docs/img/console.png."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from archive.cli import hash_password
from archive.console import start_console
from archive.service import ArchiveService
from archive.store import open_store
from cli.brokers import MosquittoBroker, TansuBroker
from cloud_trainer.revise_service import RevisionService
from common.archive_settings import ArchiveSettings
from common.settings import KafkaSettings, MqttSettings, Settings
from edge_agent.speech.revisions import RevisionFollower, SegmentIndex
from topics import names
from topics.clip import clip_from_samples, encode_clip
from topics.transcript import (
    ModelRef,
    PartialTranscript,
    SpeechRevision,
    TranscriptSegment,
    TranscriptWord,
    encode_partial,
    encode_segment,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "console.png"
CONV, LEG = "call-live-1", "leg1"
TEXT = "the convoy leaves at noon from the harbour"
FIXED = "the convoy leaves at nine from the harbour"


def _driver() -> object:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if CHROMIUM is None or DRIVER is None:
        pytest.skip("chromium / chromedriver missing (apt-get install chromium chromium-driver; `make` does it)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900", "--no-proxy-server"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def _segment(revision: int = 0) -> TranscriptSegment:
    words = tuple(TranscriptWord(w, 1.0 + i * 0.3, 1.25 + i * 0.3, 0.45) for i, w in enumerate(TEXT.split()))
    return TranscriptSegment(conversation=CONV, leg=LEG, utterance=0, seq=0, speaker="S1", start_s=1.0,
                             end_s=3.5, text=TEXT, confidence=0.45, words=words, model=ModelRef("whisper", "v1"),
                             latency_ms=300.0, revision=revision, case_id="case-a", device="tap-1",
                             utterance_start_s=1.0)


class _Edge:
    """The edge's part of the label path: the segments it published (SegmentIndex) and its
    revision follower, publishing a revised segment on the transcript topic as the speech service does."""

    def __init__(self, port: int, kafka: KafkaSettings) -> None:
        self.port = port
        self.index = SegmentIndex()
        self.follower = RevisionFollower(kafka, "edge-browser", self.on_revision)
        self.published: list[TranscriptSegment] = []

    async def publish(self, topic: str, payload: bytes) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier=f"edge-{time.monotonic_ns()}") as client:
            await client.publish(topic, payload, qos=1)

    async def on_revision(self, rev: SpeechRevision) -> None:
        seg = self.index.apply(rev)
        if seg is not None:
            self.published.append(seg)
            await self.publish(names.transcript(seg.conversation), encode_segment(seg))


@contextlib.asynccontextmanager
async def _task(run: Callable[[asyncio.Event], object]) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.ensure_future(run(stop))  # type: ignore[arg-type]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def _until(what: Callable[[], object], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(what):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {getattr(what, '__name__', what)}")
        await asyncio.sleep(0.1)


async def test_console_in_a_real_browser(own_mosquitto: MosquittoBroker, own_kafka: TansuBroker,
                                         tmp_path: Path) -> None:
    driver = _driver()
    from selenium.webdriver.common.by import By

    url = f"sqlite:///{tmp_path}/archive.sqlite3"
    kafka = KafkaSettings(bootstrap_servers=own_kafka.bootstrap_servers)
    settings = Settings(mqtt=MqttSettings(host="127.0.0.1", port=own_mosquitto.port, client_id="unused"),
                        kafka=kafka, archive=ArchiveSettings(store_url=url, client_id="archive-browser"))
    store = open_store(url)
    store.add_operator("ann", hash_password("ann-password-1"), "operator", ["case-a"])
    store.add_operator("bob", hash_password("bob-password-1"), "operator", ["case-b"])
    archive = ArchiveService(settings)
    edge = _Edge(own_mosquitto.port, kafka)
    reviser = RevisionService(kafka, reviser=None, group_id="browser-reviser")  # type: ignore[arg-type]
    d: object = driver

    def find(css: str) -> object:
        return d.find_element(By.CSS_SELECTOR, css)  # type: ignore[attr-defined]

    def login(name: str, password: str) -> None:
        d.get(f"{console.url}/login")  # type: ignore[attr-defined]
        find("#username").send_keys(name)  # type: ignore[attr-defined]
        find("#password").send_keys(password)  # type: ignore[attr-defined]
        find("#login").click()  # type: ignore[attr-defined]

    def text(css: str) -> str:  # "" while the element is missing or being replaced by a live reload
        try:
            return str(find(css).text)  # type: ignore[attr-defined]
        except Exception:
            return ""

    def attr(css: str, name: str) -> str:
        try:
            return str(find(css).get_attribute(name))  # type: ignore[attr-defined]
        except Exception:
            return ""

    try:
        async with _task(archive.run), _task(reviser.run), _task(edge.follower.run):
            await asyncio.wait_for(archive.ready.wait(), 15)
            await asyncio.wait_for(edge.follower.connected.wait(), 60)
            console = await start_console(settings, store)
            try:
                await asyncio.wait_for(console.console.hub.ready.wait(), 15)
                # ann logs in and opens the (still empty) conversation
                await asyncio.to_thread(login, "ann", "ann-password-1")
                await _until(lambda: "ann" in text("#who"))
                await asyncio.to_thread(d.get, f"{console.url}/conversations/{CONV}")  # type: ignore[attr-defined]
                await _until(lambda: len(console.console.hub.viewers) == 1)  # the page's event stream is open
                # a partial, then the final segment arrive live
                await edge.publish(names.partial_transcript(CONV), encode_partial(PartialTranscript(
                    conversation=CONV, leg=LEG, utterance=0, seq=1, speaker="S1", provisional=True,
                    text="the convoy leaves", start_s=1.0, updated_at_ms=1, case_id="case-a", device="tap-1")))
                await _until(lambda: "the convoy leaves" in text("#partial-leg1"))
                seg = _segment()
                edge.index.record(seg)
                await edge.publish(names.transcript(CONV), encode_segment(seg))
                await _until(lambda: TEXT in text("#seg-leg1-0 .text"))
                assert "low" in await asyncio.to_thread(attr, "#seg-leg1-0", "class")
                # the other side answers (a confident segment: not shaded)
                reply = dataclasses.replace(seg, leg="leg2", utterance=0, seq=1, speaker="S2", start_s=4.0, end_s=6.0,
                                            text="copy that, convoy at noon", confidence=0.93, words=())
                await edge.publish(names.transcript(CONV), encode_segment(reply))
                await _until(lambda: "copy that" in text("#seg-leg2-0 .text"))
                assert "low" not in await asyncio.to_thread(attr, "#seg-leg2-0", "class")
                later = dataclasses.replace(seg, utterance=1, seq=2, start_s=7.0, end_s=9.0, words=(),
                                            text="checkpoint alpha at twelve hundred", confidence=0.41)
                # its audio was kept (speech.publish_clips): the segment plays in the browser
                tone = (np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000) * 0.3).astype(np.float32)
                await edge.publish(names.audio_clip(CONV), encode_clip(clip_from_samples(
                    CONV, LEG, 1, 7.0, tone, case_id="case-a", device="tap-1")))
                await edge.publish(names.transcript(CONV), encode_segment(later))
                await _until(lambda: "checkpoint alpha" in text("#seg-leg1-1 .text"))
                await _until(lambda: attr("#seg-leg1-1 audio", "src").endswith(f"/conversations/{CONV}/audio/leg1/1"))
                await asyncio.to_thread(d.execute_script,  # type: ignore[attr-defined]
                                        "document.querySelector('#seg-leg1-1 audio').load()")
                await _until(lambda: d.execute_script(  # type: ignore[attr-defined]
                    "const a=document.querySelector('#seg-leg1-1 audio'); return a && a.readyState>=1 && a.duration"))
                duration = await asyncio.to_thread(d.execute_script,  # type: ignore[attr-defined]
                                                   "return document.querySelector('#seg-leg1-1 audio').duration")
                assert abs(float(duration) - 1.0) < 0.01, duration  # Chromium decoded the 1 s WAV
                # search finds it
                await asyncio.to_thread(d.get, f"{console.url}/search")  # type: ignore[attr-defined]
                await asyncio.to_thread(lambda: find("#search-q").send_keys("convoy harbour"))  # type: ignore
                await asyncio.to_thread(lambda: find("#search-go").click())  # type: ignore[attr-defined]
                await _until(lambda: text("#hits") == "1 hit(s)")
                assert TEXT in text("tr.hit")
                # label it: the correction comes back as revision 2
                await asyncio.to_thread(d.get, f"{console.url}/conversations/{CONV}")  # type: ignore[attr-defined]
                await _until(lambda: len(console.console.hub.viewers) >= 1)

                def correct() -> None:  # a live reload may replace the form before the box has focus
                    from selenium.common.exceptions import StaleElementReferenceException

                    for _ in range(10):
                        try:
                            box = find("#seg-leg1-0 form.label input[name=text]")
                            box.click()  # type: ignore[attr-defined]
                            box.clear()  # type: ignore[attr-defined]
                            box.send_keys(FIXED)  # type: ignore[attr-defined]
                            find("#seg-leg1-0 form.label button").click()  # type: ignore[attr-defined]
                            return
                        except StaleElementReferenceException:
                            continue
                    raise AssertionError("the label form kept being replaced")

                await asyncio.to_thread(correct)
                await _until(lambda: attr("#seg-leg1-0", "data-revision") == "2", timeout_s=90)
                assert FIXED in text("#seg-leg1-0 .text") and "r2 operator" in text("#seg-leg1-0 .rev")
                await asyncio.to_thread(lambda: find("#seg-leg1-0 details summary").click())  # type: ignore
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                assert await asyncio.to_thread(d.save_screenshot, str(SCREENSHOT))  # type: ignore[attr-defined]
                # bob, of another case, sees and finds nothing
                await asyncio.to_thread(lambda: find("nav form button").click())  # type: ignore[attr-defined]
                await _until(lambda: str(d.current_url).endswith("/login"))  # type: ignore[attr-defined]
                await asyncio.to_thread(login, "bob", "bob-password-1")
                await _until(lambda: "bob" in text("#who"))
                assert CONV not in await asyncio.to_thread(text, "main")
                await asyncio.to_thread(d.get, f"{console.url}/conversations/{CONV}")  # type: ignore[attr-defined]
                assert "No segments" in await asyncio.to_thread(text, "#live")
                await asyncio.to_thread(d.get, f"{console.url}/search?q=convoy")  # type: ignore[attr-defined]
                assert await asyncio.to_thread(text, "#hits") == "0 hit(s)"
            finally:
                await console.stop()
    finally:
        await asyncio.to_thread(driver.quit)  # type: ignore[attr-defined]
    rows = [(r.operator, r.action, r.target) for r in store.audit_log()]
    store.close()
    for step in [("ann", "login", ""), ("ann", "view", f"conversation:{CONV}"), ("ann", "search", "convoy harbour"),
                 ("ann", "play", f"{CONV}/{LEG}#1"), ("ann", "label", f"{CONV}/{LEG}#0"), ("ann", "logout", ""),
                 ("bob", "login", ""),
                 ("bob", "view", f"conversation:{CONV}"), ("bob", "search", "convoy")]:
        assert step in rows, step
    assert [s.revision for s in edge.published] == [2]
