"""events: recorded sound effects from Debian game and desktop packages, in seven classes.

Each class is a list of file patterns in the packages' sound folders (or titles in OpenTTD's
sound catalogue); a file belongs to one class only. Clips are decoded to 16 kHz mono, the
loudest 4 s kept; clips shorter than 0.3 s and exact re-encodes of a clip already taken (one
recording shipped under two names) are dropped and counted. per_class caps a class; a seeded
random subset is taken where a class has more. Clips edited from one original recording form
a group that stays on one side of the pool/test split.
"""

from __future__ import annotations

import fnmatch
import io
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from glob import glob
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio.decode import decode_file, prepare_clip
from ..errors import DatasetError
from .common import SAMPLE_RATE, Build, Clip, DevSet, Requirement, Source, balanced_split, loudest_window

MIN_SECONDS = 0.3
AUDIO_SUFFIXES = (".ogg", ".oga", ".wav")
WESNOTH = Path(next(iter(sorted(glob("/usr/share/games/wesnoth/1.*"))), "/usr/share/games/wesnoth/1.16"))
PACKAGES = {  # key -> (Debian package, where its sounds are, licence of those sounds)
    "tuxpaint": ("tuxpaint-stamps-default", Path("/usr/share/tuxpaint/stamps"), "GPL-2"),
    "wesnoth": (f"wesnoth-{WESNOTH.name}-data", WESNOTH, "GPL-2+"),
    "hedgewars": (
        "hedgewars-data",
        Path("/usr/share/games/hedgewars/Data/Sounds"),
        "GFDL-1.3 (Droplet*: CC-BY-SA-3.0)",
    ),
    "freedesktop": (
        "sound-theme-freedesktop",
        Path("/usr/share/sounds/freedesktop/stereo"),
        "per file: CC-BY-SA-3.0, CC-BY-3.0, GPL-2+ or GPL-2 (only files the copyright file lists are used)",
    ),
    "openttd": ("openttd-opensfx", Path("/usr/share/games/openttd/baseset/opensfx/opensfx.cat"), "CC-BY-SA-3.0"),
}
W = "data/core/sounds/"  # wesnoth's effects; its user-interface sounds are in sounds/
CLASSES: dict[str, list[tuple[str, str]]] = {
    "birds": [
        ("tuxpaint", "animals/birds/**/*"), ("openttd", "Tropical: Bird*"), ("wesnoth", W + "ambient/birds*"),
    ],
    "mammals": [
        ("tuxpaint", "animals/mammals/**/*"), ("tuxpaint", "animals/marsupials/*"),
        ("tuxpaint", "seasonal/halloween/blackcat*"), ("wesnoth", W + "wolf-growl-*"),
        ("openttd", "Sheep"), ("openttd", "Cow"), ("openttd", "Horse"),
        ("openttd", "Tropical: Lion roar"), ("openttd", "Tropical: Monkeys"),
    ],
    "pain_cries": [  # human voices hurt or dying (hedgewars' voice packs are not used)
        ("wesnoth", W + "human-*"), ("wesnoth", W + "dwarf-hit-*"), ("wesnoth", W + "dwarf-die-*"),
        ("wesnoth", W + "elf-hit-*"),
    ],
    "blasts": [  # explosions, gunfire, thunder
        ("wesnoth", W + "explosion.ogg"), ("wesnoth", W + "gunshot.wav"), ("wesnoth", W + "thunderstick*"),
        ("wesnoth", W + "dragonstick*"), ("wesnoth", W + "cave-in.ogg"), ("wesnoth", W + "lightning*"),
        ("hedgewars", "explosion.ogg"), ("hedgewars", "mortar.ogg"), ("hedgewars", "shotgunfire.ogg"),
        ("hedgewars", "gun.ogg"), ("hedgewars", "minigun.ogg"),
        ("openttd", "Explosion"), ("tuxpaint", "seasonal/newyears/fireworks*"),
        ("tuxpaint", "naturalforces/lightningbolt*"),
    ],
    "melee_hits": [  # blades, clubs and hammers striking
        *[("wesnoth", W + f) for f in ("sword-*", "mace.*", "club.ogg", "flail.ogg", "staff.*", "spear.*",
                                       "hatchet.wav", "throwing-knife.ogg", "claws.ogg", "pincers.ogg")],
        ("hedgewars", "baseballbat.ogg"), ("hedgewars", "hammer.ogg"), ("hedgewars", "knife_impact.ogg"),
    ],
    "vehicles": [  # engines, horns and take-offs of trains, ships, planes, buses and trucks
        *[("openttd", t) for t in ("Steam train station departure", "Steam engine going in tunnel", "Ship horn",
                                   "Ferry horn", "Propeller plane start", "Early jet take off",
                                   "Diesel/electric train station departure", "Helicopter", "Truck/old bus start*",
                                   "Modern bus start", "Old bus start", "Mach 1+ Jet take off", "Modern jet take off",
                                   "Maglev train station departure", "Monorail train station departure",
                                   "Toyland: Propeller plane take off")],
        ("hedgewars", "plane.ogg"), ("tuxpaint", "vehicles/emergency/firetruck*"), ("tuxpaint", "space/apollo_lander*"),
    ],
    "chimes": [  # bells, chimes and ringing tones of desktops, phones and a game's interface
        *[("freedesktop", f + ".oga") for f in ("alarm-clock-elapsed", "complete", "message",
                                               "message-new-instant", "phone-incoming-call", "phone-outgoing-busy",
                                               "phone-outgoing-calling", "service-login", "service-logout",
                                               "suspend-error")],
        *[("wesnoth", "sounds/" + f) for f in ("bell.wav", "chat-*", "timer.wav", "join.wav", "leave.wav",
                                              "arrive.wav")],
    ],
}  # fmt: skip
DEFAULT_PER_CLASS = 30


