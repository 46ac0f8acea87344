"""``edge-offload console``: the operator web console (Starlette, served by uvicorn).

Plain server-rendered HTML with a little inline JavaScript: no build chain, no CDN, works
offline. Live updates are server-sent events (``/events``) from :class:`archive.live.LiveHub`;
a page reloads its live fragment from the store when an event for it arrives.

Security (docs/operator-console.md): operator accounts with argon2id hashes; a random session
id in an HttpOnly, SameSite=Strict cookie (Secure when TLS is on); a CSRF token per session
on every form that changes something (and a double-submit cookie on the login form); a
Content-Security-Policy that allows only this page's own nonce-tagged script. Every read goes
through the store with the operator's case access; every login, view, search and label is
written to the append-only audit log with the operator, time and remote address.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hmac
import html
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from archive.cli import parse_time_ms, verify_password
from archive.live import LiveHub
from archive.store import Access, SearchQuery, SegmentRow, Store, open_store
from archive.throttle import LoginThrottle
from common.kafka_clients import make_producer
from common.settings import Settings
from topics.clip import wav_bytes
from topics.codec import now_ms
from topics.dc import Label, encode_label, example_key
from topics.names import ASR_MODEL, KAFKA_LABELS, check_id

__all__ = ["Console", "Session", "serve_console", "start_console", "RunningConsole"]

log = logging.getLogger(__name__)

SESSION_COOKIE = "eo_session"
LOGIN_COOKIE = "eo_login"
LabelSender = Callable[[Label], Awaitable[None]]


@dataclass(slots=True)
class Session:
    operator: str
    role: str
    access: Access
    csrf: str
    expires_s: float


def kafka_label_sender(settings: Settings) -> LabelSender:
    """Send an operator's label to the labels topic (acks=all): the DC's revise service turns it
    into revision 2 of the segment, which the edge publishes and the archive stores."""
    async def send(label: Label) -> None:
        producer = make_producer(settings.kafka, client_id=f"{settings.kafka.client_id}-console", acks="all",
                                 enable_idempotence=settings.kafka.enable_idempotence)
        await producer.start()
        try:
            await (await producer.send(KAFKA_LABELS, encode_label(label), key=label.key.encode()))
        finally:
            await producer.stop()
    return send


_CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#f6f6f4}
nav{background:#223;padding:.5em 1em}nav a,nav span{color:#fff;margin-right:1.2em;text-decoration:none}
main{padding:1em 1.5em}table{border-collapse:collapse}td,th{padding:.25em .6em;border-bottom:1px solid #ddd;
text-align:left;vertical-align:top}.seg{background:#fff;margin:.4em 0;padding:.5em .7em;border-left:4px solid #58a}
.seg.low{background:#fde9c8}.spk{font-weight:bold;margin-right:.5em}.rev{font-size:.8em;background:#ddd;
padding:0 .4em;border-radius:3px;margin-left:.5em}.rev.operator{background:#bde5b8}.rev.dc{background:#c8d8f0}
.partial{color:#777;font-style:italic}.tile{display:inline-block;background:#fff;margin:.5em;padding:.5em;
vertical-align:top}del{background:#f6c6c6}ins{background:#c6f6c6;text-decoration:none}
.on{color:#185}.off{color:#a22}form.inline{display:inline}.err{color:#a22}
audio.clip{display:block;height:2.2em;margin:.2em 0}
"""

