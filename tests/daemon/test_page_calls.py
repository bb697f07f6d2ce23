"""The Calls tab on a real calmd (tiny model, a detector of "siren" fitted with `calm fit --positive`, an
AudioSocket listener), driven by headless Chromium: a call's legs with their segment scores and its saved
clips, then the two lessons a call teaches: "genuine" (its clips join a class outside the positive group) and
"a new kind of attack" (its clips start a class that joins the positive group, which Apply then refits)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from calm_core.method.classifier import CalmClassifier
from calmd.page.auth import hash_password

from .conftest import ENV, Daemon, free_port, page_login, page_request, wait_for, write_config
from .test_page import PAGE_WAIT_S, browser, screenshot, shown  # noqa: F401  (browser: a fixture)
from .test_telephony import audiosocket_call, call_audio

pytestmark = pytest.mark.slow

PASSWORD = "a long page password"
ATTACK = "robocall"


def review(port: int) -> dict[str, Any]:
    status, _, body = page_request(port, "GET", "/api/review")
    assert status == 200, body
    return dict(json.loads(body))


def test_in_chromium_a_call_shows_its_segments_and_clips_and_teaches_a_new_kind_of_attack(
    tmp_path: Path,
    tiny_model_dir: Path,
    tone_sets: dict[str, Path],
    browser: Any,  # noqa: F811
    record_property: Any,
) -> None:
    live = tmp_path / "detector.calm.safetensors"
    subprocess.run(
        [sys.executable, "-m", "calm_core.cli", "-q", "fit", "--model", str(tiny_model_dir), "--support",
         str(tone_sets["support"]), "--out", str(live), "--max-layer", "0", "--top-k", "3", "--positive", "siren",
         "--cache-dir", str(tmp_path / "cache")],
        check=True, capture_output=True, env=ENV, timeout=300,
    )  # fmt: skip
    port, listener, clips = free_port(), free_port(), tmp_path / "clips"
    config = write_config(
        tmp_path / "calmd.toml", tiny_model_dir, live,
        f"[listeners.audiosocket]\nport = {listener}\nconnect_timeout_s = 5\n",
        "[events]\nenabled = true\nend_after_s = 1.0\nmin_score = 0.0\nconfirm_hits = 1\n\n"
        f'[clips]\nenabled = true\ndir = "{clips}"\npre_roll_s = 0.2\npost_roll_s = 0.2\nmin_free_mb = 0\n\n'
        f'[page]\nenabled = true\nport = {port}\npassword_hash = "{hash_password(PASSWORD)}"\n',
    )  # fmt: skip
    daemon = Daemon(config)
    try:
        up = lambda: daemon.proc.poll() is not None or f"listening on 127.0.0.1:{listener}" in daemon.log()  # noqa: E731
        assert wait_for(up, PAGE_WAIT_S) and daemon.proc.poll() is None, daemon.log()[-3000:]
        assert wait_for(lambda: review(port).get("classifier"), PAGE_WAIT_S)
        call_id = uuid.uuid4()
        audiosocket_call(listener, call_id, call_audio(3))

        def clips_of_the_call() -> list[str] | None:
            state = json.loads(page_request(port, "GET", "/api/state")[2])
            calls = [c for c in state["calls"] if c["final"]]
            legs = {leg["stream"] for c in calls for leg in c["legs"]}
            found = [e["clip"] for e in state["events"] if e["kind"] == "end" and e["clip"] and e["stream"] in legs]
            return found if len(found) >= 2 else None

        found = wait_for(clips_of_the_call, PAGE_WAIT_S, 0.5)
        if not found:  # what the page held, and calmd's log without the page's own request lines
            state = json.loads(page_request(port, "GET", "/api/state")[2])
            log = "\n".join(line for line in daemon.log().splitlines() if '"GET /api/' not in line)
            raise AssertionError(f"calls: {state['calls']}\nevents: {state['events']}\n{log[-4000:]}")

        browser.get(f"http://127.0.0.1:{port}/#calls")
        card = "return document.querySelector('article.call')"
        assert shown(browser, card + " && document.querySelectorAll('article.call audio').length >= 2")
        segments = browser.execute_script(
            "return [...document.querySelectorAll('article.call .leg li.segment, article.call .leg li.unknown')]"
            ".map((li) => [...li.querySelectorAll('span')].map((s) => s.textContent))"
        )
        assert segments and all(len(s) >= 3 for s in segments), segments  # time, label, score (and the top-k)
        assert "threshold" in browser.execute_script("return document.querySelector('article.call header').textContent")
        screenshot(browser, tmp_path / "calls.png", record_property)

        browser.execute_script("document.getElementById('password').value = arguments[0]", PASSWORD)
        browser.execute_script("document.getElementById('login').click()")
        assert shown(browser, "return !document.querySelector('article.call button.genuine').disabled")
        choices = browser.execute_script(
            "return [...document.querySelectorAll('article.call select.genuine-class option')].map((o) => o.value)"
        )
        assert choices == ["beep", "hum", "whistle"]  # every class outside the positive group ("siren")
        browser.execute_script("document.querySelector('article.call button.genuine').click()")
        assert wait_for(lambda: review(port)["pending"].get("beep") == len(found), PAGE_WAIT_S, 0.2)

        type_in = "document.querySelector('article.call input.attack-name').value = arguments[0]"
        browser.execute_script(type_in, ATTACK)
        browser.execute_script("document.querySelector('article.call button.new-attack').click()")
        assert wait_for(lambda: review(port)["pending"] == {ATTACK: len(found)}, PAGE_WAIT_S, 0.2)
        note = shown(browser, "return document.querySelector('article.call .call-note').textContent")
        assert f"marked {ATTACK} (a new kind of attack)" in note
        screenshot(browser, tmp_path / "calls-taught.png", record_property)

        cookie, csrf = page_login(port, PASSWORD)
        assert page_request(port, "POST", "/api/review/apply", {}, {"Cookie": cookie, "X-CSRF-Token": csrf})[0] == 202
        job = wait_for(lambda: (j := review(port)["job"]) and j["state"] != "running" and j, PAGE_WAIT_S, 0.5)
        assert job and job["state"] == "done", (job, daemon.log()[-3000:])
        detector = CalmClassifier.load(live)
        assert ATTACK in detector.classes and ATTACK in detector.info["decision"]["positive"], detector.info
        assert ATTACK in review(port)["classifier"]["positive"]  # calls are scored against the new group
    finally:
        code, log = daemon.stop()
    assert code == 0, log[-3000:]
