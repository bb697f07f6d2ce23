"""Labelled clip sets: a folder with one sub-folder per class, or a JSON / CSV manifest."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".au"})
_PATH_KEYS = ("wav", "path", "audio", "file")
_LABEL_KEYS = ("mapped_label", "label", "class")
_CALL_KEYS = ("call", "group")  # clips of one call (or any group) whose scores `calm eval` averages


@dataclass(frozen=True)
class Example:
    path: Path
    label: str
    call: str | None = None  # the call (or group) the clip belongs to, from a manifest's call/group column


def load_examples(spec: str | Path) -> list[Example]:
    """Read a clip set. Manifest paths are relative to the manifest's folder.

    JSON: a list of objects with `wav` and `mapped_label` (or `path`/`label`).
    CSV: a header row with a path column (wav/path/audio/file) and a label column (mapped_label/label/class).
    Either may give every clip a call (column `call` or `group`, a string or integer): `calm eval` then also
    scores each call by the mean over its clips. A manifest that names calls must name one for every clip.
    """
    spec = Path(spec)
    if spec.is_dir():
        examples = _from_folder(spec)
    elif spec.is_file() and spec.suffix.lower() == ".json":
        examples = _from_records(_read_json(spec), spec)
    elif spec.is_file() and spec.suffix.lower() == ".csv":
        with open(spec, newline="") as f:
            examples = _from_records(list(csv.DictReader(f)), spec)
    elif spec.exists():
        raise DatasetError(f"{spec}: expected a folder, a .json or a .csv manifest")
    else:
        raise DatasetError(f"{spec}: no such folder or manifest")
    if not examples:
        raise DatasetError(f"{spec}: holds no audio clips")
    return examples


def _from_folder(root: Path) -> list[Example]:
    examples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        examples += [Example(p, class_dir.name) for p in files]
    if not examples and any(p.suffix.lower() in AUDIO_SUFFIXES for p in root.iterdir()):
        raise DatasetError(f"{root}: audio files must sit in one sub-folder per class, not at the top level")
    return examples


def _read_json(path: Path) -> list[dict[str, object]]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DatasetError(f"{path}: expected a JSON list of objects like {{'wav': ..., 'mapped_label': ...}}")
    return data


def _from_records(records: list[dict[str, object]], manifest: Path) -> list[Example]:
    out = []
    for i, rec in enumerate(records):
        path = next((rec[k] for k in _PATH_KEYS if rec.get(k) not in (None, "")), None)
        label = next((rec[k] for k in _LABEL_KEYS if rec.get(k) not in (None, "")), None)
        if path is None or label is None:
            raise DatasetError(
                f"{manifest}: record {i} needs a path ({'/'.join(_PATH_KEYS)}) and a label "
                f"({'/'.join(_LABEL_KEYS)}), got keys {sorted(rec)}"
            )
        p = Path(str(path)).expanduser()
        out.append(Example(p if p.is_absolute() else manifest.parent / p, str(label), _call(rec, i, manifest)))
    without = [i for i, e in enumerate(out) if e.call is None]
    if len(without) < len(out) and without:
        raise DatasetError(
            f"{manifest}: records {_some(without)} have no call ({'/'.join(_CALL_KEYS)}) while others do; "
            "give every clip its call, or none"
        )
    return out


def _call(rec: dict[str, object], i: int, manifest: Path) -> str | None:
    key = next((k for k in _CALL_KEYS if rec.get(k) not in (None, "")), None)
    if key is None:
        return None
    value = rec[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DatasetError(f"{manifest}: record {i} has {key} = {value!r}; expected a string or an integer")
    return str(value).strip() or None


def _some(indices: list[int], shown: int = 5) -> str:
    more = f" and {len(indices) - shown} more" if len(indices) > shown else ""
    return ", ".join(map(str, indices[:shown])) + more


def label_index(examples: list[Example], labels: list[str] | None = None) -> tuple[list[str], list[int]]:
    """Class names (sorted unless given) and each example's class index."""
    names = labels if labels is not None else sorted({e.label for e in examples})
    lookup = {n: i for i, n in enumerate(names)}
    unknown = sorted({e.label for e in examples} - set(lookup))
    if unknown:
        raise DatasetError(f"labels {unknown} are not classes of the classifier; its classes: {names}")
    return names, [lookup[e.label] for e in examples]
