"""The live page's login: password hashes, sessions, CSRF and cross-site checks, login rate limits."""

from __future__ import annotations

import subprocess
import sys

import pytest

from calmd.config import ConfigError, parse_config
from calmd.page import auth

from .conftest import ENV

BASE = {"model": {"path": "m", "classifier": "c"}, "streams": [{"id": "a", "type": "mic"}]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_password_verifies_against_its_salted_hash_and_nothing_else() -> None:
    stored = auth.hash_password("correct horse battery")
    assert stored.startswith("scrypt$32768$8$1$")
    assert auth.verify_password("correct horse battery", stored)
    assert not auth.verify_password("correct horse batterY", stored)
    assert not auth.verify_password("", stored)
    assert not auth.verify_password("x" * (auth.MAX_PASSWORD_BYTES + 1), stored)
    assert auth.hash_password("correct horse battery") != stored  # a fresh salt each time
    salt = bytes(range(16))
    assert auth.hash_password("pw", salt) == auth.hash_password("pw", salt)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "pbkdf2$1$2$3$AAAA$AAAA",
        "scrypt$32768$8$1$not-base64!$AAAA",
        "scrypt$1024$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAA==",  # N too small
        "scrypt$32768$8$1$AAAA$AAAAAAAAAAAAAAAAAAAAAA==",  # salt too short
    ],
)
def test_a_malformed_or_weak_hash_is_refused(stored: str) -> None:
    with pytest.raises(auth.HashFormatError):
        auth.parse_hash(stored)


def test_the_configuration_refuses_a_password_hash_it_cannot_use_and_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"page\.password_hash: .*not a password hash"):
        parse_config({**BASE, "page": {"password_hash": "hunter2"}})
    cfg = parse_config({**BASE, "page": {"password_hash": auth.hash_password("a long password")}})
    assert cfg.page.password_hash is not None and cfg.page.secure_cookie is False


def test_calmd_hash_password_prints_a_line_to_paste_into_the_page_section() -> None:
    proc = subprocess.run([sys.executable, "-m", "calmd", "--hash-password"], input="a long password\n",
                          capture_output=True, text=True, env=ENV, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    key, _, value = proc.stdout.strip().partition(" = ")
    assert key == "password_hash"
    assert auth.verify_password("a long password", value.strip('"'))
    short = subprocess.run([sys.executable, "-m", "calmd", "--hash-password"], input="short\n",
                           capture_output=True, text=True, env=ENV, timeout=120)  # fmt: skip
    assert short.returncode == 2 and "at least 8 characters" in short.stderr


def test_the_session_cookie_is_httponly_and_samesite_strict_and_secure_only_when_asked() -> None:
    cookie = auth.session_cookie("abc", 3600, secure=False)
    assert cookie.startswith("calmd_session=abc;")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    assert "; Secure" in auth.session_cookie("abc", 3600, secure=True)
    assert auth.session_id("theme=dark; calmd_session=abc; other=1") == "abc"
    assert auth.session_id("calmd_session=") is None and auth.session_id(None) is None


def test_sessions_expire_and_the_oldest_goes_when_there_are_too_many() -> None:
    clock = Clock()
    sessions = auth.Sessions(ttl_s=60, clock=clock)
    sid, session = sessions.create()
    assert sessions.get(sid) is session and sessions.get("forged") is None
    clock.now += 61
    assert sessions.get(sid) is None
    first, _ = sessions.create()
    for _ in range(auth.SESSIONS_KEPT):
        sessions.create()
    assert sessions.get(first) is None and len(sessions.by_id) == auth.SESSIONS_KEPT


def test_the_csrf_token_must_be_the_sessions_own() -> None:
    _, session = auth.Sessions(60).create()
    _, other = auth.Sessions(60).create()
    assert auth.csrf_matches(session, session.csrf)
    assert not auth.csrf_matches(session, other.csrf)
    assert not auth.csrf_matches(session, None)
    assert not auth.csrf_matches(session, "")


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({}, False),  # not a browser (curl, a script): the session and its token still decide
        ({"Host": "127.0.0.1:9110", "Origin": "http://127.0.0.1:9110", "Sec-Fetch-Site": "same-origin"}, False),
        ({"Host": "127.0.0.1:9110", "Origin": "https://127.0.0.1:9110"}, False),  # behind a TLS proxy
        ({"Host": "127.0.0.1:9110", "Origin": "http://evil.example"}, True),
        ({"Host": "127.0.0.1:9110", "Origin": "http://127.0.0.1:8080"}, True),  # same site, other origin
        ({"Host": "127.0.0.1:9110", "Origin": "null"}, True),  # a sandboxed frame or a file:// page
        ({"Origin": "http://127.0.0.1:9110"}, True),  # no Host to compare with
        ({"Host": "127.0.0.1:9110", "Sec-Fetch-Site": "cross-site"}, True),
        ({"Host": "127.0.0.1:9110", "Sec-Fetch-Site": "same-site"}, True),
        ({"Host": "127.0.0.1:9110", "Sec-Fetch-Site": "none"}, True),
    ],
)
def test_a_write_from_another_origin_is_cross_site(headers: dict[str, str], refused: bool) -> None:
    assert (auth.cross_site(headers) is not None) == refused


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("127.0.0.1:9110", False),
        ("localhost:9110", False),
        ("[::1]:9110", False),
        ("127.0.0.2", False),
        ("calm.example.org", False),  # listed in allowed_hosts: a TLS proxy's own name
        ("rebound.example.net:9110", True),  # a page elsewhere whose name now points at 127.0.0.1
        ("10.0.0.5:9110", True),
    ],
)
def test_a_write_naming_a_foreign_host_is_refused_on_loopback(host: str, refused: bool) -> None:
    assert (auth.foreign_host({"Host": host}, {"calm.example.org"}) is not None) == refused


def test_failed_logins_are_limited_per_address_until_the_oldest_leaves_the_window() -> None:
    clock = Clock()
    limiter = auth.LoginLimiter(max_failures=3, window_s=60, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") is None
        limiter.failed("10.0.0.1")
        clock.now += 1
    assert limiter.retry_after("10.0.0.1") == 57  # the first failure (at 0 s) leaves the window at 60 s
    assert limiter.retry_after("10.0.0.2") is None  # another address is not held up
    clock.now += 57
    assert limiter.retry_after("10.0.0.1") is None
    limiter.failed("10.0.0.1")
    limiter.succeeded("10.0.0.1")
    assert "10.0.0.1" not in limiter.failures


def test_the_limiter_forgets_the_least_recently_seen_address_past_its_bound(monkeypatch) -> None:
    monkeypatch.setattr(auth, "ADDRESSES_KEPT", 3)
    limiter = auth.LoginLimiter(max_failures=1, window_s=60)
    for n in range(5):
        limiter.failed(f"10.0.0.{n}")
    assert list(limiter.failures) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]


@pytest.mark.parametrize("section", ["Review on the live page", "Page login"])
def test_the_review_and_login_lines_in_the_guide_are_a_valid_configuration(section: str) -> None:
    from .test_guide_config import calmd_configs  # the guide (docs/) took over the README's reference

    for cfg in calmd_configs(("review.md", section)):
        assert cfg.page.password_hash is not None and cfg.page.host == "127.0.0.1"
