"""The development sets: instruments (fluidsynth + espeak-ng), events (recorded sound effects) and
spoof (human vs synthetic speech on a G.711 line), each from Debian packages, in a fixed split."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from calm_core.audio.telephone import MULAW_TABLE, mulaw_decode, mulaw_encode, telephone_channel
from calm_core.devsets import DEVSETS, missing_packages
from calm_core.devsets import build_devset as build_named
from calm_core.devsets.__main__ import build_devset, main, midi_file
from calm_core.devsets.common import Build, Clip, Requirement, Source
from calm_core.errors import DatasetError


def needs_packages_of(name: str) -> pytest.MarkDecorator:
    missing = missing_packages(DEVSETS[name].requirements)
    reason = f"the {name} set needs Debian packages {' '.join(missing)}: apt-get install {' '.join(missing)}"
    return pytest.mark.skipif(bool(missing), reason=reason)


def high_band_fraction(audio: np.ndarray, rate: int, above_hz: float = 3600.0) -> float:
    power = np.abs(np.fft.rfft(audio)) ** 2
    return float(power[np.fft.rfftfreq(audio.size, 1.0 / rate) > above_hz].sum() / power.sum())


def check_wavs(out: Path, longest_s: float = 4.0) -> None:
    for path in out.glob("*/*/*.wav"):
        info = sf.info(path)
        assert info.samplerate == 16000 and info.channels == 1 and info.duration <= longest_s, path


def test_midi_writer_produces_a_valid_header_and_track() -> None:
    data = midi_file(24, [(0, 500, 60, 100), (250, 500, 64, 90)])
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    assert int.from_bytes(data[18:22], "big") == len(data) - 22
    assert data.endswith(b"\x00\xff\x2f\x00")


@needs_packages_of("instruments")
def test_builds_a_fixed_split_of_16khz_mono_clips(tmp_path: Path) -> None:
    out = build_devset(tmp_path / "dev", per_class=4, seed=3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "instruments" and manifest["sources"]
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


@pytest.mark.parametrize(
    ("linear", "code", "decoded"),
    [
        (0, 0xFF, 0),
        (100, 0xF2, 104),
        (1000, 0xCE, 988),
        (-1000, 0x4E, -988),
        (32767, 0x80, 32124),
        (-32768, 0x00, -32124),
    ],
)
def test_mulaw_codes_match_hand_computed_g711_values(linear: int, code: int, decoded: int) -> None:
    # 1000: >>2 = 250, +33 = 283 lies in segment 3 (256..511), mantissa (283 >> 4) & 15 = 1, code ~0x31 = 0xCE;
    # back: ((1 << 3) + 132) << 3 = 1120, - 132 = 988
    assert mulaw_encode(np.array([linear], np.int16))[0] == code
    assert mulaw_decode(np.array([code], np.uint8))[0] == decoded


def test_mulaw_round_trip_keeps_every_code_but_negative_zero() -> None:
    codes = mulaw_encode(MULAW_TABLE)
    assert np.array_equal(np.flatnonzero(codes != np.arange(256)), [0x7F])  # 0x7F decodes to 0, which codes as 0xFF
    x = np.arange(-32768, 32768, 7).astype(np.int16)
    error = np.abs(mulaw_decode(mulaw_encode(x)).astype(np.int32) - x)
    assert np.all(error <= np.maximum(12, np.abs(x.astype(np.int32)) // 16))  # 4 mantissa bits: within 1/16


def test_telephone_channel_band_limits_white_noise() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.1, 16000).astype(np.float32)
    line = telephone_channel(noise, 16000, rng)
    assert line.shape == noise.shape and line.dtype == np.float32
    assert high_band_fraction(noise, 16000) > 0.4
    assert high_band_fraction(line, 16000) < 1e-3


def test_a_missing_package_is_named_with_its_apt_get_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absent = replace(DEVSETS["events"], requirements=(Requirement("wesnoth-1.16-data", str(tmp_path / "nowhere")),))
    monkeypatch.setitem(DEVSETS, "events", absent)
    with pytest.raises(DatasetError, match="apt-get install wesnoth-1.16-data"):
        build_named("events", tmp_path / "events")


def test_an_unknown_set_is_refused_with_the_allowed_names(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="instruments, events, spoof, calls"):
        build_named("birdsong", tmp_path)


def test_a_build_is_reused_only_with_the_same_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def build(per_class: int, seed: int) -> Build:
        calls.append(seed)
        tone = np.sin(np.arange(8000) * (seed + 1) / 10).astype(np.float32)
        clips = [
            Clip("tone", tone, split, f"tone_{i}", {"origin": {"seed": seed}})
            for i, split in enumerate(["pool"] * per_class)
        ]
        return Build(clips, [Source("none", "CC0", "test")])

    fake = replace(DEVSETS["events"], name="fake", requirements=(), build=build)
    monkeypatch.setitem(DEVSETS, "fake", fake)
    out = tmp_path / "fake"
    assert main([str(out), "--set", "fake", "--per-class", "2", "--seed", "1"]) == 0
    build_named("fake", out, 2, 1)
    assert calls == [1]
    build_named("fake", out, 1 + 1, 2)
    assert calls == [1, 2]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 2 and manifest["classes"] == {"tone": 2}
    assert manifest["sources"][0]["licence"] == "CC0"


@needs_packages_of("events")
def test_events_are_real_recordings_in_a_fixed_split(tmp_path: Path) -> None:
    out = build_named("events", tmp_path / "events", per_class=12, seed=1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["classes"]) >= 6 and min(manifest["classes"].values()) >= 12
    origins = [(c["origin"]["package"], c["origin"]["file"]) for c in manifest["clips"]]
    assert len(origins) == len(set(origins))  # no recording twice, in one class or two
    splits_of_group: dict[str, set[str]] = {}
    for clip in manifest["clips"]:
        splits_of_group.setdefault(clip["group"], set()).add(clip["split"])
        assert (out / clip["file"]).is_file()
    assert all(len(splits) == 1 for splits in splits_of_group.values())  # edits of one original stay together
    for counts in manifest["splits"].values():
        assert all(n >= 5 for n in counts.values())
    check_wavs(out)
    assert {s["package"] for s in manifest["sources"]} >= {"tuxpaint-stamps-default", "openttd-opensfx"}
    assert all(s["licence"] for s in manifest["sources"])


@needs_packages_of("spoof")
def test_spoof_pairs_sentences_and_puts_both_classes_on_the_line(tmp_path: Path) -> None:
    out = build_named("spoof", tmp_path / "spoof", per_class=12, seed=1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == {"bonafide": 12, "spoof": 12}
    assert manifest["splits"]["pool"] == manifest["splits"]["test"] == {"bonafide": 6, "spoof": 6}
    texts = {split: {c["text"] for c in manifest["clips"] if c["split"] == split} for split in ("pool", "test")}
    assert not texts["pool"] & texts["test"]
    spoofs = [c for c in manifest["clips"] if c["class"] == "spoof"]
    assert all(c["origin"]["synthesiser"] and c["origin"]["voice"] and c["language"] for c in spoofs)
    bonafide = {(c["language"], c["text"]) for c in manifest["clips"] if c["class"] == "bonafide"}
    assert {(c["language"], c["text"]) for c in spoofs} == bonafide  # the same sentence in the same language
    check_wavs(out)
    for clip in manifest["clips"]:
        audio, rate = sf.read(out / clip["file"])
        assert high_band_fraction(audio, rate) < 1e-4, clip["file"]
    assert {"tuxpaint-stamps-default", "espeak-ng", "festival"} <= {s["package"] for s in manifest["sources"]}
    assert all(s["licence"] for s in manifest["sources"])


def test_calls_holds_every_source_on_both_sides_of_the_split_and_a_neural_voice(tmp_path: Path) -> None:
    from calm_core.devsets.calls import GENUINE_SOURCES, SPOOF_SOURCES

    out = build_named("calls", tmp_path / "calls", per_class=4, seed=2)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == {"bonafide": 16, "spoof": 16}
    sources = {(c["class"], c["source"], c["split"]) for c in manifest["clips"]}
    for label, names in (("bonafide", GENUINE_SOURCES), ("spoof", SPOOF_SOURCES)):
        assert {(label, s, split) for s in names for split in ("pool", "test")} <= sources
    piper = [c for c in manifest["clips"] if c["source"] == "piper"]
    assert {c["origin"]["voice"] for c in piper} == {"en_US-joe-medium"} and all(c["text"] for c in piper)
    texts = [c["text"] for c in manifest["clips"] if "text" in c]
    assert len(texts) == len(set(texts))  # no sentence twice, whoever says it
    hedgewars = [c for c in manifest["clips"] if c["source"] == "hedgewars"]
    assert all(not c["origin"]["file"].startswith("Robot/") for c in hedgewars)
    check_wavs(out)
    for clip in manifest["clips"]:
        audio, rate = sf.read(out / clip["file"])
        assert high_band_fraction(audio, rate) < 1e-4, clip["file"]  # every clip on the telephone line
