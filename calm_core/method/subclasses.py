"""Classes that are several kinds of sound: a class whose support falls into two clusters is split into two
sub-classes, each with a prototype of its own, when leave-one-out over the support says the split labels the
support better. One prototype per class averages a new kind of attack (8 clips of a neural engine among 100
of older synthesisers) away; its own prototype keeps it.

Only the support clips decide: the split is taken when strictly more support clips are labelled right (as
their class; a clip in the sibling sub-class counts as right) by classifiers fitted without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from . import calm, fitting

if TYPE_CHECKING:
    from .settings import CalmConfig

SUB = "/"
MIN_PER_PART = 2  # leave-one-out reliability needs 2 clips in each sub-class
MIN_GAIN = 2  # support clips a split must win: a split of one kind of sound in two can win one by chance


def parent_of(label: str) -> str:
    """The class a (sub-)class label is reported as: `spoof/neural` -> `spoof`, `glass` -> `glass`."""
    return label.split(SUB, 1)[0]


def as_group(value: object) -> tuple[str, ...]:
    """A positive group as class names, from one name or a list of them (files from before groups store one
    name); () for none."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"a positive group is a class name or a list of them, got {value!r}")
    return tuple(str(v) for v in value)


def group_members(labels: list[str], group: str | Sequence[str]) -> list[int]:
    """Indices of the (sub-)classes in a group of names: a name takes itself and, when it is a class, all its
    sub-classes (`spoof` takes `spoof/classic` and `spoof/neural`). ValueError names what matches nothing."""
    names = list(as_group(group))
    if not names:
        raise ValueError("the positive group is empty: name at least one class")
    missing = [n for n in names if not any(lab == n or parent_of(lab) == n for lab in labels)]
    if missing:
        raise ValueError(f"--positive {', '.join(map(repr, missing))} is not a class of this classifier "
                         f"(classes: {', '.join(labels)})")  # fmt: skip
    members = [i for i, lab in enumerate(labels) if lab in names or parent_of(lab) in names]
    if len(members) == len(labels):
        raise ValueError(f"--positive {', '.join(names)} takes every class: a detector needs a negative side")
    return members


@dataclass
class Split:
    labels: torch.Tensor  # (N,) indices into names
    names: list[str]
    parts: dict[str, list[str]] = field(default_factory=dict)  # class -> its new sub-classes
    loo_correct: list[int] = field(default_factory=list)  # support clips labelled right, before and after each split


def two_means(flat: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Two clusters of clips (N, K, D) -> (N,) in {0, 1}, on every head L2-normalised (k-means, 10 starts)."""
    from sklearn.cluster import KMeans

    x = calm.l2_normalize(flat).flatten(1).double().numpy()
    return torch.from_numpy(KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(x)).long()


def split_classes(
    config: CalmConfig, flat: torch.Tensor, labels: torch.Tensor, names: list[str], allowed: torch.Tensor
) -> Split:
    """Split classes (not already sub-classes, with at least 2 * MIN_PER_PART clips) in two, best first, while a
    split makes leave-one-out label at least MIN_GAIN more support clips right. flat: (N, K, D)."""
    top_k = fitting.DEFAULT_TOP_K if config.top_k == "auto" else config.top_k
    split = Split(labels.clone(), list(names))
    best = _correct(config, flat, split.labels, split.names, allowed, top_k)
    split.loo_correct.append(best)
    while True:  # each round splits one class or ends: at most one round per class
        trials = []
        for name in [n for n in split.names if SUB not in n]:
            trial = _halve(flat, split, name)
            if trial is not None:
                trials.append((_correct(config, flat, trial.labels, trial.names, allowed, top_k), name, trial))
        if not trials:
            return split
        correct, name, trial = max(trials, key=lambda t: t[0])
        if correct < best + MIN_GAIN:
            return split
        trial.loo_correct = [*split.loo_correct, correct]
        trial.parts = {**split.parts, name: [f"{name}{SUB}1", f"{name}{SUB}2"]}
        split, best = trial, correct


def _halve(flat: torch.Tensor, split: Split, name: str) -> Split | None:
    """The split with class `name` cut in two by k-means, or None when a half would be too small."""
    c = split.names.index(name)
    members = (split.labels == c).nonzero().flatten()
    if members.numel() < 2 * MIN_PER_PART:
        return None
    part = two_means(flat[members])
    if int(part.sum()) < MIN_PER_PART or int((1 - part).sum()) < MIN_PER_PART:
        return None
    names = [*split.names[:c], f"{name}{SUB}1", f"{name}{SUB}2", *split.names[c + 1 :]]
    labels = split.labels + (split.labels > c).long()  # classes after c move up one
    labels[members[part == 1]] = c + 1
    return Split(labels, names)


def _correct(
    config: CalmConfig, flat: torch.Tensor, labels: torch.Tensor, names: list[str], allowed: torch.Tensor,
    top_k: int | None,
) -> int:  # fmt: skip
    """Support clips whose leave-one-out prediction is their class (a sibling sub-class counts as right)."""
    parent = torch.tensor([sorted({n.split(SUB, 1)[0] for n in names}).index(n.split(SUB, 1)[0]) for n in names])
    predicted = fitting.loo_predictions(config, flat, labels, len(names), allowed, top_k)
    return int((parent[predicted] == parent[labels]).sum())
