"""Teaching calmd from the live page: a verdict on each saved detection, then Apply (the refit `calm add`
does, into a new classifier file) or Undo (back to the file before), each followed by the reload SIGHUP does.

What a verdict teaches, for a few-shot prototype classifier (a class is the mean of its support clips' head
vectors, and head reliability is measured by leave-one-out over them):
- right: the clip joins its class as one more support clip. It is the site's own sound through the site's
  own microphone, which the fit clips rarely are, so the prototype moves towards what calmd really hears.
- this is X: the clip joins class X (an existing one).
- a new class Y: the clip joins Y, which the classifier gains once Y has MIN_CLIPS clips.
- wrong: only recorded (journal and page). It says what the sound is not, and a prototype classifier has no
  way to learn "not X": a catch-all "none" class would be the mean of unrelated sounds, a prototype near
  nothing in particular, and its reliability (leave-one-out over clips that do not resemble each other)
  would be low everywhere. Say what the sound is instead, or raise events.min_score for that label.

Files, under review_dir: versions/<name>-v<N>.calm.safetensors (every classifier the page installed, and the
file as first found, are kept), clips/<stream>/<clip> (copies of the taught clips: clip retention never
deletes them, so a later refit finds them), state.json (versions, verdicts) and journal.jsonl (who did what).
The file calmd serves (model.classifier) always holds the current version.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from calm_core.fingerprint import file_sha256
from calm_core.messages.events import utc_iso

from ..refusals import Refused, clip_path
from .query import Query, Sidecars, page_of
from .records import Interrupted, Job, Verdict, Version, checked_note, mark_taught, remove_version_file
from .teach import classes_of, install, summary_counts

log = logging.getLogger("calmd.review")

# A class needs 2 support clips: with 1, leave-one-out (calm_core.method.calm.loo_posteriors) leaves it an empty
# prototype, and calm_core.method.fitting then falls back to in-sample or uniform head weights for every class.
MIN_CLIPS = 2
KINDS = ("right", "wrong", "relabel", "new", "clear")
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a page-made class name: safe in files and topics
REFIT_TIMEOUT_S = 3600.0  # the child loads the model for the new clips: minutes for a 7B model on a CPU
RELOAD_TIMEOUT_S = 300.0
CLOSE_JOIN_S = 10.0


class Review:
    """The review's state and its two jobs, one at a time, each on a thread of its own."""

    def __init__(
        self,
        classifier: Path,
        clips_dir: Path | None,
        review_dir: Path | None,
        model: tuple[str, str],  # calmd's model.path and model.device: the refit loads the model as calmd does
        serving: Callable[[], dict[str, Any]],  # {"name", "labels", "error"} of the classifier calmd serves
        reload: Callable[[float], bool | None],  # the SIGHUP reload; None when it did not happen in time
    ):
        self.live = classifier
        self.stem = classifier.name.split(".")[0]  # calmd's name for the classifier
        self.clips_dir = clips_dir
        self.dir = review_dir or classifier.parent / f"{self.stem}.review"
        self.model_path, self.device = model
        self.serving = serving
        self.reload = reload
        self.lock = threading.Lock()  # state and job
        self.versions: list[Version] = []
        self.current: str | None = None
        self.verdicts: dict[str, Verdict] = {}
        self.job: Job | None = None
        self.thread: threading.Thread | None = None
        self.child: subprocess.Popen[str] | None = None
        self.installing: Version | None = None  # the version Apply has put in the live file, until calmd takes it
        self.closed = False
        self.sidecars = Sidecars(clips_dir) if clips_dir is not None else None
        self._load()

    # ---- state on disk ---------------------------------------------------------------------------
    def _load(self) -> None:
        path = self.dir / "state.json"
        if not path.is_file():
            return
        try:
            data = json.loads(path.read_text())
            self.versions = [Version(**v) for v in data["versions"]]
            self.current = data["current"]
            self.verdicts = {k: Verdict(**v) for k, v in data["verdicts"].items()}
            self.job = Job(**data["job"]) if data.get("job") else None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a review state calmd can read ({e}); move it away to start afresh") from e
        if self.job is not None and self.job.state == "running":  # calmd was killed while it ran
            self.job.state = "interrupted"
            self.job.message = f"{self.job.action} interrupted: calmd ended before it finished; nothing changed"

    def _save(self) -> None:
        data = {"versions": [asdict(v) for v in self.versions], "current": self.current,
                "verdicts": {k: asdict(v) for k, v in self.verdicts.items()},
                "job": asdict(self.job) if self.job else None}  # fmt: skip
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / ".state.json.tmp"
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, self.dir / "state.json")

    def _journal(self, who: str, action: str, **details: Any) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"time_utc": utc_iso(time.time()), "client": who, "action": action, **details})
        with (self.dir / "journal.jsonl").open("a") as f:
            f.write(line + "\n")

    # ---- what the page shows ---------------------------------------------------------------------
    def state(self, query: Query | None = None) -> dict[str, Any]:
        query = query or Query()
        listed = self._detections()  # outside the lock: it reads files
        with self.lock:
            current = self._version(self.current)
            pending: dict[str, int] = {}
            for v in self.verdicts.values():
                if v.state == "pending" and v.label is not None:
                    pending[v.label] = pending.get(v.label, 0) + 1
            serving = self.serving()
            for d in listed:
                verdict = self.verdicts.get(d["clip"])
                d["verdict"] = asdict(verdict) if verdict else None
                applied = self._version(verdict.version) if verdict and verdict.version else None
                d["check"] = applied.checked.get(d["clip"]) if applied else None  # how that version labels it
            return {
                "enabled": self.clips_dir is not None,
                "classifier": serving,
                "current": self.current,
                "undo_to": current.parent if current else None,
                "undo_forgets": len(current.taught) if current else 0,
                "redo_to": self._redo_to(),
                "versions": [self._described(v) for v in self.versions],
                "min_clips": MIN_CLIPS,
                "pending": pending,
                "waiting": self._waiting(serving["labels"]),
                **page_of(listed, query),
                "job": asdict(self.job) if self.job else None,
            }

    def _described(self, v: Version) -> dict[str, Any]:
        """A version as the page's history lists it: its date, what it taught, its classes and their support."""
        as_taught = sum(c.get("label") == v.taught.get(k) for k, c in v.checked.items())
        right = sum(c.get("label") == c.get("taught") for c in v.held_out.values())
        described = {"name": v.name, "parent": v.parent, "created_utc": v.created_utc, "taught": len(v.taught),
                     "note": v.note, "sha256": v.sha256, "checked": len(v.checked),
                     "checked_as_taught": as_taught, "held_out": len(v.held_out), "held_out_right": right}  # fmt: skip
        return {**described, **classes_of(self.dir / v.file, v.sha256)}

    def _redo_to(self) -> str | None:
        """Under the lock: the newest version made from the current one (one that Undo left), if any."""
        children = [v for v in self.versions if v.parent == self.current and v.name != self.current]
        return children[-1].name if children else None

    def _waiting(self, labels: list[str]) -> dict[str, int]:
        """Under the lock: new classes with fewer than MIN_CLIPS distinct clips pending, and how many they have."""
        contents: dict[str, set[str]] = {}
        for clip, v in self.verdicts.items():
            if v.state == "pending" and v.label is not None and v.label not in labels:
                try:
                    contents.setdefault(v.label, set()).add(self._digest(clip))
                except Refused:  # deleted meanwhile: Apply says so
                    contents.setdefault(v.label, set())
        return {c: len(d) for c, d in contents.items() if len(d) < MIN_CLIPS}

    def _detections(self) -> list[dict[str, Any]]:
        """Every saved detection, newest first (file names start with their UTC start)."""
        if self.sidecars is None:
            return []
        listed = []
        for clip, side in self.sidecars.newest_first():
            picture = (self.sidecars.dir / clip).with_suffix(".png")
            listed.append({
                "clip": clip, "picture": clip.rsplit(".", 1)[0] + ".png" if picture.is_file() else None,
                "label": side.get("label"), "score": side.get("score"), "stream": side.get("stream"),
                "start_utc": side.get("start_utc"), "end_utc": side.get("end_utc"), "top": side.get("top"),
                "segments": side.get("segments"), "start_s": side.get("start_s"), "end_s": side.get("end_s"),
                "clip_start_s": side.get("clip_start_s"), "clip_end_s": side.get("clip_end_s"),
                "classifier": side.get("classifier"),
            })  # fmt: skip
        return listed

    def version_name(self, sha256: str) -> str | None:
        """The name of the version a classifier file holds (None: a file the review has not seen): what calmd
        calls the classifier in every label and status."""
        with self.lock:
            known = [v for v in self.versions if v.sha256 == sha256]
            if self.installing is not None and self.installing.sha256 == sha256:
                known.insert(0, self.installing)
            current = self._version(self.current)
            if current in known:  # two versions of the same content: the one the review serves
                return current.name if current else None
            return known[0].name if known else None

    def _version(self, name: str | None) -> Version | None:
        return next((v for v in self.versions if v.name == name), None)

    # ---- verdicts --------------------------------------------------------------------------------
    def verdict(self, who: str, clip: str, kind: str, label: str | None, positive: bool = False) -> dict[str, Any]:
        """positive: a new class that joins the detector's positive group (a new kind of attack)."""
        if self.clips_dir is None:
            raise Refused(409, "saved clips are off ([clips] enabled = false): there is nothing to review")
        if kind not in KINDS:
            raise Refused(400, f"verdict {kind!r}: one of {', '.join(KINDS)}")
        path = clip_path(self.clips_dir, clip)  # Refused for anything that is not a clip in the folder
        if path.suffix.lower() in (".json", ".png"):
            raise Refused(400, f"{clip!r}: name the audio file of the detection")
        try:
            detected = str(json.loads(path.with_suffix(".json").read_text())["label"])
        except (OSError, ValueError, KeyError, TypeError):
            raise Refused(404, f"{clip!r}: no readable sidecar: not a saved detection") from None
        serving = self.serving()
        target = self._target(kind, label, detected, serving["labels"])
        if positive and kind != "new":
            raise Refused(400, "positive: only a new class (a new kind of attack) joins the positive group")
        if positive and not serving.get("positive"):
            raise Refused(409, "the classifier has no positive group (not a detector): teach a plain new class")
        with self.lock:
            self._idle()
            old = self.verdicts.get(clip)
            if old is not None and old.state == "applied":
                raise Refused(409, f"{clip!r} was taught to {old.label!r} in {old.version}: Undo that version first")
            if kind == "clear":
                self.verdicts.pop(clip, None)
            else:
                state = "recorded" if kind == "wrong" else "pending"
                self.verdicts[clip] = Verdict(kind, target, detected, state, utc_iso(time.time()), positive=positive)
            self._save()
            extra = {"positive": True} if positive else {}
            self._journal(who, "verdict", clip=clip, kind=kind, label=target, detected=detected, **extra)
            return {"clip": clip, "verdict": asdict(self.verdicts[clip]) if clip in self.verdicts else None}

    @staticmethod
    def _target(kind: str, label: str | None, detected: str, labels: list[str]) -> str | None:
        """The class a verdict teaches; Refused(400) naming what is allowed."""
        if kind == "right":
            return detected
        if kind in ("wrong", "clear"):
            return None
        if kind == "relabel":
            if label not in labels:
                raise Refused(400, f"class {label!r}: not one of the classifier's ({', '.join(labels)}); "
                                   "to start a class, choose 'new class'")  # fmt: skip
            return label
        if label is None or not LABEL.match(label) or label == "unknown":
            raise Refused(400, f"new class {label!r}: 1-64 letters, digits, '_', '.' or '-', starting with a "
                               "letter or digit, and not 'unknown'")  # fmt: skip
        if label in labels:
            raise Refused(400, f"class {label!r} exists already: choose 'this is {label}'")
        return label

    def _idle(self) -> None:
        """Under the lock: Refused(409) while Apply or Undo runs."""
        if self.job is not None and self.job.state == "running":
            raise Refused(409, f"{self.job.action} is running: wait for it to finish")

    # ---- Apply and Undo --------------------------------------------------------------------------
    def start(self, who: str, action: str, version: str | None = None) -> dict[str, Any]:
        """Start Apply, Undo or Restore (of `version`) on a thread of its own; the page follows it in
        state()["job"]."""
        if action == "restore":
            if version is None or self._version(version) is None:
                raise Refused(400, f"restore {version!r}: name one of the versions ({', '.join(self._names())})")
            run: Callable[[], tuple[str, str | None]] = lambda: self._restore(version)  # noqa: E731
        else:
            run = {"apply": self._apply, "undo": self._undo}[action]
        with self.lock:
            self._idle()
            if self.closed:
                raise Refused(503, "calmd is stopping")
            job = self.job = Job(action)
            self._save()
            self.thread = threading.Thread(target=self._run, args=(job, run, who), name=f"review-{action}", daemon=True)
            self.thread.start()
            return asdict(job)

    def _names(self) -> list[str]:
        with self.lock:
            return [v.name for v in self.versions]

    def _run(self, job: Job, run: Callable[[], tuple[str, str | None]], who: str) -> None:
        try:
            job.message, job.classifier = run()
            job.state = "done"
        except Interrupted as e:
            job.message, job.state = f"{job.action} {e}", "interrupted"
        except (Refused, OSError, ValueError, subprocess.SubprocessError) as e:
            job.message, job.state = str(e), "failed"
        finally:  # anything else: the thread's traceback is in the log, and the next job may start
            if job.state == "running":
                job.message, job.state = "failed unexpectedly: see calmd's log", "failed"
        job.finished_utc = utc_iso(time.time())
        log.log(logging.INFO if job.state == "done" else logging.WARNING, "review %s %s: %s", job.action, job.state,
                job.message)  # fmt: skip
        with self.lock:
            self._save()  # the job's end too: a page opened after a restart still says how it ended
            self._journal(who, job.action, state=job.state, message=job.message, classifier=job.classifier)

    def _apply(self) -> tuple[str, str | None]:
        with self.lock:
            base = self._sync_live()
            pending = {c: v for c, v in self.verdicts.items() if v.state == "pending" and v.label is not None}
        labels = self.serving()["labels"]
        plan: dict[str, list[str]] = {}
        for clip, v in pending.items():
            plan.setdefault(str(v.label), []).append(clip)
        # Clips with the same content are one support clip (the refit adds it once): count contents.
        distinct = {c: len({self._digest(clip) for clip in clips}) for c, clips in plan.items()}
        waiting = {c: n for c, n in distinct.items() if c not in labels and n < MIN_CLIPS}
        plan = {c: clips for c, clips in plan.items() if c not in waiting}
        wait_note = "; ".join(
            f"new class {c!r} has {n} distinct clip{'s' if n != 1 else ''}, needs {MIN_CLIPS} (leave-one-out "
            "reliability): it waits for more"
            for c, n in waiting.items()
        )
        if not plan:
            raise Refused(409, "nothing to apply" + (f": {wait_note}" if wait_note else ": mark detections first"))
        copies = {label: [str(self._keep(clip)) for clip in clips] for label, clips in plan.items()}
        version = self._new_version("", base.name, "")
        version.taught = {c: lab for lab, clips in plan.items() for c in clips}
        out = self.dir / version.file
        try:
            summary = self._refit(copies, out, sorted({str(v.label) for v in pending.values() if v.positive}))
            version.sha256 = file_sha256(out)
            version.note = "; ".join(f"{c}: {summary_counts(summary, c)}" for c in plan)
            clip_of = {copy: clip for (label, clips) in plan.items() for clip, copy in zip(clips, copies[label])}
            version.checked = {clip_of[p]: v for p, v in summary.get("labelled", {}).items() if p in clip_of}
            held_out = {clip_of[p]: v for p, v in summary.get("held_out", {}).items() if p in clip_of}
            with self.lock:
                self.installing = version  # what calmd names the file it reloads
            install(out, self.live)
            taken = self.reload(RELOAD_TIMEOUT_S)
            if not taken:
                install(self.dir / base.file, self.live)  # calmd still serves base: the file says so again
                if taken is None and self.closed:
                    raise Interrupted()
                error = self.serving().get("error") or "no reload within the time allowed"
                raise Refused(409, f"calmd did not take {version.name} ({error}); it still serves {base.name}, "
                                   f"and {out} is kept")  # fmt: skip
        except Interrupted:
            remove_version_file(out)  # nothing refers to it: the number is free again
            raise
        finally:
            with self.lock:
                self.installing = None
        with self.lock:
            # the clips were held out from base: how it labelled them, against what the reviewer said
            base.held_out.update({c: {**v, "taught": version.taught[c]} for c, v in held_out.items()})
            self.versions.append(version)
            self.current = version.name
            for clip in version.taught:
                self.verdicts[clip].state, self.verdicts[clip].version = "applied", version.name
            self._save()
        taught = ", ".join(f"{len(clips)} to {c!r}" for c, clips in plan.items())
        message = f"calmd now serves {version.name}: {taught}; {checked_note(version)}"
        return message + (f"; {wait_note}" if wait_note else ""), version.name

    def _undo(self) -> tuple[str, str | None]:
        with self.lock:
            current = self._sync_live()
            if self._version(current.parent) is None:
                raise Refused(409, f"nothing to undo: {current.name} is the first classifier the page knows")
        return self._restore(str(current.parent))

    def _restore(self, name: str) -> tuple[str, str | None]:
        """Serve a version the page made or found before (Undo: the current one's parent; redo: a child)."""
        with self.lock:
            current = self._sync_live()
            target = self._version(name)
            if target is None or target.name == current.name:
                raise Refused(409, f"{name} is already served" if target else f"no version {name!r}")
        install(self.dir / target.file, self.live)
        taken = self.reload(RELOAD_TIMEOUT_S)
        if not taken:
            install(self.dir / current.file, self.live)
            if taken is None and self.closed:
                raise Interrupted()
            raise Refused(409, f"calmd did not take {target.name} ({self.serving().get('error')}); "
                               f"it still serves {current.name}")  # fmt: skip
        with self.lock:
            self.current = target.name
            mark_taught(self.verdicts, self.versions, target)
            self._save()
        return f"calmd serves {target.name} ({current.name} is kept)", target.name

    def _sync_live(self) -> Version:
        """Under the lock: the version the live file holds; a file the page has not seen (the first one, or one
        `calm add` wrote since) is kept as a new version first."""
        digest = file_sha256(self.live)
        current = self._version(self.current)
        if current is not None and current.sha256 == digest:
            return current
        known = next((v for v in self.versions if v.sha256 == digest), None)
        note = "as found" if known is None else f"the same as {known.name}"
        version = self._new_version(digest, self.current, note)
        (self.dir / "versions").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.live, self.dir / version.file)
        self.versions.append(version)
        self.current = version.name
        self._save()
        return version

    def _new_version(self, digest: str, parent: str | None, note: str) -> Version:
        """The next version's record, numbered after every one made so far (an undone or refused one keeps its
        number and its file)."""
        kept = (self.dir / "versions").glob("*.calm.safetensors")  # not a temporary file a stopped refit left
        made = [v.name for v in self.versions] + [f.name.split(".")[0] for f in kept]
        n = 1 + max((int(m.rsplit("-v", 1)[1]) for m in made if m.rsplit("-v", 1)[-1].isdigit()), default=0)
        name = f"{self.stem}-v{n}"
        return Version(name, f"versions/{name}.calm.safetensors", digest, parent, utc_iso(time.time()), note=note)

    def _existing(self, clip: str) -> Path:
        """A saved clip, or its copy under review_dir/clips when retention has deleted it since."""
        assert self.clips_dir is not None
        for path in (self.clips_dir / clip, self.dir / "clips" / clip):
            if path.is_file():
                return path
        raise Refused(409, f"{clip}: deleted by clip retention before it was applied; clear its verdict")

    def _digest(self, clip: str) -> str:
        """The content hash of a saved clip (or of its copy)."""
        return file_sha256(self._existing(clip))

    def _keep(self, clip: str) -> Path:
        """A copy of a saved clip (and its sidecar) under review_dir/clips, which clip retention never touches."""
        copy = self.dir / "clips" / clip
        if not copy.is_file():
            source = self._existing(clip)  # the saved clip itself, since the copy is not there
            copy.parent.mkdir(parents=True, exist_ok=True)
            for path in (source, source.with_suffix(".json")):
                if path.is_file():
                    shutil.copyfile(path, copy.with_suffix(path.suffix))
        return copy

    def _refit(self, plan: dict[str, list[str]], out: Path, positive: list[str]) -> dict[str, Any]:
        """python -m calmd.review.teach: `calm add` per class, in a child process."""
        plan_file = self.dir / ".plan.json"
        plan_file.write_text(json.dumps(plan))
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "calmd.review.teach", "--classifier", str(self.live), "--plan", str(plan_file),
               "--out", str(out), "--model", self.model_path, "--device", self.device]  # fmt: skip
        for label in positive:  # new classes that join the detector's positive group
            cmd += ["--positive", label]
        with self.lock:
            if self.closed:
                raise Refused(503, "calmd is stopping")
            self.child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = self.child.communicate(timeout=REFIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.communicate()
            remove_version_file(out)
            raise Refused(504, f"the refit took longer than {REFIT_TIMEOUT_S:.0f} s and was stopped") from None
        finally:
            plan_file.unlink(missing_ok=True)
        if self.closed:  # close() stopped the child, or calmd began to stop while it ran
            raise Interrupted()
        if self.child.returncode != 0:
            lines = [line for line in stderr.strip().splitlines() if line.strip()]
            raise Refused(409, f"the refit refused: {lines[-1] if lines else f'exit {self.child.returncode}'}")
        return dict(json.loads(stdout))

    def interrupt(self) -> None:
        """calmd is stopping: start no job, end a refit in progress; the job's thread ends as Interrupted."""
        with self.lock:
            self.closed = True
            child = self.child
        if child is not None and child.poll() is None:
            child.kill()

    def close(self) -> None:
        """After interrupt() and the end of calmd's reloads: wait (bounded) for the job's thread."""
        self.interrupt()
        thread = self.thread
        if thread is not None:
            thread.join(CLOSE_JOIN_S)