# The store is the record: a live event only tells a page to reload its fragment from the store.
# The archive may store a segment a moment after the console hears of it, so a reload that does
# not show the event's segment revision yet is retried (every 0.5 s, 20 times). Each (re)connection
# of the event stream reloads once, for what happened between the page's rendering and the stream.
_JS = """
(function(){
 const live=document.getElementById('live'); if(!live) return;
 const url=live.dataset.fragment, kinds=(live.dataset.kinds||'').split(',');
 let pending=false, want=null, tries=0;
 function shown(){ if(!want) return true; const el=document.getElementById(want.id);
   return el && Number(el.dataset.revision)>=want.rev; }
 function reload(){ if(pending) return;
   const a=document.activeElement;  // an operator typing a correction keeps the form: reload later
   if(a && a.tagName==='INPUT' && live.contains(a)){ setTimeout(reload,1000); return; }
   pending=true;
   fetch(url,{credentials:'same-origin'}).then(r=>r.text()).then(t=>{live.innerHTML=t;pending=false;
     if(!shown() && tries++<20) setTimeout(reload,500); else {want=null;tries=0;} })
   .catch(()=>{pending=false;}); }
 const es=new EventSource(live.dataset.events);
 es.onopen=function(){ reload(); };  // (re)connected: catch up on what happened while not listening
 es.onmessage=function(m){ const e=JSON.parse(m.data);
   if(e.type==='partial'){ const p=document.getElementById('partials'); if(!p) return;
     let el=document.getElementById('partial-'+e.leg);
     if(!el){ el=document.createElement('div'); el.id='partial-'+e.leg; el.className='partial'; p.appendChild(el); }
     el.textContent=e.speaker+' ('+e.leg+'): '+e.text+' \u2026'; return; }
   if(kinds.indexOf(e.type)>=0){ if(e.type==='segment'){ const el=document.getElementById('partial-'+e.leg);
     if(el) el.textContent=''; if(live.dataset.kinds==='segment' && !live.dataset.fragment.includes('list'))
       { want={id:'seg-'+e.leg+'-'+e.utterance, rev:e.revision}; tries=0; } } reload(); } };
})();
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _word_diff(old: str, new: str) -> str:
    """Word-level diff of two texts as HTML (<del>/<ins>)."""
    out = []
    a, b = old.split(), new.split()
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b).get_opcodes():
        if op == "equal":
            out.append(_esc(" ".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append(f"<del>{_esc(' '.join(a[i1:i2]))}</del>")
        if j2 > j1:
            out.append(f"<ins>{_esc(' '.join(b[j1:j2]))}</ins>")
    return " ".join(out)


class Console:
    """The console's ASGI app (``.app``) over one store, one live hub and one label sender."""

    def __init__(self, settings: Settings, store: Store, *, hub: LiveHub | None = None,
                 send_label: LabelSender | None = None, secure_cookies: bool = False) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub or LiveHub(settings.mqtt, f"{settings.archive.client_id}-console-{secrets.token_hex(3)}")
        self.send_label = send_label or kafka_label_sender(settings)
        self.secure_cookies = secure_cookies
        self.sessions: dict[str, Session] = {}
        a = settings.archive
        self.throttle = LoginThrottle(a.login_max_failures, a.login_window_s)
        self.registry = CollectorRegistry()
        self._m_logins = Counter("edge_offload_console_logins", "console login attempts by outcome (ok, failed, "
                                 "csrf, throttled_name, throttled_address)", ["outcome"], registry=self.registry)
        self._stop = asyncio.Event()
        self.app = Starlette(routes=[
            Route("/", self.home), Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/conversations", self.conversations), Route("/conversations/{cid}", self.conversation),
            Route("/conversations/{cid}/live", self.conversation_live),
            Route("/conversations/{cid}/audio/{leg}/{utt:int}", self.audio),
            Route("/cameras", self.cameras), Route("/cameras/live", self.cameras_live),
            Route("/cameras/{device}/thumbnail/{seq:int}", self.thumbnail),
            Route("/fleet", self.fleet), Route("/fleet/live", self.fleet_live),
            Route("/search", self.search), Route("/label", self.label, methods=["POST"]),
            Route("/events", self.events), Route("/healthz", self.healthz), Route("/metrics", self.metrics),
        ], lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(self.hub.run(self._stop))
        try:
            yield
        finally:
            self._stop.set()
            await asyncio.wait_for(task, 10)

    def close(self) -> None:
        """Stop the live feed and end every event stream."""
        self._stop.set()

    # -- helpers ---------------------------------------------------------------------------------
    async def _audit(self, request: Request, who: str, action: str, target: str = "", detail: str = "") -> None:
        remote = request.client.host if request.client is not None else ""
        await asyncio.to_thread(self.store.audit, who, action, target, remote, detail)

    def _session(self, request: Request) -> Session | None:
        sid = request.cookies.get(SESSION_COOKIE)
        session = self.sessions.get(sid or "")
        if session is None:
            return None
        if session.expires_s < time.time():
            self.sessions.pop(sid or "", None)
            return None
        return session

    def _headers(self, nonce: str) -> dict[str, str]:
        return {"Content-Security-Policy": f"default-src 'self'; script-src 'nonce-{nonce}'; "
                                           "style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}

    def _page(self, title: str, body: str, session: Session | None, status: int = 200) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        nav = ""
        if session is not None:
            access = session.access
            cases = ", ".join(sorted(access)) or "no case" if isinstance(access, frozenset) else "all cases"
            nav = (f'<nav><a href="/conversations">Conversations</a><a href="/cameras">Cameras</a>'
                   f'<a href="/fleet">Fleet</a><a href="/search">Search</a>'
                   f'<span id="who">{_esc(session.operator)} ({_esc(cases)})</span>'
                   f'<form class="inline" method="post" action="/logout"><input type="hidden" name="csrf" '
                   f'value="{_esc(session.csrf)}"><button>Log out</button></form></nav>')
        page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_esc(title)} - edge-offload"
                f"</title><style>{_CSS}</style></head><body>{nav}<main><h1>{_esc(title)}</h1>{body}</main>"
                f'<script nonce="{nonce}">{_JS}</script></body></html>')
        return HTMLResponse(page, status_code=status, headers=self._headers(nonce))

    @staticmethod
    async def _form(request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > 65536:
            return {}
        return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}

    def _check_csrf(self, session: Session, form: dict[str, str]) -> bool:
        return hmac.compare_digest(form.get("csrf", ""), session.csrf)

    # -- login -----------------------------------------------------------------------------------
    async def home(self, request: Request) -> Response:
        return RedirectResponse("/conversations" if self._session(request) else "/login", 303)

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self._login_page()
        form = await self._form(request)
        token = request.cookies.get(LOGIN_COOKIE, "")
        name = form.get("username", "")[:64]
        if not token or not hmac.compare_digest(form.get("csrf", ""), token):
            self._m_logins.labels("csrf").inc()
            await self._audit(request, name or "-", "login_failed", detail="csrf")
            return self._login_page("The form expired; try again.", 403)
        remote = request.client.host if request.client is not None else ""
        blocked = self.throttle.retry_after_s(name, remote)
        if blocked is not None:  # refused before the password is checked: no argon2 work for a locked key
            what, wait_s = blocked
            self._m_logins.labels(f"throttled_{what}").inc()
            await self._audit(request, name or "-", "login_throttled", detail=f"too many failures by {what}")
            response = self._login_page("Too many failed logins; try again later.", 429)
            response.headers["Retry-After"] = str(max(1, int(wait_s + 0.999)))
            return response
        op = await asyncio.to_thread(self.store.operator, name)
        ok = op is not None and await asyncio.to_thread(verify_password, op.password_hash, form.get("password", ""))
        if not ok or op is None:
            self.throttle.failed(name, remote)
            self._m_logins.labels("failed").inc()
            await self._audit(request, name or "-", "login_failed")
            return self._login_page("Wrong name or password.", 401)
        self.throttle.succeeded(name)
        self._m_logins.labels("ok").inc()
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = Session(op.name, op.role, op.access, secrets.token_urlsafe(24),
                                     time.time() + self.settings.archive.session_hours * 3600)
        await self._audit(request, op.name, "login")
        response = RedirectResponse("/conversations", 303)
        response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="strict", secure=self.secure_cookies,
                            max_age=int(self.settings.archive.session_hours * 3600))
        response.delete_cookie(LOGIN_COOKIE)
        return response

    def _login_page(self, error: str = "", status: int = 200) -> Response:
        token = secrets.token_urlsafe(24)
        body = (f'<p class="err">{_esc(error)}</p>' if error else "") + (
            '<form method="post" action="/login"><p><label>Name <input name="username" id="username" '
            'autocomplete="username" required></label></p><p><label>Password <input type="password" name="password" '
            f'id="password" autocomplete="current-password" required></label></p><input type="hidden" name="csrf" '
            f'value="{token}"><button id="login">Log in</button></form>')
        response = self._page("Log in", body, None, status)
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=self.secure_cookies,
                            max_age=600)
        return response

    async def logout(self, request: Request) -> Response:
        session = self._session(request)
        form = await self._form(request)
        if session is not None and self._check_csrf(session, form):
            self.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
            await self._audit(request, session.operator, "logout")
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # -- conversations ---------------------------------------------------------------------------
    async def conversations(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return RedirectResponse("/login", 303)
        await self._audit(request, session.operator, "view", "conversations")
        body = ('<div id="live" data-fragment="/conversations/live?list=1" data-events="/events" '
                f'data-kinds="segment">{await self._conversation_list(session)}</div>')
        return self._page("Conversations", body, session)

    async def _conversation_list(self, session: Session) -> str:
        rows = await asyncio.to_thread(self.store.conversations, session.access)
        items = "".join(f'<tr><td><a href="/conversations/{urllib.parse.quote(r["conversation"])}">'
                        f'{_esc(r["conversation"])}</a></td><td>{_esc(r["case_id"] or "-")}</td>'
                        f'<td>{r["segments"]}</td><td>{_esc(_time(r["last_ms"]))}</td></tr>' for r in rows)
        return (f'<table><tr><th>Conversation</th><th>Case</th><th>Segments</th><th>Last</th></tr>{items}</table>'
                if items else "<p>No conversations yet.</p>")

    async def conversation(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return RedirectResponse("/login", 303)
        cid = request.path_params["cid"]
        await self._audit(request, session.operator, "view", f"conversation:{cid[:80]}")
        quoted = urllib.parse.quote(cid)
        body = (f'<div id="partials"></div><div id="live" data-fragment="/conversations/{quoted}/live" '
                f'data-events="/events?conversation={quoted}" data-kinds="segment">'
                f'{await self._segments_html(session, cid)}</div>')
        return self._page(f"Conversation {cid}", body, session)

    async def conversation_live(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return PlainTextResponse("log in", 401)
        if request.query_params.get("list"):
            return HTMLResponse(await self._conversation_list(session))
        return HTMLResponse(await self._segments_html(session, request.path_params["cid"]))

    async def _segments_html(self, session: Session, cid: str) -> str:
        rows = await asyncio.to_thread(self.store.conversation, cid, session.access)
        if not rows:
            return "<p>No segments (or not a conversation of your cases).</p>"
        clips = await asyncio.to_thread(self.store.clip_keys, cid, session.access)
        by_utt: dict[tuple[str, int], list[SegmentRow]] = {}
        for r in rows:
            by_utt.setdefault((r.leg, r.utterance), []).append(r)
        out = []
        low = self.settings.archive.low_confidence
        for (leg, utt), revs in sorted(by_utt.items(), key=lambda kv: kv[1][0].start_s):
            revs.sort(key=lambda r: r.revision)
            last = revs[-1]
            badge = (f'<span class="rev {_esc(last.source)}" title="revision {last.revision} by {_esc(last.source)}">'
                     f'r{last.revision} {_esc(last.source)}</span>' if last.revision else "")
            history = ""
            if len(revs) > 1:
                diffs = "".join(f"<li>r{a.revision}&rarr;r{b.revision} ({_esc(b.source)}): {_word_diff(a.text, b.text)}"
                                f"</li>" for a, b in zip(revs, revs[1:]))
                history = f"<details><summary>revisions</summary><ul>{diffs}</ul></details>"
            label = (f'<form class="inline label" method="post" action="/label"><input type="hidden" name="csrf" '
                     f'value="{_esc(session.csrf)}"><input type="hidden" name="conversation" value="{_esc(cid)}">'
                     f'<input type="hidden" name="leg" value="{_esc(leg)}"><input type="hidden" name="utterance" '
                     f'value="{utt}"><input name="text" size="40" value="{_esc(last.text)}" '
                     f'aria-label="corrected transcript"><button>Label</button></form>')
            audio = (f'<audio controls preload="none" class="clip" src="/conversations/{urllib.parse.quote(cid)}/audio/'
                     f'{urllib.parse.quote(leg)}/{utt}"></audio>' if (leg, utt) in clips else "")
            out.append(f'<div class="seg{" low" if last.confidence < low else ""}" id="seg-{_esc(leg)}-{utt}" '
                       f'data-revision="{last.revision}"><span class="spk">{_esc(last.speaker)}</span>'
                       f'<small>{last.start_s:.1f}s {_esc(leg)} conf {last.confidence:.2f}</small>{badge}'
                       f'<div class="text">{_esc(last.text)}</div>{audio}{history}{label}</div>')
        return "".join(out)

    async def audio(self, request: Request) -> Response:
        """A segment's audio clip as WAV, to an operator of its case only (audited as ``play``)."""
        session = self._session(request)
        if session is None:
            return PlainTextResponse("log in", 401)
        cid, leg, utt = request.path_params["cid"], request.path_params["leg"], request.path_params["utt"]
        target = f"{cid[:80]}/{leg[:64]}#{utt}"
        clip = await asyncio.to_thread(self.store.clip, cid, leg, utt, session.access)
        if clip is None:
            await self._audit(request, session.operator, "play_denied", target)
            return PlainTextResponse("no audio kept for this segment in your cases", 404)
        await self._audit(request, session.operator, "play", target)
        return Response(wav_bytes(clip.pcm, clip.sample_rate), media_type="audio/wav",
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    # -- cameras and fleet -----------------------------------------------------------------------
    async def cameras(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return RedirectResponse("/login", 303)
        await self._audit(request, session.operator, "view", "cameras")
        body = (f'<div id="live" data-fragment="/cameras/live" data-events="/events" data-kinds="result">'
                f'{await self._tiles(session)}</div>')
        return self._page("Cameras", body, session)

    async def cameras_live(self, request: Request) -> Response:
        session = self._session(request)
        return PlainTextResponse("log in", 401) if session is None else HTMLResponse(await self._tiles(session))

    async def _tiles(self, session: Session) -> str:
        rows = await asyncio.to_thread(self.store.latest_results, session.access)
        tiles = []
        for r in rows:
            thumb = await asyncio.to_thread(self.store.thumbnail, r.device, r.seq, session.access)
            boxes = [f["box"] for f in r.faces]
            w = max([b[0] + b[2] for b in boxes] + [320])
            h = max([b[1] + b[3] for b in boxes] + [240])
            image = ""
            if thumb is not None:  # kept only when the edge publishes thumbnails (vision.publish_thumbnails)
                w, h = thumb.frame_width, thumb.frame_height
                image = (f'<image class="thumb" href="/cameras/{urllib.parse.quote(r.device)}/thumbnail/{r.seq}" '
                         f'x="0" y="0" width="{w}" height="{h}" preserveAspectRatio="none"/>')
            svg = "".join(f'<rect x="{b[0]}" y="{b[1]}" width="{b[2]}" height="{b[3]}" fill="none" stroke="#e33" '
                          f'stroke-width="3"/><text x="{b[0]}" y="{max(12, b[1] - 4)}" fill="#e33" font-size="14">'
                          f'{_esc(f["label"])} {f["confidence"]:.2f}</text>' for b, f in zip(boxes, r.faces))
            tiles.append(f'<div class="tile"><b>{_esc(r.device)}</b> #{r.seq} {_esc(r.outcome)} by '
                         f'{_esc(r.served_by)}<br><svg width="240" height="180" viewBox="0 0 {w} {h}" '
                         f'style="background:#333">{image}{svg}</svg><br>{len(r.faces)} face(s), {_esc(_time(r.at_ms))}'
                         "</div>")
        return "".join(tiles) or "<p>No camera results yet.</p>"

    async def thumbnail(self, request: Request) -> Response:
        """A frame's thumbnail as JPEG, to an operator of its case only. Showing it is part of the
        audited ``view cameras``; a request for one of another case (or none kept) is audited
        ``thumbnail_denied``."""
        session = self._session(request)
        if session is None:
            return PlainTextResponse("log in", 401)
        device, seq = request.path_params["device"], request.path_params["seq"]
        thumb = await asyncio.to_thread(self.store.thumbnail, device, seq, session.access)
        if thumb is None:
            await self._audit(request, session.operator, "thumbnail_denied", f"{device[:64]}#{seq}")
            return PlainTextResponse("no thumbnail kept for this frame in your cases", 404)
        return Response(thumb.jpeg, media_type="image/jpeg",
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    async def fleet(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return RedirectResponse("/login", 303)
        await self._audit(request, session.operator, "view", "fleet")
        body = (f'<div id="live" data-fragment="/fleet/live" data-events="/events" data-kinds="status">'
                f'{await self._fleet(session)}</div>')
        return self._page("Fleet", body, session)

    async def fleet_live(self, request: Request) -> Response:
        session = self._session(request)
        return PlainTextResponse("log in", 401) if session is None else HTMLResponse(await self._fleet(session))

    async def _fleet(self, session: Session) -> str:
        rows = await asyncio.to_thread(self.store.inventory, session.access)
        out = []
        for r in rows:
            load = r.detail.get("load") or {}
            figures = (f"util {load.get('utilisation', 0):.2f}, queue {load.get('queue_delay_ms', 0):.0f} ms, "
                       f"{load.get('capacity_per_s', 0):.0f}/s, overflow {load.get('overflow', 0):.2f}"
                       if load else "")
            state = '<span class="on">online</span>' if r.online else '<span class="off">offline</span>'
            out.append(f"<tr><td>{_esc(r.kind)}</td><td>{_esc(r.name)}</td><td>{state}</td>"
                       f"<td>{_esc(_time(r.at_ms))}</td><td>{_esc(figures)}</td></tr>")
        return ("<table><tr><th>Kind</th><th>Name</th><th>State</th><th>Last seen</th><th>Load</th></tr>"
                + "".join(out) + "</table>") if out else "<p>No edges or devices reported yet.</p>"

    # -- search and label ------------------------------------------------------------------------
    async def search(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return RedirectResponse("/login", 303)
        qp = request.query_params
        fields = {k: qp.get(k, "")[:200] for k in ("q", "conversation", "speaker", "device", "case", "since", "until")}
        form = "".join(f'<label>{k} <input name="{k}" id="search-{k}" value="{_esc(v)}"></label> '
                       for k, v in fields.items())
        body = f'<form method="get" action="/search">{form}<button id="search-go">Search</button></form>'
        if any(fields.values()):
            try:
                since = parse_time_ms(fields["since"]) if fields["since"] else None
                until = parse_time_ms(fields["until"]) if fields["until"] else None
            except Exception:
                return self._page("Search", body + '<p class="err">since/until: ISO 8601 or epoch ms</p>', session, 400)
            q = SearchQuery(text=fields["q"], conversation=fields["conversation"] or None,
                            speaker=fields["speaker"] or None, device=fields["device"] or None,
                            case_id=fields["case"] or None, since_ms=since, until_ms=until)
            rows = await asyncio.to_thread(self.store.search, q, session.access)
            await self._audit(request, session.operator, "search", fields["q"],
                              json.dumps({k: v for k, v in fields.items() if v and k != "q"} | {"hits": len(rows)}))
            hits = "".join(f'<tr class="hit"><td><a href="/conversations/{urllib.parse.quote(r.conversation)}">'
                           f'{_esc(r.conversation)}</a></td><td>{_esc(r.case_id or "-")}</td><td>{_esc(r.speaker)}'
                           f'</td><td>r{r.revision}</td><td>{_esc(r.text)}</td></tr>' for r in rows)
            body += (f'<p id="hits">{len(rows)} hit(s)</p><table><tr><th>Conversation</th><th>Case</th>'
                     f'<th>Speaker</th><th>Rev</th><th>Text</th></tr>{hits}</table>')
        return self._page("Search", body, session)

    async def label(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return RedirectResponse("/login", 303)
        form = await self._form(request)
        if not self._check_csrf(session, form):
            await self._audit(request, session.operator, "label_denied", detail="csrf")
            return PlainTextResponse("bad CSRF token", 403)
        cid, leg, text = form.get("conversation", ""), form.get("leg", ""), form.get("text", "").strip()
        try:
            check_id(cid, "conversation")
            check_id(leg, "leg")
            utt = int(form.get("utterance", ""))
        except ValueError:
            return PlainTextResponse("bad segment", 400)
        rows = [r for r in await asyncio.to_thread(self.store.conversation, cid, session.access)
                if r.leg == leg and r.utterance == utt]
        if not rows or not text:
            await self._audit(request, session.operator, "label_denied", f"{cid}/{leg}#{utt}")
            return PlainTextResponse("no such segment in your cases", 404)
        device = rows[-1].device or "console"
        label = Label(key=example_key(ASR_MODEL, device, f"{cid}.{leg}", utt, 0), text=text[:2000],
                      source=f"operator:{session.operator}", labelled_at_ms=now_ms())
        try:
            await self.send_label(label)
        except Exception as exc:
            log.warning("console: label not sent: %s", exc)
            return self._page("Label", f'<p class="err">The label could not be sent ({_esc(type(exc).__name__)}); '
                              "try again.</p>", session, 503)
        await self._audit(request, session.operator, "label", f"{cid}/{leg}#{utt}", json.dumps({"text": text[:500]}))
        return RedirectResponse(f"/conversations/{urllib.parse.quote(cid)}", 303)

    # -- live ------------------------------------------------------------------------------------
    async def events(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return PlainTextResponse("log in", 401)
        viewer = self.hub.join(session.access, request.query_params.get("conversation"))

        async def stream() -> AsyncIterator[bytes]:
            stopping = asyncio.ensure_future(self._stop.wait())
            try:
                yield b": live\n\n"
                while not self._stop.is_set():
                    get = asyncio.ensure_future(viewer.queue.get())
                    await asyncio.wait({get, stopping}, timeout=15.0, return_when=asyncio.FIRST_COMPLETED)
                    if not get.done():
                        get.cancel()
                        yield b": keepalive\n\n"
                        continue
                    yield f"data: {json.dumps(get.result())}\n\n".encode()
            finally:
                stopping.cancel()
                self.hub.leave(viewer)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def metrics(self, _request: Request) -> Response:
        """Prometheus metrics of the console (login outcomes; no case data)."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, _request: Request) -> Response:
        return PlainTextResponse("ok\n" if self.hub.ready.is_set() else "live feed down\n",
                                 200 if self.hub.ready.is_set() else 503)


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + "Z"


@dataclass
class RunningConsole:
    console: Console
    url: str
    server: Any
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.console.close()  # ends the event streams, so that open pages do not hold the shutdown
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 15)


def _uvicorn_config(app: Any, settings: Settings, host: str, port: int) -> Any:
    import uvicorn

    a = settings.archive
    tls = a.console_cert_file is not None and a.console_key_file is not None
    return uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=5,
                          ssl_certfile=str(a.console_cert_file) if tls else None,
                          ssl_keyfile=str(a.console_key_file) if tls else None)


async def start_console(settings: Settings, store: Store, *, host: str = "127.0.0.1", port: int = 0,
                        send_label: LabelSender | None = None) -> RunningConsole:
    """Serve the console in this event loop (port 0: a free port); ``await .stop()``."""
    import uvicorn

    a = settings.archive
    tls = a.console_cert_file is not None and a.console_key_file is not None
    console = Console(settings, store, send_label=send_label, secure_cookies=tls)

    class Embedded(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # the host process owns the signals
            yield

    server = Embedded(_uvicorn_config(console.app, settings, host, port))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise OSError("the console did not start")
        await asyncio.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return RunningConsole(console, f"{'https' if tls else 'http'}://{host}:{bound}", server, task)


def serve_console(settings: Settings, *, store_url: str, host: str, port: int) -> None:
    """Run the console until SIGINT/SIGTERM (``edge-offload console``); exits cleanly on either."""
    import signal

    a = settings.archive
    if (a.console_cert_file is None) != (a.console_key_file is None):
        raise ValueError("archive.console_cert_file and archive.console_key_file go together")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        store = await asyncio.to_thread(open_store, store_url)
        try:
            running = await start_console(settings, store, host=host, port=port)
            print(f"console on {running.url}", flush=True)
            done = asyncio.ensure_future(stop.wait())
            await asyncio.wait({done, running.task}, return_when=asyncio.FIRST_COMPLETED)
            done.cancel()
            if running.task.done():
                running.task.result()  # the server ended by itself: say why
            else:
                await running.stop()
        finally:
            store.close()

    asyncio.run(run())
