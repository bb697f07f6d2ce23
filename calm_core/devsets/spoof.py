"""spoof: human versus synthetic speech on a telephone line, classes bonafide and spoof.

bonafide: the spoken stamp descriptions of tuxpaint-stamps-default, recorded by volunteers in
twelve languages (each by one or a few volunteers). spoof: for every bonafide clip, a
synthesiser says the same text in the same language - espeak-ng in all twelve, and flite and
festival in English, festival in Catalan; English and Catalan get more pairs so that the spoof
class is not one engine. Language and text therefore tell nothing about the class. Every clip,
of both classes, has its silence trimmed and passes through the same G.711 line
(telephone.telephone_channel). A pair (one sentence, both classes) lands on one side of the split;
no stamp or text is used twice. per_class is the number of pairs.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ..audio.decode import load_audio
from ..audio.telephone import telephone_channel
from ..errors import DatasetError
from .common import MAX_SECONDS, SAMPLE_RATE, Build, Clip, DevSet, Requirement, Source, trim_silence

STAMPS = Path("/usr/share/tuxpaint/stamps")
LANGUAGES = {  # tuxpaint's language code -> espeak-ng voices for it
    "en": ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-us-nyc"),
    "ca": ("ca",), "fr": ("fr-fr", "fr-be"), "es": ("es", "es-419"), "pt_BR": ("pt-br",), "ro": ("ro",),
    "ru": ("ru",), "be": ("be",), "bg": ("bg",), "el": ("el",), "da": ("da",), "nl": ("nl",),
}  # fmt: skip
# Only English and Catalan have a synthesiser besides espeak-ng: they get more pairs (WEIGHT: turns per
# round of the others' one) and their pairs go mostly to the other engines (ENGINES: turns per round), so
# that espeak-ng is not the whole spoof class.
WEIGHT = {"en": 4, "ca": 3}
ENGINES = {"en": {"flite": 2, "festival": 2, "espeak-ng": 1}, "ca": {"festival": 2, "espeak-ng": 1}}
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = {"en": ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"), "ca": ("upc_ca_ona_hts",)}
FESTIVAL_ENCODING = {"en": "latin-1", "ca": "iso8859-15"}  # festival reads 8-bit text
SECONDS = (0.6, MAX_SECONDS)  # bonafide recordings outside this are a word or get cut mid-sentence
DEFAULT_PAIRS = 80
_DESCRIPTION = re.compile(r"^(?P<stem>.+)_desc(?:_(?P<lang>[a-z]{2}(?:_[A-Z]{2})?))?\.(?:ogg|wav)$")


@dataclass(frozen=True)
class Recording:
    path: Path
    language: str
    text: str
    stamp: str  # the stamp, e.g. animals/birds/crow: its descriptions in all languages say the same


@lru_cache(maxsize=4096)
def _descriptions(txt: Path) -> dict[str, str]:
    """A stamp's description per language: the first line is English, then lines 'xx.utf8=text'."""
    lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    texts = {"en": lines[0].strip()} if lines else {}
    for line in lines[1:]:
        lang, sep, text = line.partition(".utf8=")
        if sep:
            texts[lang.strip()] = text.strip()
    return texts


def recordings() -> dict[str, list[Recording]]:
    """Every spoken description with its text, per language, in a fixed order."""
    found: dict[str, list[Recording]] = {lang: [] for lang in LANGUAGES}
    for path in sorted(STAMPS.rglob("*_desc*")):
        match = _DESCRIPTION.match(path.name)
        if match is None or "alphabets" in path.parts:  # letters of the alphabet are not sentences
            continue
        lang = match["lang"] or "en"
        txt = path.with_name(match["stem"] + ".txt")
        text = _descriptions(txt).get(lang, "") if lang in found and txt.is_file() else ""
        if text:
            stamp = path.parent.relative_to(STAMPS).as_posix() + "/" + match["stem"]
            found[lang].append(Recording(path, lang, text, stamp))
    return found


def _text_key(text: str) -> str:
    return re.sub(r"\W+", " ", text.casefold()).strip()


