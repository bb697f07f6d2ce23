"""What the development sets share: clip records, trimming, Debian requirements, and the writer
of the split and its manifest."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ..errors import DatasetError

SAMPLE_RATE = 16_000
MAX_SECONDS = 4.0
PEAK = 0.9
SPLITS = ("pool", "test")


@dataclass(frozen=True)
class Requirement:
    """A file or folder (a path) or a program (no slash: looked up on PATH) that a Debian package installs."""

    package: str
    path: str

    def present(self) -> bool:
        if "/" in self.path:
            return Path(self.path).exists()
        return shutil.which(self.path) is not None


def missing_packages(requirements: Iterable[Requirement]) -> list[str]:
    """The Debian packages, in the order given, of the requirements that are not installed."""
    return list(dict.fromkeys(r.package for r in requirements if not r.present()))


def check_requirements(set_name: str, requirements: Iterable[Requirement]) -> None:
    missing = missing_packages(requirements)
    if missing:
        raise DatasetError(
            f"the {set_name} development set needs the Debian package(s) {', '.join(missing)}, "
            f"which are not installed: apt-get install {' '.join(missing)}"
        )


@dataclass(frozen=True)
class Source:
    """A Debian package that recordings, or the programs that made them, come from."""

    package: str
    licence: str
    role: str

    def as_dict(self) -> dict[str, str]:
        return {
            "package": self.package,
            "licence": self.licence,
            "role": self.role,
            "copyright": f"/usr/share/doc/{self.package}/copyright",
        }


@dataclass
class Clip:
    """One clip of a set: 16 kHz mono audio, its class and split, and what the manifest says about it."""

    label: str
    audio: np.ndarray  # (n,) float32 at 16 kHz
    split: str  # "pool" or "test"
    stem: str  # the file name without ".wav"
    info: dict[str, Any]  # origin (package + file, or synthesiser + voice), and language + text for speech


@dataclass
class Build:
    clips: list[Clip]
    sources: list[Source]
    notes: dict[str, Any] = field(default_factory=dict)  # extra manifest entries, e.g. what was dropped and why


@dataclass(frozen=True)
class DevSet:
    """A named development set: what it needs, where its recordings come from, and how to build it."""

    name: str
    description: str
    default_per_class: int
    per_class_meaning: str
    recipe: int  # bumped whenever the same arguments would give different clips, so old builds are not reused
    requirements: tuple[Requirement, ...]
    build: Callable[[int, int], Build]  # (per_class, seed) -> clips


def peak_normalise(audio: np.ndarray) -> np.ndarray:
    return PEAK * audio / max(1e-6, float(np.abs(audio).max()))


def loudest_window(audio: np.ndarray, seconds: float = MAX_SECONDS) -> np.ndarray:
    """The loudest `seconds` of a clip (all of it when shorter): an event is rarely at the very start."""
    n = int(seconds * SAMPLE_RATE)
    if audio.size <= n:
        return audio
    energy = np.concatenate([[0.0], np.cumsum(np.square(audio, dtype=np.float64))])
    start = int(np.argmax(energy[n:] - energy[:-n]))
    return audio[start : start + n]


def trim_silence(audio: np.ndarray, floor_db: float = -35.0, margin_s: float = 0.05) -> np.ndarray:
    """Cut leading and trailing frames quieter than floor_db below the loudest 20 ms frame, keeping a margin.

    Recordings and synthesisers pad speech with different amounts of silence; left in, the
    padding alone would tell the classes apart."""
    frame = SAMPLE_RATE // 50
    n = audio.size // frame
    if n == 0:
        return audio
    rms = np.sqrt(np.mean(np.square(audio[: n * frame].reshape(n, frame), dtype=np.float64), axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (floor_db / 20))
    margin = int(margin_s * SAMPLE_RATE)
    return audio[max(0, loud[0] * frame - margin) : min(audio.size, (loud[-1] + 1) * frame + margin)]


def balanced_split(groups: dict[str, list[int]]) -> dict[int, str]:
    """Assign whole groups to pool or test, biggest first, each to the split that has fewer clips so far.

    groups: group key -> indices of its clips, in a seeded random order. A group never straddles
    the split, so near-duplicates (one recording edited twice) cannot leak from pool into test."""
    sizes = {"pool": 0, "test": 0}
    split_of: dict[int, str] = {}
    for members in sorted(groups.values(), key=len, reverse=True):  # stable: equal sizes keep their random order
        split = "pool" if sizes["pool"] <= sizes["test"] else "test"
        sizes[split] += len(members)
        split_of.update(dict.fromkeys(members, split))
    return split_of


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged manifest means an incomplete build: build again
    return manifest if isinstance(manifest, dict) else None


def write_devset(out: Path, build: Build, header: dict[str, Any]) -> None:
    """Write OUT/{pool,test}/<class>/<stem>.wav (peak-normalised, PCM_16) and then, last, OUT/manifest.json:
    a manifest exists only beside a complete build."""
    (out / "manifest.json").unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)  # clips of an earlier build with other parameters
    entries = []
    for clip in build.clips:
        path = out / clip.split / clip.label / f"{clip.stem}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, peak_normalise(clip.audio), SAMPLE_RATE, subtype="PCM_16")
        seconds = round(clip.audio.size / SAMPLE_RATE, 3)
        entries.append(
            {"file": path.relative_to(out).as_posix(), "class": clip.label, "split": clip.split, "seconds": seconds}
            | clip.info
        )
    classes = dict(Counter(c.label for c in build.clips))
    splits = {
        s: {label: sum(c.label == label and c.split == s for c in build.clips) for label in classes} for s in SPLITS
    }
    manifest = header | {
        "classes": classes,
        "splits": splits,
        "sources": [s.as_dict() for s in build.sources],
        **build.notes,
        "clips": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
