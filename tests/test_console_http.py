"""The console over plain HTTP: login failures, CSRF, case checks on labels, escaping, headers,
and that every one of these lands in the audit log."""

from __future__ import annotations

import asyncio
import functools
import http.client
import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from archive.cli import hash_password
from archive.console import RunningConsole, start_console
from archive.store import Store, open_store
from cli.brokers import MosquittoBroker
from common.settings import MqttSettings, Settings
from topics.clip import AudioClip, wav_bytes
from topics.dc import Label
from topics.thumbnail import Thumbnail
from topics.transcript import ModelRef, TranscriptSegment
from topics.vision import Face, Timing, VisionResult

pytestmark = pytest.mark.integration


class _Browser:
    """A cookie-keeping HTTP client that does not follow redirects."""

    def __init__(self, base: str, source: str | None = None) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: object, **kwargs: object) -> None:
                return None

        class FromSource(urllib.request.HTTPHandler):  # another loopback address: another remote client
            def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(functools.partial(http.client.HTTPConnection, source_address=(source, 0)), req)

        handlers: list[urllib.request.BaseHandler] = [urllib.request.HTTPCookieProcessor(self.jar), NoRedirect()]
        if source is not None:
            handlers.append(FromSource())
        self.opener = urllib.request.build_opener(*handlers)

    def get(self, path: str) -> tuple[int, str, dict[str, str]]:
        return self._open(urllib.request.Request(self.base + path))

    def get_bytes(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        try:
            with self.opener.open(urllib.request.Request(self.base + path), timeout=10) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def post(self, path: str, form: dict[str, str]) -> tuple[int, str, dict[str, str]]:
        return self._open(urllib.request.Request(self.base + path, urllib.parse.urlencode(form).encode()))

    def _open(self, request: urllib.request.Request) -> tuple[int, str, dict[str, str]]:
        try:
            with self.opener.open(request, timeout=10) as r:
                return r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), dict(e.headers)

    def login(self, name: str, password: str) -> int:
        _, page, _ = self.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None
        return self.post("/login", {"username": name, "password": password, "csrf": token.group(1)})[0]


@pytest.fixture()
async def console(mosquitto: MosquittoBroker, tmp_path: Path) -> AsyncIterator[tuple[RunningConsole, Store,
                                                                                    list[Label]]]:
    store = open_store(f"sqlite:///{tmp_path}/c.sqlite3")
    store.add_operator("ann", hash_password("ann-password-1"), "operator", ["case-a"])
    for conv, case, text in (("call-a", "case-a", "<script>alert(1)</script> convoy"), ("call-b", "case-b", "x")):
        store.put_segment(TranscriptSegment(
            conversation=conv, leg="leg1", utterance=0, seq=0, speaker="S1", start_s=0.0, end_s=1.0, text=text,
            confidence=0.9, words=(), model=ModelRef("w", "v"), latency_ms=1.0, case_id=case))
    sent: list[Label] = []

    async def send(label: Label) -> None:
        sent.append(label)

    running = await start_console(Settings(mqtt=MqttSettings(port=mosquitto.port)), store, send_label=send)
    try:
        yield running, store, sent
    finally:
        await running.stop()
        store.close()


