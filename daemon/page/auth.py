"""Who may change things through the live page: a password kept as a salted scrypt hash in the
configuration, cookie sessions, a CSRF token per session, and login attempts limited per client address.

Reading the page needs no login. Every write needs a session cookie (HttpOnly, SameSite=Strict; Secure when
page.secure_cookie says the page is reached over TLS), the session's CSRF token in the X-CSRF-Token header,
a JSON body (a cross-site form cannot send one without a CORS preflight, which calmd never answers), and,
when the browser says where the request comes from (Origin, Sec-Fetch-Site), the page itself.
Standard library only: hashlib.scrypt, hmac.compare_digest and secrets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

SCHEME = "scrypt"
# scrypt's cost: 2^15 x 8 x 128 bytes = 32 MiB and ~0.1 s per hash. A guess costs an attacker as much, and
# login attempts are limited per address besides.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
MAX_PASSWORD_BYTES = 1024  # longer ones are refused before hashing
COOKIE = "calmd_session"
CSRF_HEADER = "X-CSRF-Token"
SESSIONS_KEPT = 64  # at most this many sessions at once; the least recently used goes first
ADDRESSES_KEPT = 10_000  # login-attempt histories kept; the least recently seen address is forgotten


class Headers(Protocol):
    """A request's headers: http.server's message, or a dict in tests."""

    def get(self, name: str, /) -> str | None: ...


class HashFormatError(ValueError):
    """A password hash that is not one `calmd --hash-password` writes."""


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$<salt>$<key>` (base64): what page.password_hash holds."""
    if not password:
        raise ValueError("the password is empty")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    key = _scrypt(password.encode(), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES)
    return "$".join([SCHEME, str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(key)])


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """(N, r, p, salt, key) of a stored hash; HashFormatError naming what is wrong."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise HashFormatError(f"expected {SCHEME}$N$r$p$salt$key as `calmd --hash-password` prints it")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError as e:
        raise HashFormatError(f"unreadable number or base64 ({e})") from None
    if n < 2**14 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or len(salt) < 16 or len(key) < 16:
        raise HashFormatError("scrypt parameters too weak or out of range (N a power of 2 >= 16384, salt >= 16 bytes)")
    return n, r, p, salt, key


def verify_password(password: str, stored: str) -> bool:
    """Whether password hashes to stored, compared in constant time."""
    n, r, p, salt, key = parse_hash(stored)
    given = password.encode()
    if len(given) > MAX_PASSWORD_BYTES:
        return False
    return hmac.compare_digest(_scrypt(given, salt, n, r, p, len(key)), key)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r * p, dklen=dklen)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- sessions ---------------------------------------------------------------------------------------


@dataclass
class Session:
    csrf: str  # sent back in X-CSRF-Token with every write
    expires: float  # monotonic


class Sessions:
    """Logged-in browsers, in memory only: a restart of calmd logs everyone out."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.clock = clock
        self.lock = threading.Lock()
        self.by_id: OrderedDict[str, Session] = OrderedDict()

    def create(self) -> tuple[str, Session]:
        sid, session = secrets.token_urlsafe(32), Session(secrets.token_urlsafe(32), self.clock() + self.ttl_s)
        with self.lock:
            self.by_id[sid] = session
            while len(self.by_id) > SESSIONS_KEPT:
                self.by_id.popitem(last=False)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self.lock:
            session = self.by_id.get(sid)
            if session is None:
                return None
            if session.expires <= self.clock():
                del self.by_id[sid]
                return None
            self.by_id.move_to_end(sid)
            return session

    def end(self, sid: str | None) -> None:
        with self.lock:
            self.by_id.pop(sid or "", None)


def session_id(cookie_header: str | None) -> str | None:
    """The session cookie's value in a Cookie header."""
    for part in (cookie_header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


def session_cookie(sid: str, max_age_s: int, secure: bool) -> str:
    flags = f"; Max-Age={max_age_s}; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
    return f"{COOKIE}={sid}{flags}"


def cleared_cookie(secure: bool) -> str:
    return session_cookie("", 0, secure)


# ---- cross-site requests ----------------------------------------------------------------------------


def cross_site(headers: Headers) -> str | None:
    """Why a write does not come from the page itself, or None. Browsers send Origin with every POST made
    by fetch and Sec-Fetch-Site with every request; a client that sends neither (curl, a script) is no
    browser being tricked, and still needs the session and its CSRF token."""
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return f"Sec-Fetch-Site is {site!r}, not 'same-origin'"
    origin = headers.get("Origin")
    if origin is not None:
        host = headers.get("Host")
        parts = urlsplit(origin)
        if origin == "null" or host is None or parts.netloc.lower() != host.lower():
            return f"Origin {origin!r} is not this page ({host!r})"
    return None


LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def foreign_host(headers: Headers, allowed: Collection[str] = ()) -> str | None:
    """For a page bound to loopback: why the Host header names another machine, or None. A page elsewhere whose
    name was re-pointed at 127.0.0.1 (DNS rebinding) is same-origin with itself and passes cross_site; it
    cannot hold this page's cookie, but it could spend the login attempts of 127.0.0.1. Its Host gives it away."""
    host = headers.get("Host")
    if host is None:
        return None  # HTTP/1.0 clients: no browser sends a request without it
    name = (urlsplit(f"//{host}").hostname or "").lower()
    if name in LOOPBACK_NAMES or name.startswith("127.") or name in allowed:
        return None
    return f"Host {host!r} is not a loopback name and not in [page] allowed_hosts (the page listens on loopback)"


def csrf_matches(session: Session, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(session.csrf.encode(), given.encode())


# ---- login attempts ---------------------------------------------------------------------------------


class LoginLimiter:
    """At most max_failures failed logins per client address within window_s; then every attempt from that
    address (even with the right password) is refused until the oldest failure leaves the window."""

    def __init__(self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self.lock = threading.Lock()
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        """Seconds until address may try again, or None when it may now."""
        now = self.clock()
        with self.lock:
            times = self.failures.get(address)
            if times is None:
                return None
            while times and times[0] <= now - self.window_s:
                times.popleft()
            if not times:
                del self.failures[address]
                return None
            if len(times) < self.max_failures:
                return None
            return max(1, int(times[0] + self.window_s - now + 0.999))

    def failed(self, address: str) -> None:
        with self.lock:
            times = self.failures.setdefault(address, deque())
            self.failures.move_to_end(address)
            times.append(self.clock())
            while len(times) > self.max_failures:
                times.popleft()
            while len(self.failures) > ADDRESSES_KEPT:
                self.failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self.lock:
            self.failures.pop(address, None)
