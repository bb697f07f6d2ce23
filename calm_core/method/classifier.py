"""The fitted CALM classifier: fitting from head features, prediction, and its single-file format."""

from __future__ import annotations

import json
import logging
import math
import os
import stat
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch

from ..backbones.base import HeadLayout
from ..errors import ClassifierFileError
from ..fingerprint import Fingerprint, describe_mismatch
from . import calm, fitting
from .probe import HeadProbe, fit_head_probe
from .settings import ABSTAIN_MODES as ABSTAIN_MODES  # the settings and sub-class names, re-exported
from .settings import COMBINERS as COMBINERS
from .settings import PRESETS as PRESETS
from .settings import RELIABILITY_FROM as RELIABILITY_FROM
from .settings import SPLITS as SPLITS
from .settings import CalmConfig
from .subclasses import SUB, parent_of, split_classes
from .subclasses import group_members as group_members

FORMAT_VERSION = 1
UNKNOWN = "unknown"
Method = Literal["calm", "sav"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    label: str  # UNKNOWN when abstaining
    best: str  # the best class, even when abstaining
    score: float
    margin: float
    scores: dict[str, float]  # per class (a class with sub-classes scores as its best sub-class)
    sub: str = ""  # the best (sub-)class itself: `spoof/neural` where best is `spoof`

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        return sorted(self.scores.items(), key=lambda kv: -kv[1])[:k]


@dataclass
class CalmClassifier:
    """Prototypes and class-specific head weights over a compact set of heads.

    heads holds flat indices (layer * n_heads + head) of the heads kept: those with weight for
    any class plus the SAV baseline's heads; sav holds positions into heads. labels are the units CALM fits
    (one prototype and one weight vector each); `spoof/neural` is a sub-class, reported as its class `spoof`.
    """

    labels: list[str]
    config: CalmConfig
    layout: HeadLayout
    fingerprint: Fingerprint
    heads: torch.Tensor  # (K,) int64
    prototypes: torch.Tensor  # (C, K, D)
    reliability: torch.Tensor  # (K, C)
    weights: torch.Tensor  # (K, C)
    sav: torch.Tensor  # (S,) int64
    abstain_threshold: float | None = None
    info: dict[str, object] = field(default_factory=dict)
    probe: HeadProbe | None = None  # config.combiner "probe": the combiner that scores instead of the vote
    # The support clips' (sub-)class indices as fitted (after an automatic split); not stored in the file.
    support_labels: torch.Tensor | None = field(default=None, repr=False, compare=False)

    # ---- fitting -------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        features: torch.Tensor,
        labels: torch.Tensor,
        label_names: list[str],
        layout: HeadLayout,
        fingerprint: Fingerprint,
        config: CalmConfig = CalmConfig(),
        val_features: torch.Tensor | None = None,
        val_labels: torch.Tensor | None = None,
        groups: torch.Tensor | None = None,
    ) -> CalmClassifier:
        """Fit from support features (N, L, H, D) with class indices (N,); validation clips are optional.

        Without validation clips, reliability comes from leave-one-out over the support set. groups (N,)
        marks augmented copies of one recording (calm_core.audio.augment): left out together, counted once.
        """
        n_classes = len(label_names)
        if len({parent_of(name) for name in label_names}) < 2:
            raise ValueError(f"need at least 2 classes, got {label_names}")
        flat = _flatten(features, layout)
        n_heads_total = flat.shape[1]
        layer = torch.arange(n_heads_total) // layout.n_heads
        allowed = torch.ones(n_heads_total, dtype=torch.bool)
        if config.max_layer is not None:
            allowed = layer <= config.max_layer
        if groups is not None and torch.unique(groups).numel() == groups.numel():
            groups = None  # every clip its own recording: plain leave-one-out
        parts: dict[str, object] = {}
        if config.split == "auto":
            if groups is not None or val_features is not None:
                log.warning("split auto is decided by leave-one-out over plain support clips: skipped with "
                            "augmented copies or validation clips")  # fmt: skip
            else:
                split = split_classes(config, flat, labels, list(label_names), allowed)
                labels, label_names, n_classes = split.labels, split.names, len(split.names)
                parts = {"classes": split.parts, "loo_correct": split.loo_correct, "clips": int(labels.numel())}
        counts = fitting.recordings_per_class(labels, n_classes, groups)
        val_flat = _flatten(val_features, layout) if val_features is not None else None
        fitted = fitting.fit_weights(config, flat, labels, n_classes, allowed, val_flat, val_labels, groups)
        rel, w, sav_flat, prototypes = fitted.reliability, fitted.weights, fitted.sav_heads, fitted.prototypes
        if rel.source.startswith("none"):
            log.warning("a class has a single support clip and no validation set is given: heads vote uniformly")
        post, rel_labels, r = rel.posteriors, rel.labels, rel.r
        keep = torch.unique(torch.cat([(w > 0).any(1).nonzero().flatten(), sav_flat]))  # sorted
        sav_pos = torch.searchsorted(keep, sav_flat)
        clf = cls(
            labels=list(label_names),
            config=config,
            layout=layout,
            fingerprint=fingerprint,
            heads=keep,
            prototypes=prototypes[:, keep].contiguous(),
            reliability=r[keep].contiguous(),
            weights=w[keep].contiguous(),
            sav=sav_pos,
            support_labels=labels,
            info={
                "reliability_source": rel.source,
                "top_k": fitted.top_k,
                "top_k_leave_one_out_correct": {str(k): v for k, v in fitted.top_k_correct.items()},
                "support_per_class": dict(zip(label_names, counts.tolist())),
                **({"split": parts} if parts else {}),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
        if config.combiner == "probe":
            # Every head up to CALM's exit layer, so the forward pass stops where the vote's would.
            reads = (layer <= clf.exit_layer).nonzero().flatten()
            clf.probe = fit_head_probe(flat, labels, n_classes, reads)
        if config.abstain != "none":
            scores = clf.fold(calm.calm_scores(post[:, keep], clf.weights))
            truth = torch.tensor([clf.classes.index(parent_of(label_names[i])) for i in rel_labels.tolist()])
            correct = scores.argmax(1) == truth
            values = scores.amax(1) if config.abstain == "score" else calm.top_two_margin(scores)
            clf.abstain_threshold = calm.abstain_threshold(values, correct, config.abstain_keep)
        return clf

    # ---- prediction ----------------------------------------------------------------------
    @property
    def exit_layer(self) -> int:
        """Deepest layer holding a head with weight for any class: CALM never needs to run past it."""
        used = self.heads[(self.weights > 0).any(1)]
        return int(self.layout.layer_of(used).max())

    @property
    def sav_exit_layer(self) -> int:
        return int(self.layout.layer_of(self.heads[self.sav]).max())

    def exit_layer_for(self, methods: tuple[Method, ...] = ("calm",)) -> int:
        return max(self.exit_layer if m == "calm" else self.sav_exit_layer for m in methods)

    def posteriors(self, features: torch.Tensor) -> torch.Tensor:
        """Per-head class posteriors of the kept heads, (N, L', H, D) -> (N, K, C)."""
        n, n_layers = features.shape[0], features.shape[1]
        need = int(self.layout.layer_of(self.heads).max()) + 1
        flat = features.reshape(n, n_layers * self.layout.n_heads, self.layout.head_dim)
        if n_layers < need:
            # Only the heads that exist in the layers given can be scored.
            present = self.heads < flat.shape[1]
            post = torch.zeros(n, len(self.heads), len(self.labels))
            post[:, present] = calm.head_posteriors(
                flat[:, self.heads[present]], self.prototypes[:, present], self.config.tau
            )
            return post
        return calm.head_posteriors(flat[:, self.heads], self.prototypes, self.config.tau)

    def scores(self, features: torch.Tensor, method: Method = "calm") -> torch.Tensor:
        """Class scores (N, C): CALM's weighted vote, or the SAV baseline's uniform vote."""
        if method == "sav":
            if features.shape[1] <= self.sav_exit_layer:
                raise ValueError(f"SAV needs layers up to {self.sav_exit_layer}, got {features.shape[1]}")
            return calm.sav_scores(self.posteriors(features)[:, self.sav])
        if features.shape[1] <= self.exit_layer:
            raise ValueError(f"CALM needs layers up to {self.exit_layer}, got {features.shape[1]}")
        if self.probe is not None:
            n = features.shape[0]
            return self.probe.scores(features.reshape(n, -1, self.layout.head_dim))
        return calm.calm_scores(self.posteriors(features), self.weights)

    @property
    def classes(self) -> list[str]:
        """The classes predictions report, in order: labels with their sub-classes folded in."""
        return list(dict.fromkeys(parent_of(lab) for lab in self.labels))

    def class_index(self, label: str) -> int:
        """Index into classes of a class or sub-class name; ValueError for any other name."""
        name = parent_of(label)
        if name not in self.classes or (SUB in label and label not in self.labels):
            raise ValueError(f"{label!r} is not a class of this classifier (classes: {', '.join(self.classes)})")
        return self.classes.index(name)

    def class_scores(self, features: torch.Tensor, method: Method = "calm") -> torch.Tensor:
        """Scores per class (N, P): each class as its best sub-class (nearest of its prototypes)."""
        return self.fold(self.scores(features, method))

    def fold(self, unit_scores: torch.Tensor) -> torch.Tensor:
        """(N, C) scores of the labels -> (N, P) of the classes, each the max over its sub-classes."""
        classes = self.classes
        if len(classes) == len(self.labels):
            return unit_scores
        index = torch.tensor([classes.index(parent_of(lab)) for lab in self.labels])
        out = torch.full((unit_scores.shape[0], len(classes)), float("-inf"), dtype=unit_scores.dtype)
        return out.scatter_reduce(1, index[None].expand_as(unit_scores), unit_scores, "amax")

    def predict(self, features: torch.Tensor, method: Method = "calm") -> list[Prediction]:
        units = self.scores(features, method)
        scores = self.fold(units)
        margins = calm.top_two_margin(scores)
        classes = self.classes
        out = []
        for row, margin, unit in zip(scores.tolist(), margins.tolist(), units.argmax(1).tolist()):
            best = max(range(len(row)), key=row.__getitem__)
            label = classes[best]
            if method == "calm" and self.abstain_threshold is not None:
                value = row[best] if self.config.abstain == "score" else margin
                if value < self.abstain_threshold:
                    label = UNKNOWN
            scores_by_class = dict(zip(classes, row))
            out.append(Prediction(label, classes[best], row[best], margin, scores_by_class, self.labels[unit]))
        return out

    def check_features(self, fingerprint: Fingerprint, source: str = "model") -> None:
        """Refuse features from a model, precision, prompt or processor other than the one fitted on."""
        if fingerprint.digest != self.fingerprint.digest:
            raise ClassifierFileError(
                f"classifier was built on other features than {source} gives "
                f"({describe_mismatch(self.fingerprint, fingerprint)}); refit it with `calm fit` on this model"
            )

    # ---- file format ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """One safetensors file: tensors plus JSON metadata in its header. No pickle."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": "calm-classifier",
            "format_version": FORMAT_VERSION,
            "labels": self.labels,
            "config": asdict(self.config),
            "layout": asdict(self.layout),
            "fingerprint": self.fingerprint.to_json(),
            "exit_layer": self.exit_layer,
            "abstain_threshold": self.abstain_threshold,
            "info": self.info,
        }
        tensors = {
            "heads": self.heads.to(torch.int64).contiguous(),
            "prototypes": self.prototypes.float().contiguous(),
            "reliability": self.reliability.float().contiguous(),
            "weights": self.weights.float().contiguous(),
            "sav": self.sav.to(torch.int64).contiguous(),
        }
        if self.probe is not None:
            tensors["probe_heads"] = self.probe.heads.to(torch.int64).contiguous()
            tensors["probe_weight"] = self.probe.weight.float().contiguous()
            tensors["probe_bias"] = self.probe.bias.float().contiguous()
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two writers never share one
        save_file(tensors, str(tmp), metadata={"calm": json.dumps(meta)})
        _keep_access(path, tmp)
        tmp.replace(path)  # atomic: a service reloading the file reads the old one or the new one, never half
        return path

    @classmethod
    def load(cls, path: str | Path) -> CalmClassifier:
        """Read, validate and build. The file is read into memory (never memory-mapped), so
        replacing it in place while a service runs cannot crash that service."""
        from safetensors import SafetensorError
        from safetensors.torch import load as load_tensors

        path = Path(path)
        if not path.is_file():
            raise ClassifierFileError(f"{path}: no such classifier file")
        try:
            data = path.read_bytes()
            tensors = load_tensors(data)
            header = _safetensors_metadata(data)
        except (SafetensorError, OSError, ValueError) as e:
            raise ClassifierFileError(f"{path}: not a calm classifier file (safetensors: {e})") from e
        try:
            return cls._from_parts(header, tensors)
        except (KeyError, TypeError, ValueError) as e:
            raise ClassifierFileError(f"{path}: invalid calm classifier ({e.__class__.__name__}: {e})") from e

    @classmethod
    def _from_parts(cls, header: dict[str, str], tensors: dict[str, torch.Tensor]) -> CalmClassifier:
        if "calm" not in header:
            raise ValueError("safetensors header has no 'calm' metadata")
        meta = json.loads(header["calm"])
        if meta.get("format") != "calm-classifier":
            raise ValueError(f"format is {meta.get('format')!r}, expected 'calm-classifier'")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"format_version {meta.get('format_version')!r} is not supported; this calm reads {FORMAT_VERSION}"
            )
        known = {f.name for f in fields(CalmConfig)}
        unknown = set(meta["config"]) - known
        if unknown:
            raise ValueError(f"config has unknown keys {sorted(unknown)}")
        config = CalmConfig(**meta["config"])
        layout = HeadLayout(**{k: int(v) for k, v in meta["layout"].items()})
        labels = [str(x) for x in meta["labels"]]
        missing = {"heads", "prototypes", "reliability", "weights", "sav"} - set(tensors)
        if missing:
            raise ValueError(f"missing tensors {sorted(missing)}")
        heads, protos, rel, w, sav = (tensors[k] for k in ("heads", "prototypes", "reliability", "weights", "sav"))
        n_c, n_k = len(labels), heads.numel()
        expect = {
            "heads": (heads, (n_k,), torch.int64),
            "prototypes": (protos, (n_c, n_k, layout.head_dim), torch.float32),
            "reliability": (rel, (n_k, n_c), torch.float32),
            "weights": (w, (n_k, n_c), torch.float32),
            "sav": (sav, (sav.numel(),), torch.int64),
        }
        for name, (t, shape, dtype) in expect.items():
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise ValueError(f"tensor {name} is {t.dtype}{tuple(t.shape)}, expected {dtype}{shape}")
        if n_c < 2 or len(set(labels)) != n_c:
            raise ValueError(f"labels must be at least 2 distinct names, got {labels}")
        if n_k == 0 or int(heads.min()) < 0 or int(heads.max()) >= layout.n_total:
            raise ValueError(f"head indices must lie in 0..{layout.n_total - 1}")
        if sav.numel() == 0 or int(sav.min()) < 0 or int(sav.max()) >= n_k:
            raise ValueError(f"sav positions must lie in 0..{n_k - 1}")
        if not all(torch.isfinite(t).all() for t in (protos, rel, w)):
            raise ValueError("tensors contain NaN or infinite values")
        if (w < 0).any() or not torch.allclose(w.sum(0), torch.ones(n_c), atol=1e-4):
            raise ValueError("weights must be non-negative and sum to 1 over heads for every class")
        threshold = meta.get("abstain_threshold")
        if threshold is not None and not math.isfinite(float(threshold)):
            raise ValueError(f"abstain_threshold must be finite, got {threshold}")
        probe = _probe_from(tensors, config, layout, n_c)
        return cls(
            labels=labels,
            config=config,
            layout=layout,
            fingerprint=Fingerprint.from_json(meta["fingerprint"]),
            heads=heads,
            prototypes=protos,
            reliability=rel,
            weights=w,
            sav=sav,
            abstain_threshold=None if threshold is None else float(threshold),
            probe=probe,
            info=dict(meta.get("info", {})),
        )


