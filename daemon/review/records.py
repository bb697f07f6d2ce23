"""What the review keeps: a verdict on a saved detection, a classifier version, the job (Apply, Undo,
Restore) running or last run, and how a job ends when calmd stops under it. Plain records, serialised as
JSON in review_dir/state.json by calmd.review.workflow."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calm_core.messages.events import utc_iso

from ..refusals import Refused


@dataclass
class Verdict:
    kind: str  # right | wrong | relabel | new
    label: str | None  # the class it teaches (None: wrong)
    detected: str  # the label calmd gave it
    state: str  # pending | applied | recorded (wrong)
    time_utc: str
    version: str | None = None  # the classifier it was applied in
    positive: bool = False  # a new class joining the detector's positive group (a new kind of attack)


@dataclass
class Version:
    name: str  # e.g. "garden-v3"
    file: str  # relative to review_dir
    sha256: str
    parent: str | None  # what Undo goes back to
    created_utc: str
    taught: dict[str, str] = field(default_factory=dict)  # clip -> class
    note: str = ""
    checked: dict[str, dict[str, Any]] = field(default_factory=dict)  # clip -> how this version labels it
    # reviewed clips of classes it knew, taught only after it: clip -> its label then, and the reviewer's
    held_out: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Job:
    action: str  # apply | undo
    state: str = "running"  # running | done | failed | interrupted (calmd stopped)
    message: str = ""
    classifier: str | None = None
    started_utc: str = field(default_factory=lambda: utc_iso(time.time()))
    finished_utc: str | None = None


def checked_note(version: Version) -> str:
    """What a version's check of its taught clips found, in one phrase."""
    missed = {c: v["label"] for c, v in version.checked.items() if v.get("label") != version.taught.get(c)}
    if not version.checked:
        return "its labels of the taught clips are unknown"
    if not missed:
        return f"it labels all {len(version.checked)} taught clips as taught"
    listed = ", ".join(f"{c} as {label}" for c, label in list(missed.items())[:5])
    return f"{len(missed)} of {len(version.checked)} taught clips are still not labelled as taught ({listed})"


class Interrupted(Refused):
    """Apply or Undo stopped because calmd is stopping: the classifier file and the versions are as before."""

    def __init__(self) -> None:
        super().__init__(503, "interrupted by shutdown: nothing changed; start it again once calmd runs")


def remove_version_file(out: Path) -> None:
    """A version file no version refers to, and the temporary files a stopped writer left beside it."""
    for path in (out, *out.parent.glob(f"{out.name}.*.tmp")):
        path.unlink(missing_ok=True)


def lineage(versions: list[Version], version: Version) -> list[Version]:
    """A version and its ancestors, itself first."""
    by_name = {v.name: v for v in versions}
    chain: list[Version] = []
    v: Version | None = version
    while v is not None and v not in chain:
        chain.append(v)
        v = by_name.get(v.parent) if v.parent else None
    return chain


def mark_taught(verdicts: dict[str, Verdict], versions: list[Version], served: Version) -> None:
    """A verdict the served version (or an ancestor) was taught reads 'applied' in it; one taught only in
    versions no longer served goes back to pending (change or clear it, or Apply again)."""
    applied = {clip: v for v in reversed(lineage(versions, served)) for clip in v.taught}
    taught = {clip for v in versions for clip in v.taught}
    for clip, verdict in verdicts.items():
        if clip in applied and verdict.label == applied[clip].taught.get(clip):
            verdict.state, verdict.version = "applied", applied[clip].name
        elif clip in taught and verdict.state == "applied":
            verdict.state, verdict.version = "pending", None
