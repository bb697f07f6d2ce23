"""The review on calmd's live page, end to end: one real calmd (tiny model, a looping file of three sounds)
with its page on 127.0.0.1, driven by headless Chromium and by plain HTTP clients.

The tests share that calmd and run in file order: refused writes first (nothing may change), the browser's
relabel, Apply and Undo next, the login rate limit last (it locks 127.0.0.1 out for a few seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from calm_core.fingerprint import file_sha256
from calm_core.messages.client import Subscriber
from calm_core.messages.events import LabelEvent, StatusEvent
from calm_core.testing import voiced
from calmd.page.auth import hash_password

from .conftest import ENV, Daemon, endpoint_of, free_port, page_login, page_request, wait_for, write_config
from .test_page import PAGE_WAIT_S, browser, screenshot, shown  # noqa: F401  (browser: a fixture)
from .test_signals import next_matching

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
SR = 16_000
GAP_S, SOUND_S, QUIET_S = 0.5, 1.0, 2.0
SLOT_S = GAP_S + SOUND_S + QUIET_S  # one sound of the loop, with the quiet around it
SOUNDS = ((280.0, 0), (270.0, 1), (290.0, 2))  # voice-like sounds (f0, noise seed) no class of the tones has
LOOP_S = SLOT_S * len(SOUNDS)
MAX_FAILURES, WINDOW_S = 3, 5.0
NEW_CLASS = "voice"


@dataclass
class Calmd:
    daemon: Daemon
    port: int
    endpoint: str
    live: Path  # model.classifier
    review_dir: Path
    clips: Path
    config: Path

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        return page_request(self.port, method, path, body, headers, raw)

    def review(self) -> dict[str, Any]:
        status, _, body = self.request("GET", "/api/review")
        assert status == 200, body
        return dict(json.loads(body))

    def login(self) -> tuple[str, str]:
        """(Cookie header, CSRF token) of a fresh session."""
        return page_login(self.port, PASSWORD)


def slot(start_s: float) -> int:
    """Which sound of the loop a segment or event starting at start_s (stream time) belongs to."""
    return int((start_s % LOOP_S) // SLOT_S)


def start_calmd(root: Path, tiny_model_dir: Path, tone_sets: dict[str, Path], env: dict[str, str] | None = None
                ) -> Calmd:  # fmt: skip
    """A calmd with its page, clips and review under root, serving a classifier fitted there; up when returned."""
    live = root / "live.calm.safetensors"
    # Heads of layer 0 only: the refit cannot need a layer calmd has not loaded, so a reload (not a restart) does.
    # The vote, not combiner auto's probe after teaching: these tests are about the review's mechanics (what the
    # combiner does with taught clips is measured in bench/adaptation.py); on the tiny random model's layer 0 the
    # probe does not pick the 2 taught clips out of the tones.
    subprocess.run(
        [sys.executable, "-m", "calm_core.cli", "-q", "fit", "--model", str(tiny_model_dir), "--support",
         str(tone_sets["support"]), "--out", str(live), "--max-layer", "0", "--top-k", "3", "--cache-dir",
         str(root / "cache"), "--combiner", "vote"],
        check=True, capture_output=True, env=ENV, timeout=300,
    )  # fmt: skip
    quiet = lambda s: np.zeros(int(s * SR), np.float32)  # noqa: E731
    loop = np.concatenate([np.concatenate([quiet(GAP_S), voiced(f0, SOUND_S, seed=seed), quiet(QUIET_S)])
                           for f0, seed in SOUNDS])  # fmt: skip
    sf.write(root / "sounds.wav", loop, SR, subtype="PCM_16")
    port, clips = free_port(), root / "clips"
    extra = (
        "[events]\nenabled = true\nend_after_s = 1.0\n\n"
        f'[clips]\nenabled = true\ndir = "{clips}"\npre_roll_s = 0.3\npost_roll_s = 0.3\nmin_free_mb = 0\n\n'
        f'[page]\nenabled = true\nport = {port}\npassword_hash = "{hash_password(PASSWORD)}"\n'
        f"login_max_failures = {MAX_FAILURES}\nlogin_window_s = {WINDOW_S}\n"
    )
    config = write_config(
        root / "calmd.toml", tiny_model_dir, live,
        f'[[streams]]\nid = "room"\ntype = "file"\npath = "{root / "sounds.wav"}"\nloop = true\nrealtime = true\n',
        extra,
    )  # fmt: skip
    c = Calmd(Daemon(config, env=env), port, endpoint_of(config), live, root / "live.review", clips, config)
    restart(c, env)
    return c


def restart(c: Calmd, env: dict[str, str] | None = None) -> None:
    """Start calmd again (when it has stopped) and wait until its page serves the review."""
    if c.daemon.proc.poll() is not None:
        c.daemon = Daemon(c.config, env=env)
    daemon = c.daemon
    try:
        assert wait_for(lambda: _up(c) or daemon.proc.poll() is not None, PAGE_WAIT_S), daemon.log()[-3000:]
        assert daemon.proc.poll() is None, daemon.log()[-3000:]
    except AssertionError:
        daemon.stop()
        raise


@pytest.fixture(scope="module")
def calmd(tmp_path_factory, tiny_model_dir: Path, tone_sets: dict[str, Path]) -> Iterator[Calmd]:
    c = start_calmd(tmp_path_factory.mktemp("review"), tiny_model_dir, tone_sets)
    try:
        yield c
    finally:
        code, log = c.daemon.stop()
    assert code == 0, log[-3000:]
    assert "still running at exit" not in log


def _up(c: Calmd) -> bool:
    try:
        return c.review().get("classifier") is not None
    except OSError:
        return False


def detections_of_two_sounds(c: Calmd) -> list[dict[str, Any]]:
    """Saved detections of the first two sounds of the loop, each with its picture (newest of each)."""

    def found() -> list[dict[str, Any]] | None:
        by_slot: dict[int, dict[str, Any]] = {}
        for d in c.review()["detections"]:
            side = json.loads((c.clips / d["clip"]).with_suffix(".json").read_text())
            if d["picture"] and slot(side["start_s"]) in (0, 1):
                by_slot.setdefault(slot(side["start_s"]), {**d, "start_s": side["start_s"]})
        return [by_slot[0], by_slot[1]] if len(by_slot) == 2 else None

    two = wait_for(found, PAGE_WAIT_S, interval=0.5)
    assert two is not None, c.daemon.log()[-3000:]
    return two


def untouched(c: Calmd) -> tuple[str, bool]:
    """What a refused write must leave as it was: the classifier file and the absence of any review state."""
    return file_sha256(c.live), (c.review_dir / "state.json").exists()


def test_without_a_login_every_write_is_refused_and_nothing_changes(calmd: Calmd) -> None:
    clip = detections_of_two_sounds(calmd)[0]["clip"]
    before = untouched(calmd)
    status, _, body = calmd.request("GET", "/api/session")
    assert json.loads(body) == {"writes": "enabled", "logged_in": False}
    writes = [("/api/review/verdict", {"clip": clip, "verdict": "new", "label": NEW_CLASS}),
              ("/api/review/apply", {}), ("/api/review/undo", {}), ("/api/logout", {})]  # fmt: skip
    for path, body in writes:
        status, _, text = calmd.request("POST", path, body)
        assert status == 403 and b"log in first" in text, (path, status, text)
        forged = {"Cookie": "calmd_session=made-up", "X-CSRF-Token": "made-up"}
        assert calmd.request("POST", path, body, forged)[0] == 403
    assert untouched(calmd) == before
    assert all(d["verdict"] is None for d in calmd.review()["detections"])
    assert calmd.review()["job"] is None


def test_a_forged_cross_site_post_is_refused(calmd: Calmd) -> None:
    clip = detections_of_two_sounds(calmd)[0]["clip"]
    cookie, csrf = calmd.login()
    here = f"http://127.0.0.1:{calmd.port}"
    verdict = {"clip": clip, "verdict": "wrong", "label": None}
    before = untouched(calmd)
    forgeries = {
        "no token": {"Cookie": cookie},
        "a wrong token": {"Cookie": cookie, "X-CSRF-Token": csrf[:-2] + "xx"},
        "a foreign origin": {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": "http://evil.example"},
        "another port": {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": "http://127.0.0.1:1"},
        "cross-site fetch": {"Cookie": cookie, "X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"},
    }
    for what, headers in forgeries.items():
        status, _, text = calmd.request("POST", "/api/review/verdict", verdict, headers)
        assert status == 403, (what, status, text)
    # what a cross-site <form> can send: a form body (no JSON, so no preflight-free JSON), no header of its own
    form = {"Cookie": cookie, "Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"}
    assert calmd.request("POST", "/api/review/verdict", raw=b"clip=x&verdict=wrong", headers=form)[0] == 403
    same = {"Cookie": cookie, "X-CSRF-Token": csrf, "Content-Type": "text/plain"}
    assert calmd.request("POST", "/api/review/verdict", raw=json.dumps(verdict).encode(), headers=same)[0] == 415
    assert untouched(calmd) == before
    assert all(d["verdict"] is None for d in calmd.review()["detections"])
    # the same request from the page itself is taken (and undone again)
    ok = {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": here, "Sec-Fetch-Site": "same-origin"}
    assert calmd.request("POST", "/api/review/verdict", verdict, ok)[0] == 200
    assert calmd.request("POST", "/api/review/verdict", {**verdict, "verdict": "clear"}, ok)[0] == 200
    assert calmd.request("POST", "/api/logout", {}, ok)[0] == 200
    assert calmd.request("POST", "/api/review/verdict", verdict, ok)[0] == 403  # the session has ended


CARD = "return [...document.querySelectorAll('article.detection')].find((a) => a.dataset.clip === arguments[0]);"
JOB = """const job = document.getElementById('review-job');
return /job-(done|failed)/.test(job.className) && job.textContent.startsWith(arguments[0])
  ? [job.className, job.textContent, job.dataset.classifier] : null;"""


IN_CARD = CARD.replace("return ", "const card = ")


def click(driver: Any, selector: str, clip: str | None = None) -> None:
    if clip is None:
        driver.execute_script("document.querySelector(arguments[0]).click()", selector)
    else:
        shown(driver, CARD, clip)
        driver.execute_script(IN_CARD + "card.querySelector(arguments[1]).click()", clip, selector)


def test_in_chromium_a_detection_relabelled_as_a_new_class_is_applied_and_undone(
    calmd: Calmd,
    browser: Any,  # noqa: F811
    tmp_path: Path,
    record_property: Any,
) -> None:
    original = file_sha256(calmd.live)
    two = detections_of_two_sounds(calmd)
    with Subscriber(calmd.endpoint, ["room"]) as sub:
        browser.get(f"http://127.0.0.1:{calmd.port}/#review")
        assert shown(browser, "return !document.getElementById('login-form').hidden")
        browser.execute_script("document.getElementById('password').value = arguments[0]", PASSWORD)
        click(browser, "#login")
        assert shown(browser, "return document.getElementById('auth-state').textContent === 'logged in'")
        for d in two:  # "a new class named voice", typed into each card
            shown(browser, CARD, d["clip"])
            type_in = "card.querySelector('input.new-class').value = arguments[1];"
            browser.execute_script(IN_CARD + type_in, d["clip"], NEW_CLASS)
            click(browser, "button.new", d["clip"])
            pending = IN_CARD + "return card.dataset.verdict === arguments[1];"
            assert shown(browser, pending, d["clip"], f"new:{NEW_CLASS}:pending")
        assert shown(browser, "return document.getElementById('review-pending').textContent") == (
            f"pending: 2 to {NEW_CLASS}"
        )
        assert shown(browser, "return document.querySelector('article.detection .picture img')?.naturalWidth > 0")
        screenshot(browser, tmp_path / "review-after-relabel.png", record_property)

        click(browser, "#apply")  # a summary first: nothing changes until it is confirmed
        summary = shown(browser, "return !document.getElementById('confirm').hidden && "
                                 "document.getElementById('confirm-list').textContent")  # fmt: skip
        assert summary == f"2 clips → {NEW_CLASS} (a new class)", summary
        screenshot(browser, tmp_path / "review-apply-summary.png", record_property)
        click(browser, "#confirm button.confirm")
        done = shown(browser, JOB, "apply")
        assert done is not None and "job-done" in done[0], (done, calmd.daemon.log()[-3000:])
        assert done[2] == "live-v2" and "calmd now serves live-v2" in done[1]
        # did teaching work: how live-v2 labels each clip it was taught, in the job and on each card
        assert "taught clips as taught" in done[1] or "not labelled as taught" in done[1], done[1]
        for d in two:
            check = next(x["check"] for x in calmd.review()["detections"] if x["clip"] == d["clip"])
            assert check is not None and check["label"], check
            card_check = IN_CARD + "return card.querySelector('.verdict .check')?.textContent"
            assert f"live-v2 {'still ' if check['label'] != NEW_CLASS else ''}labels it {check['label']}" in shown(
                browser, card_check, d["clip"]
            )
        state = calmd.review()
        assert state["current"] == "live-v2" and state["undo_to"] == "live-v1"
        assert file_sha256(calmd.live) == file_sha256(calmd.review_dir / "versions/live-v2.calm.safetensors")
        assert file_sha256(calmd.review_dir / "versions/live-v1.calm.safetensors") == original  # kept
        assert NEW_CLASS in state["classifier"]["labels"]
        # calmd labels those sounds with the new class now
        taught = lambda e: isinstance(e, LabelEvent) and slot(e.start_s) in (0, 1)  # noqa: E731
        heard = next_matching(sub, lambda e: taught(e) and e.label == NEW_CLASS, PAGE_WAIT_S)
        assert heard is not None, calmd.daemon.log()[-3000:]
        v2 = (calmd.review_dir / "versions/live-v2.calm.safetensors", "live-v2")
        assert (heard.classifier, heard.fingerprint) == (v2[1], file_sha256(v2[0]))  # who labelled it
        status = next_matching(sub, lambda e: isinstance(e, StatusEvent), PAGE_WAIT_S)
        assert status is not None and (status.classifier, status.fingerprint) == (v2[1], file_sha256(v2[0]))
        header = f"classifier live-v2 · {file_sha256(v2[0])[:12]}"
        assert shown(browser, "return document.getElementById('classifier').textContent === arguments[0]", header)
        screenshot(browser, tmp_path / "review-after-apply.png", record_property)

        click(browser, "#undo")
        summary = shown(browser, "return !document.getElementById('confirm').hidden && "
                                 "document.getElementById('confirm-list').textContent")  # fmt: skip
        assert summary == "2 clips taught in live-v2 become pending again", summary
        click(browser, "#confirm button.confirm")
        undone = shown(browser, JOB, "undo")
        assert undone is not None and "job-done" in undone[0] and undone[2] == "live-v1", undone
        assert file_sha256(calmd.live) == original
        assert calmd.review()["current"] == "live-v1"
        assert (calmd.review_dir / "versions/live-v2.calm.safetensors").is_file()  # every version is kept
        back = next_matching(sub, lambda e: taught(e) and e.label != NEW_CLASS, PAGE_WAIT_S)
        assert back is not None, calmd.daemon.log()[-3000:]
        assert (back.classifier, back.fingerprint) == ("live-v1", original)
        assert NEW_CLASS not in {s.label for s in back.top}
        detected = {slot(d["start_s"]): d["label"] for d in two}
        assert back.label == detected[slot(back.start_s)]  # the label it had before
        assert all(d["verdict"]["state"] == "pending" for d in calmd.review()["detections"] if d["verdict"])

        # the history lists both versions with their classes and support; Redo serves live-v2 again
        browser.execute_script("location.hash = '#versions'")
        rows = """return [...document.querySelectorAll('#versions tr')].map((r) => [r.dataset.version,
                  r.children[2].textContent, r.classList.contains('serving')])"""
        history = shown(browser, rows + ".filter((r) => r[0] === 'live-v2' && r[1].includes('voice (2)'))")
        assert history, browser.execute_script(rows)
        assert [r[0] for r in browser.execute_script(rows)] == ["live-v2", "live-v1"]
        assert browser.execute_script(rows)[1][2]  # live-v1 is the one served
        screenshot(browser, tmp_path / "versions.png", record_property)
        browser.execute_script("location.hash = '#review'")
        click(browser, "#redo")
        assert shown(browser, "return !document.getElementById('confirm').hidden")
        click(browser, "#confirm button.confirm")
        redone = shown(browser, JOB, "restore")
        assert redone is not None and "job-done" in redone[0] and redone[2] == "live-v2", redone
        assert file_sha256(calmd.live) == file_sha256(calmd.review_dir / "versions/live-v2.calm.safetensors")
        verdicts = [d["verdict"] for d in calmd.review()["detections"] if d["verdict"]]
        assert verdicts and all((v["state"], v["version"]) == ("applied", "live-v2") for v in verdicts), verdicts
        log = calmd.daemon.log()
    assert "review apply done: calmd now serves live-v2" in log and "reloaded" in log


def test_login_attempts_are_limited_per_address_with_429_and_retry_after(calmd: Calmd) -> None:
    for _ in range(MAX_FAILURES):
        status, _, body = calmd.request("POST", "/api/login", {"password": "guess"})
        assert status == 401, body
    status, headers, body = calmd.request("POST", "/api/login", {"password": PASSWORD})
    assert status == 429 and b"too many failed logins" in body  # even the right password, while limited
    wait = int(headers["retry-after"])
    assert 1 <= wait <= WINDOW_S
    deadline = time.monotonic() + wait + 0.2  # what the server said, no guess
    assert wait_for(lambda: time.monotonic() >= deadline, wait + 5)
    assert calmd.request("POST", "/api/login", {"password": PASSWORD})[0] == 200


LOGIN_ERROR = "return document.getElementById('login-error').textContent"


def test_in_chromium_login_feedback_is_next_to_the_form_and_the_password_is_cleared(
    calmd: Calmd,
    browser: Any,  # noqa: F811
    tmp_path: Path,
    record_property: Any,
) -> None:
    browser.get(f"http://127.0.0.1:{calmd.port}/")
    session_known = "return !document.getElementById('login-form').hidden || !document.getElementById('logout').hidden"
    assert shown(browser, session_known)
    browser.execute_script("document.getElementById('logout').hidden || document.getElementById('logout').click()")
    assert shown(browser, "return !document.getElementById('login-form').hidden")

    def try_password(password: str, expected: str) -> str:
        browser.execute_script("document.getElementById('login-error').textContent = ''")
        browser.execute_script("document.getElementById('password').value = arguments[0]", password)
        browser.execute_script("document.getElementById('login').click()")
        said = shown(browser, LOGIN_ERROR + ".startsWith(arguments[0]) && " + LOGIN_ERROR.removeprefix("return "),
                     expected)  # fmt: skip
        assert said, browser.execute_script(LOGIN_ERROR)
        assert browser.execute_script("return document.getElementById('password').value") == ""
        return str(said)

    for _ in range(MAX_FAILURES):
        try_password("guess", "wrong password")
    screenshot(browser, tmp_path / "login-wrong-password.png", record_property)
    locked = try_password(PASSWORD, "too many failed logins: try again in ")
    wait = int(locked.rsplit(" ", 2)[1])
    assert 1 <= wait <= WINDOW_S
    assert browser.execute_script("return document.getElementById('login').disabled")
    screenshot(browser, tmp_path / "login-locked-out.png", record_property)
    # the button comes back when the wait is over, and the right password then logs in
    assert shown(browser, "return !document.getElementById('login').disabled")
    browser.execute_script("document.getElementById('password').value = arguments[0]", PASSWORD)
    browser.execute_script("document.getElementById('login').click()")
    assert shown(browser, "return document.getElementById('auth-state').textContent === 'logged in'")
    assert browser.execute_script(LOGIN_ERROR) == ""
