"""instruments: six General MIDI instrument families and English and German speech.

The instruments are rendered by fluidsynth from the FluidR3 sampled sound font (real instrument
recordings); the speech is espeak-ng with varied voices, sentences and speeds. Clips are 1 to
4 s. per_class is the exact number of clips of each class; the first half of a seeded
permutation is the pool, the rest the test set.
"""

from __future__ import annotations

import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from .common import SAMPLE_RATE, Build, Clip, DevSet, Requirement, Source

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


def _speak(lang: str, n: int, rng: np.random.Generator, tmp: Path) -> list[tuple[np.ndarray, dict[str, Any]]]:
    clips = []
    for i in range(n):
        sentence = SENTENCES[lang][i % len(SENTENCES[lang])]
        voice = f"{lang}+{VOICE_VARIANTS[int(rng.integers(len(VOICE_VARIANTS)))]}"
        wav = tmp / f"{lang}{i}.wav"
        speed, pitch = str(int(rng.integers(130, 190))), str(int(rng.integers(30, 70)))
        cmd = ["espeak-ng", "-v", voice, "-s", speed, "-p", pitch, "-w", str(wav), sentence]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        audio, rate = sf.read(wav, dtype="float32")
        origin = {"synthesiser": "espeak-ng", "voice": voice, "speed": int(speed), "pitch": int(pitch)}
        clips.append((soxr.resample(audio, rate, SAMPLE_RATE), {"language": lang, "text": sentence, "origin": origin}))
    return clips


def build(per_class: int, seed: int) -> Build:
    """per_class clips of each class; the random draws are in the order of the first version of this
    set, so the same arguments give the same files."""
    rng = np.random.default_rng(seed)
    classes: dict[str, list[tuple[np.ndarray, dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, program in INSTRUMENTS.items():
            origin = {"synthesiser": "fluidsynth", "sound_font": SOUND_FONT.name, "program": program}
            classes[name] = [(audio, {"origin": origin}) for audio in _render_instrument(program, per_class, rng, tmp)]
        classes["speech_en"] = _speak("en", per_class, rng, tmp)
        classes["speech_de"] = _speak("de", per_class, rng, tmp)
    clips = []
    for name, items in classes.items():
        order = rng.permutation(len(items))
        for rank, idx in enumerate(order):
            audio, info = items[idx]
            split = "pool" if rank < per_class // 2 else "test"
            clips.append(Clip(name, audio[: 4 * SAMPLE_RATE], split, f"{name}_{idx:02d}", info))
    return Build(clips, SOURCES)


SOURCES = [
    Source("fluid-soundfont-gm", "MIT", "FluidR3 GM sound font: the instrument recordings"),
    Source("fluidsynth", "LGPL-2.1+", "renders the instrument phrases"),
    Source("espeak-ng", "GPL-3+", "speaks the English and German sentences"),
]
REQUIREMENTS = (
    Requirement("fluidsynth", "fluidsynth"),
    Requirement("fluid-soundfont-gm", str(SOUND_FONT)),
    Requirement("espeak-ng", "espeak-ng"),
)
DEVSET = DevSet(
    name="instruments",
    description="6 fluidsynth instrument families + English and German espeak-ng speech",
    default_per_class=20,
    per_class_meaning="exact number of clips per class",
    recipe=1,
    requirements=REQUIREMENTS,
    build=build,
)
