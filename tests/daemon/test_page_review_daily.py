"""The review page as a reviewer uses it every day, without a model (saved clips and the page's HTTP server on
127.0.0.1, as test_page_review.py): filters and paging done by calmd, the "N new" button that keeps the list
still, keyboard verdicts, bulk verdicts, the top-k, readable spectrograms, no preselected class, tabs, and a
layout that fits 400 px. Apply, Undo and Redo with a real calmd: test_page_review_calmd.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from calm_core.testing import voiced
from calmd.outputs.clips import ClipRecorder
from calmd.outputs.detections import Edge, Heard

from .conftest import wait_for
from .test_page import (
    browser,  # noqa: F401  (a fixture: Debian's chromium)
    screenshot,
    shown,
)
from .test_page_review import LABELS, PASSWORD, T0, Page, heartbeat, make_page

# (label, score) of the clips saved, oldest first
SAVED = [("beep", 0.5), ("hum", 0.62), ("beep", 0.71), ("siren", 0.8), ("beep", 0.93), ("hum", 0.55)]


def save(rec: ClipRecorder, label: str, score: float, seed: int) -> str:
    """One second of sound on stream "room", after 0.5 s of quiet, saved as a detection whose segment was
    torn between `label` and the next class."""
    ring = rec.rings.get("room")
    start_s = (ring.total / 16_000 if ring else 0.0) + 0.5
    rec.audio("room", voiced(280.0 + 10 * seed, 1.5, seed=seed), start_s + 1.0)
    other = LABELS[(LABELS.index(label) + 1) % len(LABELS)]
    top = ((label, score), (other, round(1 - score, 3)))
    edge = Edge("end", label, start_s + 1.0, start_s, score, 1, (Heard(start_s, start_s + 1.0, score, top),))
    rel = rec.save("room", edge, T0 + seed)  # a second apart: names (UTC starts) sort as saved
    assert rel is not None
    return rel


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    p = make_page(tmp_path, PASSWORD)
    yield p
    p.live.close()


def listed(page: Page, query: str) -> dict[str, Any]:
    status, _, body = page.request("GET", f"/api/review?{query}")
    assert status == 200, body
    return dict(json.loads(body))


def test_review_filters_and_pages_are_done_by_calmd(page: Page) -> None:
    clips = [save(page.rec, label, score, n) for n, (label, score) in enumerate(SAVED)]
    everything = listed(page, "")
    assert [d["clip"] for d in everything["detections"]] == clips[::-1]  # newest first
    assert everything["labels"] == ["beep", "hum", "siren"] and everything["streams"] == ["room"]
    beeps = listed(page, "label=beep&min_score=0.6&limit=1")
    assert beeps["total"] == 2 and [d["clip"] for d in beeps["detections"]] == [clips[4]]
    assert [d["clip"] for d in listed(page, "label=beep&min_score=0.6&limit=1&offset=1")["detections"]] == [clips[2]]
    assert listed(page, "max_score=0.6")["total"] == 2
    assert listed(page, "since=2099-01-01")["total"] == 0 and listed(page, "until=2099")["total"] == 6
    headers = page.session()
    assert page.request("POST", "/api/review/verdict", {"clip": clips[0], "verdict": "wrong"}, headers)[0] == 200
    assert clips[0] not in {d["clip"] for d in listed(page, "unreviewed=1")["detections"]}
    # anchored at an older clip, the newer ones are counted, not listed
    anchored = listed(page, f"anchor={clips[2]}")
    assert anchored["newer"] == 3 and [d["clip"] for d in anchored["detections"]] == clips[2::-1]
    assert listed(page, "")["detections"][0]["top"] == [{"label": "hum", "score": 0.55},
                                                        {"label": "siren", "score": 0.45}]  # fmt: skip
    for bad in ("min_score=2", "limit=0", "offset=-1", "colour=red", "min_score=x"):
        status, _, body = page.request("GET", f"/api/review?{bad}")
        assert status == 400 and bad.split("=")[0].encode() in body, (bad, body)


CARDS = "return [...document.querySelectorAll('article.detection')].map((a) => a.dataset.clip)"
VERDICTS = "return [...document.querySelectorAll('article.detection')].map((a) => a.dataset.verdict)"


def key(driver: Any, k: str) -> None:
    driver.execute_script("document.dispatchEvent(new KeyboardEvent('keydown', {key: arguments[0]}))", k)


def test_in_chromium_a_reviewer_judges_by_keyboard_and_in_bulk_at_400_px(
    page: Page,
    browser: Any,  # noqa: F811
    tmp_path: Path,
    record_property: Any,
) -> None:
    clips = [save(page.rec, label, score, n) for n, (label, score) in enumerate(SAVED)]
    newest = clips[::-1]
    browser.set_window_size(400, 900)
    try:
        browser.get(page.live.url + "#review")
        assert wait_for(lambda: browser.execute_script(CARDS) == newest, 60, 0.1)
        # the newest card has no picture yet: a placeholder says so, then the picture comes with its axes
        assert shown(browser, "return document.querySelector('article.detection .drawing')?.textContent") == (
            "drawing the spectrogram…"
        )
        page.rec.event(heartbeat(0))  # draws the pictures
        assert shown(browser, "return [...document.querySelectorAll('article.detection img')]"
                              ".every((i) => i.naturalWidth > 0) && document.querySelectorAll('article.detection img').length === 6")  # fmt: skip  # noqa: E501
        axes = browser.execute_script(
            "const c = document.querySelector('article.detection');"
            "return [[...c.querySelectorAll('.time-axis .tick')].map((t) => t.textContent),"
            "        [...c.querySelectorAll('.freq-axis .tick')].map((t) => t.textContent),"
            "        c.querySelectorAll('.segment').length, c.querySelectorAll('.roll').length,"
            "        [...c.querySelectorAll('.top .top-item')].map((t) => t.textContent),"
            "        c.querySelector('select.relabel-class').value, c.querySelector('button.relabel').disabled]"
        )
        assert axes[0][:3] == ["0 s", "0.5 s", "1 s"] and axes[1] == ["8k", "2k", "500", "100"], axes
        assert axes[2:4] == [1, 2] and axes[4] == ["hum 0.55", "siren 0.45"], axes
        assert axes[5:] == ["", True], axes  # no class chosen for the reviewer
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 400  # nothing sticks out
        screenshot(browser, tmp_path / "review-400px.png", record_property)

        browser.execute_script("document.getElementById('password').value = arguments[0]", PASSWORD)
        browser.execute_script("document.getElementById('login').click()")
        assert shown(browser, "return document.getElementById('auth-state').textContent === 'logged in'")
        assert shown(browser, "return !document.querySelector('article.detection button.right').disabled")
        key(browser, "y")  # the first card: right, and the focus moves on
        key(browser, "n")  # the second: wrong
        key(browser, "j")  # skip the third
        key(browser, "2")  # the fourth: this is the second class
        expected = ["right:hum:pending", "wrong::recorded", "", f"relabel:{LABELS[1]}:pending", "", ""]
        assert wait_for(lambda: browser.execute_script(VERDICTS) == expected, 60, 0.1), browser.execute_script(VERDICTS)
        key(browser, "k")
        key(browser, "k")
        focused = "return document.querySelector('article.detection.focused')?.dataset.clip"
        assert browser.execute_script(focused) == newest[2]
        key(browser, "?")
        assert browser.execute_script("return !document.getElementById('help').hidden")
        key(browser, "Escape")

        # bulk: select the last two cards, both "wrong" at once
        for clip in newest[4:]:
            browser.execute_script(
                "[...document.querySelectorAll('article.detection')].find((a) => a.dataset.clip === arguments[0])"
                ".querySelector('input.select').click()", clip)  # fmt: skip
        assert shown(browser, "return document.getElementById('bulk-count').textContent") == "2 selected:"
        browser.execute_script("document.getElementById('bulk-wrong').click()")
        bulk = expected[:4] + ["wrong::recorded"] * 2
        assert wait_for(lambda: browser.execute_script(VERDICTS) == bulk, 60, 0.1), browser.execute_script(VERDICTS)

        # a new detection does not move the cards: it waits behind a button
        later = save(page.rec, "siren", 0.66, 10)
        newer = "const b = document.getElementById('review-new'); return !b.hidden && b.textContent === '1 new'"
        assert shown(browser, newer)
        assert browser.execute_script(CARDS) == newest
        browser.execute_script("document.getElementById('review-new').click()")
        assert wait_for(lambda: browser.execute_script(CARDS) == [later, *newest], 60, 0.1)

        # unreviewed only, a filter done by calmd
        browser.execute_script("const box = document.querySelector('#filters input[name=unreviewed]'); box.click();")
        assert wait_for(lambda: browser.execute_script(CARDS) == [later, newest[2]], 60, 0.1)
        screenshot(browser, tmp_path / "review-unreviewed-400px.png", record_property)
        # tabs: one section at a time
        browser.get(page.live.url + "#versions")
        hidden = "return getComputedStyle(document.getElementById('review-section')).display === 'none'"
        assert shown(browser, hidden)
    finally:
        browser.set_window_size(1280, 900)


def test_in_chromium_a_taught_clip_the_new_version_still_labels_as_before_is_flagged(
    page: Page,
    browser: Any,  # noqa: F811
    tmp_path: Path,
    record_property: Any,
) -> None:
    from calmd.review.workflow import Verdict, Version

    kept, missed = (save(page.rec, "beep", 0.7, n) for n in range(2))
    review = page.review
    assert review is not None
    with review.lock:  # what an Apply that taught both clips "hum" leaves, its check included
        taught = {kept: "hum", missed: "hum"}
        checked = {kept: {"label": "hum", "score": 0.8}, missed: {"label": "beep", "score": 0.6}}
        made = "2026-12-07T10:00:00.000Z"
        v2 = Version("live-v2", "versions/live-v2.calm.safetensors", "0" * 64, "live-v1", made, taught, "", checked)
        review.versions.append(v2)
        review.current = "live-v2"
        for clip in taught:
            review.verdicts[clip] = Verdict("relabel", "hum", "beep", "applied", made, "live-v2")
    browser.get(page.live.url + "#review")
    card = "return [...document.querySelectorAll('article.detection')].find((a) => a.dataset.clip === arguments[0])" \
           "?.querySelector('.verdict .check')?.textContent"  # fmt: skip
    assert shown(browser, card, missed) == " · ⚠ live-v2 still labels it beep (0.60)"
    assert shown(browser, card, kept) == " · live-v2 labels it hum ✓"
    screenshot(browser, tmp_path / "review-taught-check.png", record_property)
    browser.execute_script("location.hash = '#versions'")
    row = "return document.querySelector('#versions tr[data-version=\"live-v2\"] .check')?.textContent"
    assert shown(browser, row) == "1 not labelled as taught"
    accuracy = "return document.querySelector('#versions tr[data-version=\"live-v2\"] .accuracy')?.textContent"
    assert shown(browser, accuracy) == "—"  # nothing reviewed since it was made
