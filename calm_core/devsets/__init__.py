"""Labelled development sets from recordings that ship in Debian packages; nobody here made them.

    build_devset("events", out)  ->  out/{pool,test}/<class>/*.wav and out/manifest.json

instruments: fluidsynth instrument families and espeak-ng speech (the first set; the default).
events: recorded sound effects from game and desktop packages, seven classes.
spoof: volunteers' speech against synthesisers reading the same sentences, on a telephone line.
calls: four human sources against four synthesisers (one neural), for testing spoof detection out of domain.

Clips are 16 kHz mono PCM_16 WAV of at most 4 s, peak-normalised. The split is fixed by the seed.
The manifest names the set, its parameters, class and split counts, the Debian packages used with
their licences, and every clip's origin. A complete build with the same parameters is reused.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DatasetError
from . import calls, events, instruments, spoof
from .common import DevSet, check_requirements, missing_packages, read_manifest, write_devset

DEVSETS: dict[str, DevSet] = {d.name: d for d in (instruments.DEVSET, events.DEVSET, spoof.DEVSET, calls.DEVSET)}

__all__ = ["DEVSETS", "DevSet", "build_devset", "default_devset_dir", "missing_packages"]


def default_devset_dir(name: str) -> Path:
    """$XDG_CACHE_HOME/calm/devsets/<name>, ~/.cache/calm/devsets/<name> without it."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "calm" / "devsets" / name


def _devset(name: str) -> DevSet:
    if name not in DEVSETS:
        raise DatasetError(f"no development set called {name!r}; allowed: {', '.join(DEVSETS)}")
    return DEVSETS[name]


def build_devset(name: str, out: str | Path | None = None, per_class: int | None = None, seed: int = 0) -> Path:
    """Build the named set into out (default_devset_dir(name) when None) and return out.

    per_class=None takes the set's default (DEVSETS[name].default_per_class; its meaning is in
    DEVSETS[name].per_class_meaning). Raises DatasetError naming the Debian packages to install
    when some are missing."""
    devset = _devset(name)
    per_class = devset.default_per_class if per_class is None else per_class
    if per_class < 2:
        raise DatasetError(
            f"{name}: per_class must be at least 2 (one clip for the pool, one for test), got {per_class}"
        )
    out = Path(out) if out is not None else default_devset_dir(name)
    header = {"name": name, "recipe": devset.recipe, "per_class": per_class, "seed": seed}
    manifest = read_manifest(out)
    if manifest is not None and all(manifest.get(k) == v for k, v in header.items()):
        return out
    check_requirements(name, devset.requirements)
    write_devset(out, devset.build(per_class, seed), header)
    return out
