"""`calm demo` end to end: fit, eval, classify, heads, then calmd on a stream of held-out clips."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def test_tiny_demo_ends_with_calmd_publishing_a_label_per_clip(tmp_path: Path) -> None:
    pytest.importorskip("zmq", reason="the service step needs the daemon extra (pyzmq)")
    proc = subprocess.run(
        [sys.executable, "-m", "calm_core.cli", "-q", "demo", "--tiny", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for step in ("calm fit", "calm eval", "calm classify", "calm heads", "calmd --config"):
        assert f"$ {step}" in out
    classes = sorted(p.name for p in (tmp_path / "tones" / "test").iterdir())
    # One window per held-out clip, each labelled with one of the classes, and a clean stop.
    rows = re.findall(r"^  demo +[\d.]+- *[\d.]+ s  (\S+) +score [\d.]+ .*\(clip of (\S+)\)$", out, re.M)
    assert [truth for _, truth in rows] == classes, out
    assert all(label in classes for label, _ in rows)
    assert f"calmd stopped (exit 0) after {len(classes)} label(s)" in out
    assert "metrics on http://127.0.0.1:" in out
