"""The review on the live page without a model: saved clips with their pictures, verdicts and the rules a new
class must meet, through the page's HTTP server on 127.0.0.1 (calmd itself: test_page_review_calmd.py)."""

from __future__ import annotations

import http.client
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from calm_core.messages.events import StatusEvent
from calm_core.testing import voiced
from calmd.config import ClipsSection, PageSection
from calmd.outputs.clips import ClipRecorder
from calmd.outputs.detections import Edge, Heard
from calmd.outputs.metrics import Metrics
from calmd.outputs.spectrogram import N_MELS
from calmd.page.auth import hash_password
from calmd.page.live import LivePage
from calmd.review.workflow import MIN_CLIPS, Review

from .conftest import page_login, page_request, wait_for
from .test_page import browser  # noqa: F401  (a fixture: Debian's chromium)

PASSWORD = "a long page password"
LABELS = ["beep", "hum", "siren", "whistle"]
T0 = 1_795_000_000.0


def heartbeat(seq: int) -> StatusEvent:
    return StatusEvent(seq=seq, instance="t", time_utc="2026-01-01T00:00:00.000Z", uptime_s=1.0, queue_depth=0,
                       classifier="live", fingerprint="f" * 16, exit_layer=0, streams={})  # fmt: skip


def saved_clip(rec: ClipRecorder, label: str = "beep", seed: int = 0) -> str:
    """One more second of a voice-like sound on stream "room", saved as the clip of a detection."""
    ring = rec.rings.get("room")
    start_s = ring.total / 16_000 if ring else 0.0
    rec.audio("room", voiced(280.0, 1.0, seed=seed), start_s + 1.0)
    edge = Edge("end", label, start_s + 1.0, start_s, 0.9, 1, (Heard(start_s, start_s + 1.0, 0.9),))
    rel = rec.save("room", edge, T0)
    assert rel is not None
    return rel


@dataclass
class Page:
    live: LivePage
    rec: ClipRecorder
    classifier: Path
    review: Review | None
    reloads: list[float]

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        return page_request(self.live.server.server_port, method, path, body, headers)

    def session(self) -> dict[str, str]:
        cookie, csrf = page_login(self.live.server.server_port, PASSWORD)
        return {"Cookie": cookie, "X-CSRF-Token": csrf}


def make_page(tmp_path: Path, password: str | None) -> Page:
    clips = tmp_path / "clips"
    rec = ClipRecorder(ClipsSection(enabled=True, dir=clips, min_free_mb=0, pre_roll_s=0, post_roll_s=0), 1.0,
                       Metrics(), lambda: ("live", "f" * 16))  # fmt: skip
    classifier = tmp_path / "live.calm.safetensors"
    classifier.write_bytes(b"a classifier file")  # the review only copies and hashes it until a refit runs
    cfg = PageSection(enabled=True, port=0, password_hash=None if password is None else hash_password(password))
    live = LivePage(cfg, clips)
    reloads: list[float] = []

    def reload(timeout_s: float) -> bool:
        reloads.append(timeout_s)
        return True

    serving = lambda: {"name": "live", "labels": LABELS, "error": None}  # noqa: E731
    review = Review(classifier, clips, None, ("model", "cpu"), serving, reload)
    live.attach_review(review)
    live.start()
    return Page(live, rec, classifier, review, reloads)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    p = make_page(tmp_path, PASSWORD)
    yield p
    p.live.close()


def test_a_saved_clip_gets_its_spectrogram_at_the_next_status_served_as_png_and_deleted_with_it(
    tmp_path: Path,
) -> None:
    now = [time.time()]
    clips = tmp_path / "clips"
    cfg = ClipsSection(enabled=True, dir=clips, min_free_mb=0, pre_roll_s=0, post_roll_s=0, max_age_days=1)
    rec = ClipRecorder(cfg, 1.0, Metrics(), lambda: ("live", "f" * 16), clock=lambda: now[0])
    live = LivePage(PageSection(enabled=True, port=0), clips)
    live.start()
    try:
        rel = saved_clip(rec)
        picture = (clips / rel).with_suffix(".png")
        assert not picture.exists()  # the model worker does not draw it
        rec.event(heartbeat(0))
        png = picture.read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert int.from_bytes(png[20:24], "big") == N_MELS  # IHDR height: one row per mel band
        assert rec.stored[(clips / rel).with_suffix("")].size == sum(
            (clips / rel).with_suffix(s).stat().st_size for s in (".flac", ".json", ".png")
        )
        conn = http.client.HTTPConnection("127.0.0.1", live.server.server_port, timeout=30)
        conn.request("GET", "/clips/" + picture.relative_to(clips).as_posix())
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "image/png"
        assert response.read() == png
        conn.close()
        now[0] += 2 * 86_400
        rec.event(heartbeat(1))
        assert not picture.exists() and not (clips / rel).exists()
    finally:
        live.close()