@dataclass(frozen=True)
class SoundFile:
    """One recording in a package: where it is, the group of recordings edited from the same original,
    and how to decode it to (samples (n, channels), rate)."""

    key: str  # which package
    name: str  # path under the package's sound folder, or title in the OpenTTD catalogue
    group: str
    load: Callable[[], tuple[np.ndarray, int]]


def _folder_files(key: str, pattern: str) -> list[SoundFile]:
    root = PACKAGES[key][1]
    files = []
    for path in sorted(root.glob(pattern)):
        if path.suffix in AUDIO_SUFFIXES and "_desc" not in path.name:  # tuxpaint's *_desc*: spoken descriptions
            name = path.relative_to(root).as_posix()
            files.append(SoundFile(key, name, f"{key}:{name}", partial(decode_file, path)))
    return files


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(data), always_2d=True)
    return samples, int(rate)


def _openttd_files() -> Iterator[SoundFile]:
    """OpenTTD's sound catalogue: a table of (offset, size) pairs, then at each offset a length-prefixed
    description - '"Title". Original "file" by ... License: ...' - followed by a RIFF WAV file."""
    path = PACKAGES["openttd"][1]
    data = path.read_bytes()
    count = (struct.unpack_from("<I", data, 0)[0] & 0x7FFFFFFF) // 8  # the high bit marks the newer format
    for i in range(count):
        offset, size = struct.unpack_from("<II", data, 8 * i)
        offset &= 0x7FFFFFFF
        length = data[offset]
        description = data[offset + 1 : offset + 1 + length].rstrip(b"\0").decode("latin-1")
        wav = data[offset + 1 + length : offset + size]
        title = re.match(r'"([^"]*)"', description)
        if title is None or not wav.startswith(b"RIFF"):
            continue  # the catalogue's empty placeholders
        original = re.search(r'Original "([^"]*)"', description)
        group = f"openttd:{original.group(1) if original else title.group(1)}"
        yield SoundFile("openttd", title.group(1), group, partial(_read_wav, wav))