def _keep_access(old: Path, new: Path) -> None:
    """Give new the mode and owner of the file it replaces (a classifier that calmd's user reads must stay
    readable to it after `calm add`); a new file gets the usual mode under the umask (safetensors writes 0600)."""
    try:
        st = old.stat()
    except FileNotFoundError:
        os.chmod(new, 0o666 & ~_umask())
        return
    os.chmod(new, stat.S_IMODE(st.st_mode))
    if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.chown(new, st.st_uid, st.st_gid)
        except PermissionError:
            log.warning("%s: could not keep its owner %d:%d (not permitted); it is now owned by %d:%d",
                        old, st.st_uid, st.st_gid, os.geteuid(), os.getegid())  # fmt: skip


def _umask() -> int:
    """The process umask, read without setting it (os.umask sets it process-wide, for every thread) where Linux
    tells it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The string map in a safetensors header (the tensors themselves were validated by safetensors)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("__metadata__ must map strings to strings")
    return meta


def _probe_from(
    tensors: dict[str, torch.Tensor], config: CalmConfig, layout: HeadLayout, n_classes: int
) -> HeadProbe | None:
    """The probe's tensors, checked, when the config's combiner is probe; ValueError when they disagree."""
    names = ("probe_heads", "probe_weight", "probe_bias")
    present = [n for n in names if n in tensors]
    if config.combiner == "vote" or (config.combiner == "auto" and not present):
        if present:
            raise ValueError(f"tensors {present} belong to combiner probe, but the config's combiner is vote")
        return None
    if len(present) != 3:
        raise ValueError(f"combiner probe needs tensors {list(names)}, got {present}")
    heads, weight, bias = (tensors[n] for n in names)
    n_in = heads.numel() * layout.head_dim
    if heads.dtype != torch.int64 or heads.dim() != 1 or heads.numel() == 0:
        raise ValueError(f"tensor probe_heads is {heads.dtype}{tuple(heads.shape)}, expected int64 (H,)")
    if int(heads.min()) < 0 or int(heads.max()) >= layout.n_total:
        raise ValueError(f"probe head indices must lie in 0..{layout.n_total - 1}")
    if tuple(weight.shape) != (n_classes, n_in) or tuple(bias.shape) != (n_classes,):
        raise ValueError(f"probe_weight/probe_bias are {tuple(weight.shape)}/{tuple(bias.shape)}, expected "
                         f"{(n_classes, n_in)}/{(n_classes,)}")  # fmt: skip
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise ValueError("probe tensors contain NaN or infinite values")
    return HeadProbe(heads, weight.float(), bias.float())


def _flatten(features: torch.Tensor, layout: HeadLayout) -> torch.Tensor:
    """(N, L, H, D) -> (N, L * H, D), checking the grid against the layout."""
    if features.dim() != 4 or features.shape[2:] != (layout.n_heads, layout.head_dim):
        raise ValueError(f"features must be (N, L, {layout.n_heads}, {layout.head_dim}), got {tuple(features.shape)}")
    return features.reshape(features.shape[0], -1, layout.head_dim).float()
