"""The page's JSON API beside what it shows: the login session, and the review's writes.

GET  /api/session        {"writes": "enabled"|"disabled", "logged_in", "csrf" (when logged in), "why"}
GET  /api/review         the review (calmd.review.workflow.Review.state), readable without a login; one page of
                         the saved detections, filtered by ?label= &stream= &min_score= &max_score= &since=
                         &until= &unreviewed=1 &anchor= &offset= &limit= (calmd.review.query)
POST /api/login          {"password"}: a session cookie and its CSRF token; 401 wrong, 429 too many tries
POST /api/logout
POST /api/review/verdict {"clip", "verdict": right|wrong|relabel|new|clear, "label", "positive" (new only)}
POST /api/review/verdicts {"clips": [...], "verdict", "label"}: one verdict for many clips
POST /api/review/apply   refit with the pending verdicts (202: a job the page follows in /api/review)
POST /api/review/undo    back to the classifier before (202)
POST /api/review/restore {"version": "..."}: serve any version the page made or found (202; redo too)

Every POST but login needs the session cookie and X-CSRF-Token; every POST needs a JSON body and, from a
browser, the page's own origin (see auth.py).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import PageSection
from ..refusals import Refused
from ..review.query import Query
from . import auth

if TYPE_CHECKING:
    from ..review.workflow import Review

log = logging.getLogger("calmd.page")

BULK_MAX = 500
ENABLE = "set [page] password_hash (`calmd --hash-password` prints one) and restart calmd"


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class PageApi:
    def __init__(self, cfg: PageSection):
        self.password_hash = cfg.password_hash
        self.loopback = ipaddress.ip_address(cfg.host).is_loopback
        self.allowed_hosts = {h.lower() for h in cfg.allowed_hosts}
        self.ttl_s = cfg.session_hours * 3600
        self.secure = cfg.secure_cookie
        self.sessions = auth.Sessions(self.ttl_s)
        self.limiter = auth.LoginLimiter(cfg.login_max_failures, cfg.login_window_s)
        self.review: Review | None = None  # attached once calmd runs (calmd.main)

    # ---- reads -----------------------------------------------------------------------------------
    def get(self, path: str, headers: auth.Headers, params: dict[str, str] | None = None) -> Reply | None:
        if path == "/api/session":
            return Reply(200, self.session_info(headers))
        if path == "/api/review":
            if self.review is None:
                return Reply(200, {"enabled": False, "why": "no review: calmd is starting, or this is not calmd"})
            return Reply(200, self.review.state(Query.parse(params or {})))
        return None

    def session_info(self, headers: auth.Headers) -> dict[str, Any]:
        if self.password_hash is None:
            why = f"the page is read-only: to enable writes, {ENABLE}"
            return {"writes": "disabled", "logged_in": False, "why": why}
        session = self.sessions.get(auth.session_id(headers.get("Cookie")))
        info: dict[str, Any] = {"writes": "enabled", "logged_in": session is not None}
        if session is not None:
            info["csrf"] = session.csrf
        return info

    # ---- writes ----------------------------------------------------------------------------------
    def post(self, path: str, headers: auth.Headers, body: bytes, client: str) -> Reply:
        routes = {"/api/login", "/api/logout", "/api/review/verdict", "/api/review/apply", "/api/review/undo",
                  "/api/review/restore", "/api/review/verdicts"}  # fmt: skip
        if path not in routes:
            raise Refused(404, f"no API at {path!r}")
        if self.password_hash is None:
            raise Refused(403, f"writes are disabled: {ENABLE}")
        why = auth.cross_site(headers) or (auth.foreign_host(headers, self.allowed_hosts) if self.loopback else None)
        if why is not None:
            raise Refused(403, f"cross-site request refused: {why}")
        data = self._json(headers, body)
        if path == "/api/login":
            return self._login(data, client)
        sid = auth.session_id(headers.get("Cookie"))
        session = self.sessions.get(sid)
        if session is None:
            raise Refused(403, "log in first: writes need a session")
        if not auth.csrf_matches(session, headers.get(auth.CSRF_HEADER)):
            raise Refused(403, f"missing or wrong {auth.CSRF_HEADER} header")
        if path == "/api/logout":
            self.sessions.end(sid)
            return Reply(200, {"logged_in": False}, {"Set-Cookie": auth.cleared_cookie(self.secure)})
        if self.review is None:
            raise Refused(503, "the review is not ready: calmd is starting")
        if path == "/api/review/verdict":
            clip, kind, label = data.get("clip"), data.get("verdict"), data.get("label")
            if not isinstance(clip, str) or not isinstance(kind, str) or not isinstance(label, (str, type(None))):
                raise Refused(400, 'expected {"clip": "...", "verdict": "...", "label": "..." or null}')
            return Reply(200, self.review.verdict(client, clip, kind, label, _positive(data)))
        if path == "/api/review/verdicts":  # one verdict for many clips (the page's bulk verdicts)
            clips, kind, label = data.get("clips"), data.get("verdict"), data.get("label")
            if not isinstance(clips, list) or not all(isinstance(c, str) for c in clips) or not isinstance(kind, str):
                raise Refused(400, 'expected {"clips": ["...", ...], "verdict": "...", "label": "..." or null}')
            if not isinstance(label, (str, type(None))) or len(clips) > BULK_MAX:
                raise Refused(400, f"a label is a string or null, and at most {BULK_MAX} clips go in one request")
            positive = _positive(data)
            return Reply(200, {"verdicts": [self.review.verdict(client, c, kind, label, positive) for c in clips]})
        version = data.get("version")
        if not isinstance(version, (str, type(None))):
            raise Refused(400, 'expected {"version": "..."}')
        return Reply(202, {"job": self.review.start(client, path.rsplit("/", 1)[1], version)})

    def _login(self, data: dict[str, Any], client: str) -> Reply:
        assert self.password_hash is not None
        wait = self.limiter.retry_after(client)
        if wait is not None:
            message = f"too many failed logins from {client}: try again in {wait} s"
            raise Refused(429, message, {"Retry-After": str(wait)})
        password = data.get("password")
        if not isinstance(password, str) or not auth.verify_password(password, self.password_hash):
            self.limiter.failed(client)
            log.warning("page: failed login from %s", client)
            raise Refused(401, "wrong password")
        self.limiter.succeeded(client)
        sid, session = self.sessions.create()
        log.info("page: login from %s", client)
        cookie = auth.session_cookie(sid, int(self.ttl_s), self.secure)
        return Reply(200, {"logged_in": True, "csrf": session.csrf}, {"Set-Cookie": cookie})

    @staticmethod
    def _json(headers: auth.Headers, body: bytes) -> dict[str, Any]:
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise Refused(415, f"a write sends JSON (Content-Type: application/json), not {ctype or 'nothing'!r}")
        try:
            data = json.loads(body or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise Refused(400, f"the body is not JSON ({e})") from None
        if not isinstance(data, dict):
            raise Refused(400, "the body is not a JSON object")
        return data


def _positive(data: dict[str, Any]) -> bool:
    """A verdict's "positive" (a new class joining the detector's positive group): true, false or absent."""
    positive = data.get("positive", False)
    if not isinstance(positive, bool):
        raise Refused(400, f'"positive": true or false, not {positive!r}')
    return positive