def _matching(key: str, pattern: str, openttd: list[SoundFile]) -> list[SoundFile]:
    if key == "openttd":
        return [f for f in openttd if fnmatch.fnmatchcase(f.name, pattern)]
    return _folder_files(key, pattern)


def catalogue() -> dict[str, list[SoundFile]]:
    """The recordings of each class, in a fixed order. Raises DatasetError if a file matches two classes."""
    openttd = list(_openttd_files())
    classes: dict[str, list[SoundFile]] = {}
    owner: dict[tuple[str, str], str] = {}
    for label, patterns in CLASSES.items():
        files = [f for key, pattern in patterns for f in _matching(key, pattern, openttd)]
        for f in files:
            if owner.setdefault((f.key, f.name), label) != label:
                raise DatasetError(f"events: {f.key} {f.name!r} matches both {owner[(f.key, f.name)]} and {label}")
        classes[label] = list({(f.key, f.name): f for f in files}.values())
    return classes


def _envelope(audio: np.ndarray) -> np.ndarray:
    frame = SAMPLE_RATE // 100
    n = audio.size // frame
    return np.sqrt(np.mean(np.square(audio[: n * frame].reshape(n, frame)), axis=1))


def _same_recording(a: np.ndarray, b: np.ndarray) -> bool:
    """Two clips whose 10 ms loudness envelopes match: one recording re-encoded or renamed."""
    if abs(a.size - b.size) > 2 or min(a.size, b.size) < 3:
        return False
    n = min(a.size, b.size)
    if a[:n].std() == 0 or b[:n].std() == 0:
        return False
    return bool(np.corrcoef(a[:n], b[:n])[0, 1] > 0.95)


def build(per_class: int, seed: int) -> Build:
    rng = np.random.default_rng(seed)
    dropped = {"shorter_than_0.3_s": 0, "same_recording_as_another_clip": 0}
    clips: list[Clip] = []
    envelopes: list[np.ndarray] = []
    for label, files in catalogue().items():
        kept: list[tuple[SoundFile, np.ndarray]] = []
        for idx in rng.permutation(len(files)):
            if len(kept) == per_class:
                break
            f = files[idx]
            samples, rate = f.load()
            audio = prepare_clip(samples, rate, source=f"{f.key}:{f.name}", min_seconds=0.0, max_seconds=600.0)
            if audio.size < MIN_SECONDS * SAMPLE_RATE:
                dropped["shorter_than_0.3_s"] += 1
                continue
            envelope = _envelope(audio)
            if any(_same_recording(envelope, e) for e in envelopes):
                dropped["same_recording_as_another_clip"] += 1
                continue
            envelopes.append(envelope)
            kept.append((f, audio))
        groups: dict[str, list[int]] = {}
        for i, (f, _) in enumerate(kept):
            groups.setdefault(f.group, []).append(i)
        split_of = balanced_split(groups)
        for i, (f, audio) in enumerate(kept):
            package = PACKAGES[f.key][0]
            info = {"origin": {"package": package, "file": f.name}, "group": f.group}
            clips.append(Clip(label, loudest_window(audio), split_of[i], f"{label}_{i:02d}", info))
    sources = [Source(package, licence, "recorded sound effects") for package, _, licence in PACKAGES.values()]
    return Build(clips, sources, {"dropped": dropped})


REQUIREMENTS = tuple(Requirement(package, str(path)) for package, path, _ in PACKAGES.values())
DEVSET = DevSet(
    name="events",
    description="recorded sound effects in 7 classes from 5 Debian game and desktop packages",
    default_per_class=DEFAULT_PER_CLASS,
    per_class_meaning="cap on the clips of a class (classes have 15 to 50 usable recordings)",
    recipe=1,
    requirements=REQUIREMENTS,
    build=build,
)
