"""calmd stopped (SIGTERM) while the review's Apply runs its refit: calmd exits 0, nothing half-made stays
(no version file, no temporary file, the classifier file as it was), the journal says the apply was
interrupted by the shutdown, the open page stops claiming "apply: running", and after a restart the page
says how the apply ended and the next Apply takes the version number the interrupted one would have had."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from calm_core.fingerprint import file_sha256

from .conftest import wait_for
from .test_page import PAGE_WAIT_S, browser, screenshot, shown  # noqa: F401  (browser: a fixture)
from .test_page_review_calmd import JOB, NEW_CLASS, PASSWORD, detections_of_two_sounds, restart, start_calmd

pytestmark = pytest.mark.slow

# The refit child (python -m calmd.review.teach) inherits calmd's environment: its save leaves a temporary file
# beside the version file, says so in a file the test waits for, and then takes "forever".
SLOW_SAVE = """
import os, time
from pathlib import Path
from calm_core.method.classifier import CalmClassifier

def save(self, path):
    path = Path(path)
    path.with_name(f"{path.name}.{os.getpid()}.tmp").write_bytes(b"half a classifier")
    Path(os.environ["CALM_TEST_REFIT_STARTED"]).write_text(str(path))
    time.sleep(600)

if "CALM_TEST_REFIT_STARTED" in os.environ:
    CalmClassifier.save = save
"""


def test_sigterm_during_apply_leaves_no_orphan_version_and_an_honest_journal(
    tmp_path: Path,
    tiny_model_dir: Path,
    tone_sets: dict[str, Path],
    browser: Any,  # noqa: F811
    record_property: Any,
) -> None:
    site, started = tmp_path / "site", tmp_path / "refit-started"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_SAVE)
    env = {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "CALM_TEST_REFIT_STARTED": str(started)}  # fmt: skip
    c = start_calmd(tmp_path, tiny_model_dir, tone_sets, env)
    try:
        original = file_sha256(c.live)
        cookie, csrf = c.login()
        for d in detections_of_two_sounds(c):
            verdict = {"clip": d["clip"], "verdict": "new", "label": NEW_CLASS}
            assert c.request("POST", "/api/review/verdict", verdict, {"Cookie": cookie, "X-CSRF-Token": csrf})[0] == 200
        browser.get(f"http://127.0.0.1:{c.port}/#review")
        assert shown(browser, "return !document.getElementById('login-form').hidden")
        browser.execute_script("document.getElementById('password').value = arguments[0]", PASSWORD)
        browser.execute_script("document.getElementById('login').click()")
        assert shown(browser, "return !document.getElementById('apply').disabled")
        browser.execute_script("document.getElementById('apply').click()")
        assert shown(browser, "return !document.getElementById('confirm').hidden")
        browser.execute_script("document.querySelector('#confirm button.confirm').click()")
        assert wait_for(started.is_file, PAGE_WAIT_S), c.daemon.log()[-3000:]
        version_file = Path(started.read_text())
        assert shown(browser, "return document.getElementById('review-job').textContent.startsWith('apply: running')")

        t = time.monotonic()
        c.daemon.proc.send_signal(signal.SIGTERM)
        c.daemon.proc.wait(timeout=120)  # bounds a hang only
        stopped_s = time.monotonic() - t
        code, log = c.daemon.stop()
        assert code == 0 and stopped_s < 60, (stopped_s, log[-3000:])
        assert "review apply interrupted: apply interrupted by shutdown" in log, log[-3000:]
        # the open page says calmd is gone, not that the apply still runs
        gone = "return document.getElementById('review-job').textContent"
        assert shown(browser, gone + ".startsWith('calmd is not reachable')"), browser.execute_script(gone)
        screenshot(browser, tmp_path / "apply-interrupted-calmd-down.png", record_property)

        versions = sorted(p.name for p in (c.review_dir / "versions").iterdir())
        assert versions == ["live-v1.calm.safetensors"], versions  # the file as found, nothing half-made
        assert not version_file.exists() and not list(version_file.parent.glob("*.tmp"))
        assert file_sha256(c.live) == original
        last = json.loads((c.review_dir / "journal.jsonl").read_text().splitlines()[-1])
        assert (last["action"], last["state"]) == ("apply", "interrupted")
        assert last["message"].startswith("apply interrupted by shutdown"), last
        state = json.loads((c.review_dir / "state.json").read_text())
        assert state["current"] == "live-v1" and state["job"]["state"] == "interrupted"

        restart(c)  # without the slow save
        done = shown(browser, JOB.replace("(done|failed)", "(done|failed|interrupted)"), "apply")
        assert done is not None and "job-interrupted" in done[0] and "interrupted by shutdown" in done[1], done
        # the restarted calmd holds no session: the page asks for a login instead of offering Log out
        assert shown(browser, "return !document.getElementById('login-form').hidden")
        assert browser.execute_script("return document.getElementById('logout').hidden")
        assert "session has ended" in browser.execute_script(
            "return document.getElementById('login-error').textContent"
        )
        screenshot(browser, tmp_path / "apply-interrupted-after-restart.png", record_property)
        cookie, csrf = c.login()
        # one more clip, of a class live-v1 knows: live-v1 had not seen it, so it counts towards its held-out accuracy
        taught = {d["clip"] for d in c.review()["detections"] if d["verdict"]}
        other = next(d for d in c.review()["detections"] if d["clip"] not in taught)
        verdict = {"clip": other["clip"], "verdict": "right"}
        assert c.request("POST", "/api/review/verdict", verdict, {"Cookie": cookie, "X-CSRF-Token": csrf})[0] == 200
        assert c.request("POST", "/api/review/apply", {}, {"Cookie": cookie, "X-CSRF-Token": csrf})[0] == 202
        job = wait_for(lambda: (j := c.review()["job"]) and j["state"] != "running" and j, PAGE_WAIT_S, 0.5)
        assert job and job["state"] == "done" and job["classifier"] == "live-v2", job  # no number skipped
        v1 = next(v for v in c.review()["versions"] if v["name"] == "live-v1")
        assert v1["held_out"] == 1 and v1["held_out_right"] in (0, 1), v1
        browser.execute_script("location.hash = '#versions'")
        accuracy = "return document.querySelector('#versions tr[data-version=\"live-v1\"] .accuracy')?.textContent"
        assert shown(browser, accuracy.replace("return ", "const a = ") + "; return a !== '—' && a") in (
            "0/1 right (0%)",
            "1/1 right (100%)",
        )  # once the page has polled the review after the Apply
    finally:
        code, log = c.daemon.stop()
    assert code == 0, log[-3000:]