async def test_login_csrf_case_checks_escaping_and_audit(
        console: tuple[RunningConsole, Store, list[Label]]) -> None:
    running, store, sent = console
    b = _Browser(running.url)

    def flow() -> None:
        assert b.get("/conversations")[0] == 303  # not logged in
        assert b.get("/events")[0] == 401
        assert b.login("ann", "wrong-password") == 401
        assert b.post("/login", {"username": "ann", "password": "ann-password-1", "csrf": "forged"})[0] == 403
        assert b.login("ann", "ann-password-1") == 303
        cookie = next(c for c in b.jar if c.name == "eo_session")
        assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "strict"
        status, page, headers = b.get("/conversations/call-a")
        assert status == 200 and "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
        nonce = re.search(r"'nonce-([^']+)'", headers["content-security-policy"])
        assert nonce is not None and f'<script nonce="{nonce.group(1)}">' in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        label = {"conversation": "call-a", "leg": "leg1", "utterance": "0", "text": "convoy at nine"}
        assert b.post("/label", label)[0] == 403  # no CSRF token
        assert b.post("/label", {**label, "conversation": "call-b", "csrf": csrf.group(1)})[0] == 404  # case-b
        assert "No segments" in b.get("/conversations/call-b")[1]
        assert b.post("/label", {**label, "csrf": csrf.group(1)})[0] == 303

    await asyncio.to_thread(flow)
    assert [(lb.key, lb.text, lb.source) for lb in sent] == [
        ("whisper-vocab|console|call-a.leg1|0|0", "convoy at nine", "operator:ann")]
    actions = [(r.operator, r.action, r.target) for r in store.audit_log()]
    assert actions == [("ann", "login_failed", ""), ("ann", "login_failed", ""), ("ann", "login", ""),
                       ("ann", "view", "conversation:call-a"), ("ann", "label_denied", ""),
                       ("ann", "label_denied", "call-b/leg1#0"), ("ann", "view", "conversation:call-b"),
                       ("ann", "label", "call-a/leg1#0")]
    assert all(r.remote == "127.0.0.1" for r in store.audit_log())


async def test_a_kept_clip_plays_for_its_case_only_and_is_audited(
        console: tuple[RunningConsole, Store, list[Label]]) -> None:
    running, store, _ = console
    pcm = b"\x10\x00\xf0\xff" * 800
    store.put_clip(AudioClip("call-a", "leg1", 0, 0.0, 0.1, pcm, case_id="case-a", device="tap-1"))
    store.put_clip(AudioClip("call-b", "leg1", 0, 0.0, 0.1, pcm, case_id="case-b", device="tap-2"))
    b = _Browser(running.url)

    def flow() -> None:
        assert b.get_bytes("/conversations/call-a/audio/leg1/0")[0] == 401  # not logged in
        assert b.login("ann", "ann-password-1") == 303
        page = b.get("/conversations/call-a")[1]
        assert '<audio controls preload="none" class="clip" src="/conversations/call-a/audio/leg1/0">' in page
        status, body, headers = b.get_bytes("/conversations/call-a/audio/leg1/0")
        assert status == 200 and headers["content-type"] == "audio/wav" and body == wav_bytes(pcm)
        assert b.get_bytes("/conversations/call-b/audio/leg1/0")[0] == 404  # another case
        assert b.get_bytes("/conversations/call-a/audio/leg1/7")[0] == 404  # none kept

    await asyncio.to_thread(flow)
    actions = [(r.action, r.target) for r in store.audit_log() if r.action.startswith("play")]
    assert actions == [("play", "call-a/leg1#0"), ("play_denied", "call-b/leg1#0"), ("play_denied", "call-a/leg1#7")]


async def test_a_kept_thumbnail_shows_on_its_tile_for_its_case_only(
        console: tuple[RunningConsole, Store, list[Label]]) -> None:
    running, store, _ = console
    jpeg = b"\xff\xd8\xff" + b"\x07" * 300
    for device, case in (("cam-a", "case-a"), ("cam-b", "case-b")):
        store.put_result(VisionResult(device=device, seq=5, captured_at_ms=1, node="edge-1", model=ModelRef("fer", "v"),
                                      timing=Timing(1.0, 1, 1.0, 1.0, 3.0), case_id=case,
                                      faces=(Face((10, 20, 30, 40), "happy", (0, 0, 0, 1.0, 0, 0, 0)),)))
        store.put_thumbnail(Thumbnail(device, 5, 160, 120, 640, 480, jpeg, case_id=case))
    store.put_result(VisionResult(device="cam-a2", seq=1, captured_at_ms=1, node="edge-1", model=ModelRef("fer", "v"),
                                  timing=Timing(1.0, 1, 1.0, 1.0, 3.0), case_id="case-a"))  # no thumbnail kept
    b = _Browser(running.url)

    def flow() -> None:
        assert b.get_bytes("/cameras/cam-a/thumbnail/5")[0] == 401
        assert b.login("ann", "ann-password-1") == 303
        page = b.get("/cameras")[1]
        assert page.count('<image class="thumb"') == 1 and 'href="/cameras/cam-a/thumbnail/5"' in page
        assert 'viewBox="0 0 640 480"' in page and "cam-b" not in page
        status, body, headers = b.get_bytes("/cameras/cam-a/thumbnail/5")
        assert status == 200 and headers["content-type"] == "image/jpeg" and body == jpeg
        assert b.get_bytes("/cameras/cam-b/thumbnail/5")[0] == 404  # another case
        assert b.get_bytes("/cameras/cam-a2/thumbnail/1")[0] == 404  # none kept

    await asyncio.to_thread(flow)
    assert [(r.action, r.target) for r in store.audit_log() if r.action != "login"] == [
        ("view", "cameras"), ("thumbnail_denied", "cam-b#5"), ("thumbnail_denied", "cam-a2#1")]