def choose_recordings(n: int, rng: np.random.Generator) -> list[Recording]:
    """n recordings, the languages taking turns by WEIGHT, none sharing a stamp or a text."""
    queues = {lang: [recs[i] for i in rng.permutation(len(recs))] for lang, recs in recordings().items()}
    turns = [lang for lang in LANGUAGES for _ in range(WEIGHT.get(lang, 1))]
    turns = [turns[i] for i in rng.permutation(len(turns))]
    chosen: list[Recording] = []
    stamps: set[str] = set()
    texts: set[str] = set()
    while len(chosen) < n and any(queues.values()):
        for lang in turns:
            while queues[lang] and len(chosen) < n:
                rec = queues[lang].pop(0)
                key = _text_key(rec.text)
                if rec.stamp in stamps or not key or key in texts:
                    continue
                if SECONDS[0] <= sf.info(str(rec.path)).duration <= SECONDS[1]:
                    chosen.append(rec)
                    stamps.add(rec.stamp)
                    texts.add(key)
                    break
    if len(chosen) < n:
        raise DatasetError(f"spoof: only {len(chosen)} usable recordings in {STAMPS}, {n} pairs asked for")
    return chosen


def _run(cmd: list[str], stdin: bytes | None, what: str) -> None:
    try:
        subprocess.run(cmd, input=stdin, check=True, capture_output=True, timeout=120)
    except subprocess.CalledProcessError as e:
        raise DatasetError(f"spoof: {what} failed: {e.stderr.decode(errors='replace').strip()}") from e
    except subprocess.TimeoutExpired as e:
        raise DatasetError(f"spoof: {what} did not finish in {e.timeout} s") from e


def _engines(language: str) -> list[str]:
    """The engines' turns for a language, e.g. [flite, flite, festival, festival, espeak-ng]."""
    return [engine for engine, turns in ENGINES.get(language, {"espeak-ng": 1}).items() for _ in range(turns)]


def _readable(text: str, language: str, engine: str) -> bool:
    """festival reads 8-bit text, flite English in ASCII; what they cannot read goes to espeak-ng."""
    if engine == "flite":
        return text.isascii()
    if engine == "festival":
        try:
            text.encode(FESTIVAL_ENCODING[language])
        except UnicodeEncodeError:
            return False
    return True


def _festival(rec: Recording, rng: np.random.Generator, wav: Path) -> dict[str, Any]:
    voice = str(rng.choice(FESTIVAL_VOICES[rec.language]))
    settings: dict[str, Any] = {"synthesiser": "festival", "voice": voice}
    cmd = ["text2wave", "-eval", f"(voice_{voice})", "-o", str(wav)]
    if voice.endswith("_diphone"):  # the HTS voices ignore Duration_Stretch
        settings["duration_stretch"] = round(float(rng.uniform(0.85, 1.25)), 2)
        cmd += ["-eval", f"(Parameter.set 'Duration_Stretch {settings['duration_stretch']})"]
    _run(cmd, rec.text.encode(FESTIVAL_ENCODING[rec.language]), f"festival {voice} on {rec.text!r}")
    return settings


def _flite(rec: Recording, rng: np.random.Generator, wav: Path) -> dict[str, Any]:
    voice = str(rng.choice(FLITE_VOICES))
    stretch = round(float(rng.uniform(0.85, 1.25)), 2)
    txt = wav.with_suffix(".txt")  # flite reads text from a file or its command line, not stdin
    txt.write_text(rec.text, encoding="ascii")
    cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}", "-f", str(txt), "-o", str(wav)]
    _run(cmd, None, f"flite {voice} on {rec.text!r}")
    return {"synthesiser": "flite", "voice": voice, "duration_stretch": stretch}


def _espeak(rec: Recording, rng: np.random.Generator, wav: Path) -> dict[str, Any]:
    voice = f"{rng.choice(LANGUAGES[rec.language])}+{rng.choice(ESPEAK_VARIANTS)}"
    speed, pitch = int(rng.integers(120, 190)), int(rng.integers(25, 75))
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), "--stdin"]
    _run(cmd, rec.text.encode(), f"espeak-ng {voice} on {rec.text!r}")
    return {"synthesiser": "espeak-ng", "voice": voice, "speed": speed, "pitch": pitch}


SYNTHESISERS = {"festival": _festival, "flite": _flite, "espeak-ng": _espeak}


