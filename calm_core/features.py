"""Head features of audio files, batched, with an on-disk cache keyed by model fingerprint and file content."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from .audio.decode import load_audio
from .audio.preprocessing import Preprocessing
from .backbones.base import Backbone
from .fingerprint import file_sha256


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "calm" / "features"


def cache_entry(cache_dir: Path, fingerprint_digest: str, content_sha256: str, channel: str = "none") -> Path:
    """Where the features of a clip with this content live: found again from the digest alone, so a classifier
    that records its clips' hashes can be refitted without the model or the clips (`calm add`)."""
    suffix = "" if channel == "none" else f":{channel}"
    key = hashlib.sha256(f"{fingerprint_digest}:{content_sha256}{suffix}".encode()).hexdigest()
    return cache_dir / key[:2] / f"{key}.safetensors"


def read_cached(entry: Path, depth: int) -> torch.Tensor | None:
    """Cached (depth, H, D) features, or None when absent, torn or made with fewer layers."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not entry.is_file():
        return None
    try:
        heads = load_file(str(entry))["heads"]
    except (SafetensorError, OSError, KeyError):
        entry.unlink(missing_ok=True)  # a torn write from an interrupted run: recompute
        return None
    return heads[:depth] if heads.shape[0] >= depth else None


class FeatureStore:
    """Extracts (N, L, H, D) head features for files, reusing cached ones from earlier runs.

    A cache entry is valid for any depth up to the one it was made with, so a fit (all layers)
    also serves later evaluations that exit early.
    """

    def __init__(
        self,
        backbone: Backbone,
        cache_dir: Path | None = None,
        batch_size: int = 4,
        channel: str | Preprocessing = "none",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.prep = channel if isinstance(channel, Preprocessing) else Preprocessing(channel)
        self.backbone = backbone
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.hits = 0
        self.misses = 0

    def _entry(self, path: Path) -> Path | None:
        if self.cache_dir is None:
            return None
        return cache_entry(self.cache_dir, self.backbone.fingerprint.digest, file_sha256(path), self.prep.cache_key)

    def _read(self, entry: Path | None, depth: int) -> torch.Tensor | None:
        return None if entry is None else read_cached(entry, depth)

    def _write(self, entry: Path | None, heads: torch.Tensor) -> None:
        from safetensors.torch import save_file

        if entry is None:
            return
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
        save_file({"heads": heads.contiguous()}, str(tmp))
        tmp.replace(entry)

    def extract(
        self, paths: Sequence[Path], exit_layer: int | None = None, *, progress: bool = True, desc: str = "features"
    ) -> torch.Tensor:
        depth = self.backbone.loaded_layers if exit_layer is None else exit_layer + 1
        out: list[torch.Tensor | None] = [None] * len(paths)
        entries = [self._entry(Path(p)) for p in paths]
        todo = []
        for i, entry in enumerate(entries):
            cached = self._read(entry, depth)
            if cached is None:
                todo.append(i)
            else:
                out[i] = cached
        self.hits += len(paths) - len(todo)
        self.misses += len(todo)
        with tqdm(
            total=len(paths), initial=len(paths) - len(todo), desc=desc, unit="clip", disable=not progress
        ) as bar:
            # Files of similar size share a batch, so little compute goes to padding.
            order = sorted(todo, key=lambda i: Path(paths[i]).stat().st_size)
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                clips = [self.prep.apply(load_audio(paths[i])) for i in batch]
                feats = self.backbone.head_activations(clips, exit_layer=depth - 1)
                for i, f in zip(batch, feats):
                    out[i] = f
                    self._write(entries[i], f)
                bar.update(len(batch))
        return torch.stack([t for t in out if t is not None])

    def extract_copies(
        self,
        paths: Sequence[Path],
        recipe: str,
        exit_layer: int | None = None,
        *,
        progress: bool = True,
        desc: str = "features",
    ) -> torch.Tensor:
        """The clips as they are, then each of an augmentation recipe's copies in turn (calm_core.audio.augment):
        (N * (1 + copies), L, H, D), the layout fit_classifier expects."""
        base = self.prep
        out = []
        try:
            for prep in base.copies(recipe):
                self.prep = prep
                label = desc if prep.copy is None else f"{desc} {prep.copy}"
                out.append(self.extract(paths, exit_layer, progress=progress, desc=label))
        finally:
            self.prep = base
        return torch.cat(out)
