"""The development set builder renders real instrument samples and TTS speech into a fixed split."""

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from calm_core.devset import SOUND_FONT, build_devset, midi_file

pytestmark = pytest.mark.skipif(
    not (shutil.which("fluidsynth") and shutil.which("espeak-ng") and SOUND_FONT.is_file()),
    reason="needs fluidsynth, fluid-soundfont-gm and espeak-ng (Debian)",
)


def test_midi_writer_produces_a_valid_header_and_track() -> None:
    data = midi_file(24, [(0, 500, 60, 100), (250, 500, 64, 90)])
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    assert int.from_bytes(data[18:22], "big") == len(data) - 22
    assert data.endswith(b"\x00\xff\x2f\x00")


def test_builds_a_fixed_split_of_16khz_mono_clips(tmp_path: Path) -> None:
    out = build_devset(tmp_path / "dev", per_class=4, seed=3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["classes"]) == 8 and set(manifest["classes"].values()) == {4}
    for split in ("pool", "test"):
        for class_dir in (out / split).iterdir():
            files = sorted(class_dir.glob("*.wav"))
            assert len(files) == 2
            for f in files:
                info = sf.info(f)
                assert info.samplerate == 16000 and info.channels == 1 and 0.5 <= info.duration <= 10
    again = build_devset(tmp_path / "dev", per_class=4, seed=3)  # a complete build is reused
    assert again == out