def synthesise(rec: Recording, engine: str, rng: np.random.Generator, wav: Path) -> dict[str, Any]:
    """Say rec.text in rec.language into wav with engine (espeak-ng where engine cannot read the text);
    returns the synthesiser and voice settings used."""
    engine = engine if _readable(rec.text, rec.language, engine) else "espeak-ng"
    return SYNTHESISERS[engine](rec, rng, wav)


def _on_the_line(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return telephone_channel(trim_silence(audio)[: int(MAX_SECONDS * SAMPLE_RATE)], SAMPLE_RATE, rng)


def build(per_class: int, seed: int) -> Build:
    rng = np.random.default_rng(seed)
    chosen = choose_recordings(per_class, rng)
    pool = set(rng.permutation(per_class)[: per_class // 2].tolist())
    offsets = {lang: int(rng.integers(len(_engines(lang)))) for lang in LANGUAGES}  # engines take turns per language
    turns: Counter[str] = Counter()
    width = max(2, len(str(per_class - 1)))
    clips: list[Clip] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, rec in enumerate(chosen):
            engines = _engines(rec.language)
            engine = engines[(offsets[rec.language] + turns[rec.language]) % len(engines)]
            turns[rec.language] += 1
            wav = Path(tmp) / f"{k}.wav"
            synthesiser = synthesise(rec, engine, rng, wav)
            split = "pool" if k in pool else "test"
            speech = {"language": rec.language, "text": rec.text, "pair": k}
            recorded = {"package": "tuxpaint-stamps-default", "file": rec.path.relative_to(STAMPS).as_posix()}
            for label, audio, origin in (
                ("bonafide", load_audio(rec.path), recorded),
                ("spoof", load_audio(wav), {"package": synthesiser["synthesiser"]} | synthesiser),
            ):
                line = _on_the_line(audio, rng)
                clips.append(Clip(label, line, split, f"{label}_{k:0{width}d}", speech | {"origin": origin}))
    notes = {
        "channel": "silence trimmed, first 4 s; 8 kHz, line noise 55 dB below peak, 300-3400 Hz, G.711 mu-law; 16 kHz",
        "languages": dict(Counter(rec.language for rec in chosen)),
        "spoof_synthesisers": dict(Counter(c.info["origin"]["synthesiser"] for c in clips if c.label == "spoof")),
    }
    return Build(clips, SOURCES, notes)


SOURCES = [
    Source("tuxpaint-stamps-default", "GPL-2", "bonafide: volunteers reading the stamp descriptions"),
    Source("espeak-ng", "GPL-3+", "spoof: formant synthesis, all languages"),
    Source("flite", "BSD-style (CMU Flite licence)", "spoof: English"),
    Source("festival", "BSD-style (Festival licence)", "spoof: English and Catalan"),
    Source("festvox-kallpc16k", "BSD-style (Festvox licence)", "spoof: festival voice kal_diphone"),
    Source("festvox-kdlpc16k", "BSD-style (Festvox licence)", "spoof: festival voice ked_diphone"),
    Source("festvox-us-slt-hts", "EST-2003 and BSD-3-clause", "spoof: festival voice cmu_us_slt_arctic_hts"),
    Source("festvox-ca-ona-hts", "LGPL-2.1+", "spoof: festival voice upc_ca_ona_hts (with festival-ca, LGPL-2.1)"),
]
REQUIREMENTS = (
    Requirement("tuxpaint-stamps-default", str(STAMPS)),
    Requirement("espeak-ng", "espeak-ng"),
    Requirement("flite", "flite"),
    Requirement("festival", "text2wave"),
    Requirement("festvox-kallpc16k", "/usr/share/festival/voices/english/kal_diphone"),
    Requirement("festvox-kdlpc16k", "/usr/share/festival/voices/english/ked_diphone"),
    Requirement("festvox-us-slt-hts", "/usr/share/festival/voices/us/cmu_us_slt_arctic_hts"),
    Requirement("festvox-ca-ona-hts", "/usr/share/festival/voices/catalan/upc_ca_ona_hts"),
)
DEVSET = DevSet(
    name="spoof",
    description="bonafide vs synthetic speech (same sentences, 12 languages) through a G.711 telephone line",
    default_per_class=DEFAULT_PAIRS,
    per_class_meaning="number of sentences: each gives one bonafide and one spoof clip",
    recipe=1,
    requirements=REQUIREMENTS,
    build=build,
)