def test_without_a_password_the_page_is_read_only_and_says_how_to_enable_writes(tmp_path: Path) -> None:
    p = make_page(tmp_path, None)
    try:
        clip = saved_clip(p.rec)
        status, _, body = p.request("GET", "/api/session")
        info = json.loads(body)
        assert info["writes"] == "disabled" and "calmd --hash-password" in info["why"]
        for path, data in [("/api/login", {"password": PASSWORD}), ("/api/review/apply", {}),
                           ("/api/review/verdict", {"clip": clip, "verdict": "right", "label": None})]:  # fmt: skip
            status, _, text = p.request("POST", path, data)
            assert status == 403 and b"writes are disabled: set [page] password_hash" in text, (path, text)
        assert p.request("GET", "/api/review")[0] == 200  # reading needs no login
        assert not (p.review and (p.review.dir / "state.json").exists())
    finally:
        p.live.close()


def test_verdicts_name_what_is_allowed(page: Page) -> None:
    clip = saved_clip(page.rec)
    auth = page.session()
    cases = [
        ({"clip": clip, "verdict": "relabel", "label": "voice"}, 400, b"not one of the classifier's"),
        ({"clip": clip, "verdict": "new", "label": "hum"}, 400, b"exists already"),
        ({"clip": clip, "verdict": "new", "label": "../etc"}, 400, b"letters, digits"),
        ({"clip": clip, "verdict": "new", "label": "unknown"}, 400, b"not 'unknown'"),
        ({"clip": clip, "verdict": "maybe", "label": None}, 400, b"one of right, wrong"),
        ({"clip": "../live.calm.safetensors", "verdict": "right", "label": None}, 403, b"plain path"),
        ({"clip": clip.replace(".flac", ".json"), "verdict": "right", "label": None}, 400, b"audio file"),
        ({"clip": "room/none.flac", "verdict": "right", "label": None}, 404, b"no such file"),
    ]
    for data, status, message in cases:
        got, _, text = page.request("POST", "/api/review/verdict", data, auth)
        assert got == status and message in text, (data, got, text)
    got, _, text = page.request("POST", "/api/review/verdict", {"clip": clip, "verdict": "wrong", "label": None}, auth)
    assert got == 200 and json.loads(text)["verdict"]["state"] == "recorded"  # wrong teaches nothing
    journal = (page.review.dir / "journal.jsonl").read_text().splitlines()  # type: ignore[union-attr]
    assert json.loads(journal[-1])["kind"] == "wrong" and json.loads(journal[-1])["client"] == "127.0.0.1"


def test_a_new_class_waits_for_two_distinct_clips_and_apply_says_so(page: Page) -> None:
    assert MIN_CLIPS == 2
    auth = page.session()
    first = saved_clip(page.rec)
    # the same sound saved twice (same bytes under another name) is one support clip, not two
    twin = first.replace(".flac", "-twin.flac")
    for suffix in (".flac", ".json"):
        shutil.copyfile((page.rec.dir / first).with_suffix(suffix), (page.rec.dir / twin).with_suffix(suffix))
    before = page.classifier.read_bytes()
    for clip in (first, twin):
        data = {"clip": clip, "verdict": "new", "label": "voice"}
        assert page.request("POST", "/api/review/verdict", data, auth)[0] == 200
    state = json.loads(page.request("GET", "/api/review")[2])
    assert state["pending"] == {"voice": 2} and state["waiting"] == {"voice": 1}  # 2 names, 1 content
    assert page.request("POST", "/api/review/apply", {}, auth)[0] == 202
    job = wait_for(lambda: _finished(page), 60)
    assert job["state"] == "failed" and "new class 'voice' has 1 distinct clip, needs 2" in job["message"], job
    assert page.classifier.read_bytes() == before and page.reloads == []
    assert all(d["verdict"]["state"] == "pending" for d in state["detections"] if d["verdict"])


def test_undo_with_no_earlier_classifier_says_there_is_nothing_to_undo(page: Page) -> None:
    auth = page.session()
    assert page.request("POST", "/api/review/undo", {}, auth)[0] == 202
    job = wait_for(lambda: _finished(page), 60)
    assert job["state"] == "failed" and "nothing to undo: live-v1 is the first classifier" in job["message"]
    assert (page.review.dir / "versions/live-v1.calm.safetensors").read_bytes() == b"a classifier file"  # type: ignore[union-attr]
    assert page.reloads == []


def test_the_page_shows_each_detection_with_its_picture_player_and_verdict_buttons(
    page: Page,
    browser: Any,  # noqa: F811
) -> None:
    clips = [saved_clip(page.rec, seed=n) for n in range(2)]
    page.rec.event(heartbeat(0))
    browser.get(page.live.url)
    cards = "return [...document.querySelectorAll('article.detection')].map((a) => a.dataset.clip)"
    assert wait_for(lambda: sorted(browser.execute_script(cards) or []) == sorted(clips), 60, 0.1)
    counts = browser.execute_script(
        "const a = document.querySelector('article.detection');"
        "return [a.querySelectorAll('img').length, a.querySelectorAll('audio').length,"
        "        [...a.querySelectorAll('button')].filter((b) => b.disabled).length,"
        "        a.querySelectorAll('button').length, document.getElementById('apply').disabled]"
    )
    assert counts[:2] == [1, 1] and counts[2] == counts[3] and counts[4]  # not logged in: every button disabled


def _finished(page: Page) -> dict[str, Any] | None:
    job = json.loads(page.request("GET", "/api/review")[2])["job"]
    return job if job and job["state"] != "running" else None
