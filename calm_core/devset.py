"""A small labelled development set from recordings that ship in Debian packages, nobody here made them.

    python -m calm_core.devset OUT_DIR [--per-class 20] [--seed 0]

Classes: six General MIDI instrument families rendered by fluidsynth from the FluidR3 sampled
sound font (real instrument recordings), and English and German speech from espeak-ng with
varied voices, sentences and speeds. Clips are 16 kHz mono WAV, 1 to 4 s. The split is fixed
by the seed: the first half of each class is the pool that support and validation clips are
drawn from, the second half is the test set.

Needs: apt-get install fluidsynth fluid-soundfont-gm espeak-ng
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import DatasetError

SOUND_FONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
INSTRUMENTS = {"piano": 0, "organ": 19, "guitar": 24, "strings": 48, "brass": 61, "flute": 73}
SENTENCES = {
    "en": [
        "The weather will be bright tomorrow morning.", "Please close the door when you leave.",
        "Seven ships sailed across the quiet harbour.", "We are running a little late today.",
        "Turn left at the second traffic light.", "The library opens at nine o'clock.",
        "Could you pass me the salt, please?", "Nobody expected the results to be so good.",
        "The train to the airport is delayed.", "Her garden is full of yellow flowers.",
        "Remember to charge your phone tonight.", "This coffee is much too hot to drink.",
    ],
    "de": [
        "Das Wetter wird morgen früh schön.", "Bitte schließen Sie die Tür beim Gehen.",
        "Sieben Schiffe fuhren durch den stillen Hafen.", "Wir sind heute etwas spät dran.",
        "Biegen Sie an der zweiten Ampel links ab.", "Die Bibliothek öffnet um neun Uhr.",
        "Könnten Sie mir bitte das Salz reichen?", "Niemand hat so gute Ergebnisse erwartet.",
        "Der Zug zum Flughafen hat Verspätung.", "Ihr Garten ist voller gelber Blumen.",
        "Denk daran, heute Abend dein Telefon zu laden.", "Dieser Kaffee ist viel zu heiß.",
    ],
}  # fmt: skip
VOICE_VARIANTS = ["m1", "m2", "m3", "m4", "m7", "f1", "f2", "f3", "f4", "f5"]
SAMPLE_RATE = 16_000


def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def midi_file(program: int, notes: list[tuple[int, int, int, int]]) -> bytes:
    """A format-0 MIDI file at 1 tick = 1 ms; notes are (start_ms, length_ms, pitch, velocity)."""
    events: list[tuple[int, bytes]] = [(0, bytes([0xC0, program]))]
    for start, length, pitch, velocity in notes:
        events.append((start, bytes([0x90, pitch, velocity])))
        events.append((start + length, bytes([0x80, pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1][0] == 0x90))
    track = bytearray(b"\x00\xff\x51\x03" + (480_000).to_bytes(3, "big"))  # 480 ms per quarter = 1 ms per tick
    now = 0
    for t, data in events:
        track += _vlq(t - now) + data
        now = t
    track += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


def _check_tools() -> None:
    missing = [t for t in ("fluidsynth", "espeak-ng") if shutil.which(t) is None]
    if missing or not SOUND_FONT.is_file():
        raise DatasetError(
            f"building the development set needs {', '.join(missing) or str(SOUND_FONT)}: "
            "apt-get install fluidsynth fluid-soundfont-gm espeak-ng"
        )


def _render_instrument(program: int, n: int, rng: np.random.Generator, tmp: Path) -> list[np.ndarray]:
    """n phrases of 3 to 6 notes, rendered in one fluidsynth run and cut apart."""
    notes, spans, t = [], [], 500
    for _ in range(n):
        start, centre = t, int(rng.integers(48, 76))
        for _ in range(int(rng.integers(3, 7))):
            length = int(rng.integers(250, 700))
            notes.append((t, length, int(np.clip(centre + rng.integers(-7, 8), 24, 100)), int(rng.integers(60, 120))))
            t += int(length * rng.uniform(0.8, 1.1))
        spans.append((start, t + 400))
        t += 1500
    mid = tmp / f"p{program}.mid"
    wav = tmp / f"p{program}.wav"
    mid.write_bytes(midi_file(program, notes))
    subprocess.run(
        ["fluidsynth", "-ni", "-q", "-g", "0.8", "-r", "44100", "-F", str(wav), str(SOUND_FONT), str(mid)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    mono = soxr.resample(audio.mean(axis=1), rate, SAMPLE_RATE)
    return [mono[a * SAMPLE_RATE // 1000 : b * SAMPLE_RATE // 1000] for a, b in spans]


def _speak(lang: str, n: int, rng: np.random.Generator, tmp: Path) -> list[np.ndarray]:
    clips = []
    for i in range(n):
        sentence = SENTENCES[lang][i % len(SENTENCES[lang])]
        voice = f"{lang}+{VOICE_VARIANTS[int(rng.integers(len(VOICE_VARIANTS)))]}"
        wav = tmp / f"{lang}{i}.wav"
        speed, pitch = str(int(rng.integers(130, 190))), str(int(rng.integers(30, 70)))
        cmd = ["espeak-ng", "-v", voice, "-s", speed, "-p", pitch, "-w", str(wav), sentence]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        audio, rate = sf.read(wav, dtype="float32")
        clips.append(soxr.resample(audio, rate, SAMPLE_RATE))
    return clips


def build_devset(out: str | Path, per_class: int = 20, seed: int = 0) -> Path:
    """Write OUT/{pool,test}/<class>/*.wav and OUT/manifest.json; reuses a complete earlier build."""
    out = Path(out)
    manifest = out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("per_class") == per_class:
        return out
    _check_tools()
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        classes: dict[str, list[np.ndarray]] = {
            name: _render_instrument(program, per_class, rng, tmp) for name, program in INSTRUMENTS.items()
        }
        classes["speech_en"] = _speak("en", per_class, rng, tmp)
        classes["speech_de"] = _speak("de", per_class, rng, tmp)
    counts = {}
    for name, clips in classes.items():
        order = rng.permutation(len(clips))
        for rank, idx in enumerate(order):
            split = "pool" if rank < per_class // 2 else "test"
            clip = clips[idx][: 4 * SAMPLE_RATE]
            clip = 0.9 * clip / max(1e-6, float(np.abs(clip).max()))
            path = out / split / name / f"{name}_{idx:02d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, clip, SAMPLE_RATE, subtype="PCM_16")
        counts[name] = len(clips)
    manifest.write_text(json.dumps({"per_class": per_class, "seed": seed, "classes": counts}, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calm_core.devset", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_devset(args.out, args.per_class, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