async def test_failed_logins_are_rate_limited_per_name_and_per_address(mosquitto: MosquittoBroker,
                                                                      tmp_path: Path) -> None:
    from common.archive_settings import ArchiveSettings

    store = open_store(f"sqlite:///{tmp_path}/c.sqlite3")
    store.add_operator("ann", hash_password("ann-password-1"), "operator", ["case-a"])
    store.add_operator("bob", hash_password("bob-password-1"), "operator", ["case-b"])
    settings = Settings(mqtt=MqttSettings(port=mosquitto.port),
                        archive=ArchiveSettings(login_max_failures=3, login_window_s=600))
    running = await start_console(settings, store)
    here, there = _Browser(running.url), _Browser(running.url, source="127.0.0.2")

    def flow() -> None:
        assert [here.login("ann", "guess") for _ in range(3)] == [401, 401, 401]
        _, page, _ = here.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None
        status, page, headers = here.post("/login", {"username": "ann", "password": "ann-password-1",
                                                     "csrf": token.group(1)})
        assert status == 429 and "Too many failed logins" in page and 590 <= int(headers["retry-after"]) <= 600
        assert there.login("ann", "ann-password-1") == 429  # the name is locked, from any address
        assert there.login("bob", "bob-password-1") == 303  # another name from another address: fine
        assert here.login("bob", "bob-password-1") == 429  # but this address is locked, for every name
        assert "eo_session" not in {c.name for c in here.jar}
        metrics = here.get("/metrics")[1]
        assert 'edge_offload_console_logins_total{outcome="throttled_name"} 2.0' in metrics
        assert 'edge_offload_console_logins_total{outcome="throttled_address"} 1.0' in metrics
        assert 'edge_offload_console_logins_total{outcome="failed"} 3.0' in metrics

    try:
        await asyncio.to_thread(flow)
    finally:
        await running.stop()
    assert [(r.operator, r.action, r.remote, r.detail) for r in store.audit_log()] == [
        *[("ann", "login_failed", "127.0.0.1", "")] * 3,
        ("ann", "login_throttled", "127.0.0.1", "too many failures by name"),
        ("ann", "login_throttled", "127.0.0.2", "too many failures by name"),
        ("bob", "login", "127.0.0.2", ""),
        ("bob", "login_throttled", "127.0.0.1", "too many failures by address")]
    store.close()


async def test_tls_option_serves_https_with_secure_cookies(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    import ssl

    from cli.pki import make_pki
    from common.archive_settings import ArchiveSettings

    pki = make_pki(tmp_path / "pki", ["127.0.0.1"], [])
    settings = Settings(mqtt=MqttSettings(port=mosquitto.port),
                        archive=ArchiveSettings(console_cert_file=pki.server_cert, console_key_file=pki.server_key))
    store = open_store(f"sqlite:///{tmp_path}/c.sqlite3")
    running = await start_console(settings, store)
    try:
        assert running.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(pki.ca_cert))

        def fetch() -> str:
            with urllib.request.urlopen(running.url + "/login", context=context, timeout=10) as r:
                return str(r.headers["set-cookie"])

        assert "secure" in (await asyncio.to_thread(fetch)).lower()
        with pytest.raises(OSError):  # plain HTTP is not served (URLError, RemoteDisconnected)
            await asyncio.to_thread(urllib.request.urlopen, running.url.replace("https", "http") + "/login", None, 5)
    finally:
        await running.stop()
        store.close()
