"""Which model folders on this machine calm can read, and how many heads each gives, from config.json
alone (no weights are loaded): the data behind `calm models`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import HeadLayout
from .registry import ADAPTERS

WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class FoundModel:
    """A model folder: where it was found, its family and head grid, and why it cannot be used (if so)."""

    path: Path
    source: str  # "path" (--path), "hf-cache" or "calm-cache"
    model_type: str
    layout: HeadLayout | None
    model_id: str | None = None  # what to pass as --model besides the path: hub id or bundled name
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        layout = self.layout
        return {
            "path": str(self.path),
            "source": self.source,
            "model_id": self.model_id,
            "model_type": self.model_type,
            "adapter": adapter_name(ADAPTERS[self.model_type]) if self.model_type in ADAPTERS else None,
            "layers": layout.n_layers if layout else None,
            "heads": layout.n_heads if layout else None,
            "head_dim": layout.head_dim if layout else None,
            "usable": self.usable,
            "problem": self.problem,
        }


def adapter_name(adapter: Any) -> str:
    return f"{adapter.__module__.rsplit('.', 1)[-1]}.{adapter.__name__}"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, as huggingface_hub resolves it (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub"


def calm_models_cache() -> Path:
    """Where bundled models are converted to (see base.bundled_model_dir)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "calm" / "models"


def config_layout(config: Any) -> HeadLayout:
    """The heads CALM reads for a config: the decoder LM's layers x heads, or Whisper's encoder + decoder."""
    if config.model_type == "whisper":
        return HeadLayout(
            n_layers=config.encoder_layers + config.decoder_layers,
            n_heads=config.encoder_attention_heads,
            head_dim=config.d_model // config.encoder_attention_heads,
        )
    from .audio_lm import text_layout

    holder = getattr(config, "thinker_config", None) or config  # Qwen2.5-Omni: the thinker's decoder
    return text_layout(holder.text_config)


def missing_weights(folder: Path) -> str | None:
    """Why the folder's weights are incomplete, or None: every shard its index names, or one weight file."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            return f"unreadable {index.name} ({e})"
        absent = [s for s in shards if not (folder / s).is_file()]  # is_file follows the cache's symlinks
        return f"{len(absent)} of {len(shards)} weight shards missing (e.g. {absent[0]})" if absent else None
    if any(p.suffix in WEIGHT_SUFFIXES and p.is_file() for p in folder.iterdir()):
        return None
    return "no weight files (*.safetensors)"


def inspect_folder(folder: Path, source: str, model_id: str | None = None) -> FoundModel | None:
    """The folder as a calm model, or None when it is no model folder (no config.json)."""
    from transformers import AutoConfig

    config_file = folder / "config.json"
    if not config_file.is_file():
        return None
    try:
        model_type = str(json.loads(config_file.read_text())["model_type"])
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
        return FoundModel(folder, source, "?", None, model_id, f"unreadable config.json ({e})")
    if model_type not in ADAPTERS:
        return FoundModel(folder, source, model_type, None, model_id, f"model_type {model_type!r} has no calm adapter")
    try:
        layout = config_layout(AutoConfig.from_pretrained(folder, local_files_only=True))
    except (OSError, ValueError, AttributeError, TypeError) as e:
        return FoundModel(folder, source, model_type, None, model_id, f"config.json not understood ({e})")
    return FoundModel(folder, source, model_type, layout, model_id, missing_weights(folder))


def hf_cache_folders(hub: Path) -> Iterator[tuple[Path, str]]:
    """(snapshot folder, repo id) of every model in a hub cache."""
    if not hub.is_dir():
        return
    for repo in sorted(hub.glob("models--*")):
        model_id = repo.name.removeprefix("models--").replace("--", "/")
        for snapshot in sorted((repo / "snapshots").glob("*")):
            if snapshot.is_dir():
                yield snapshot, model_id


def find_models(
    paths: Iterable[Path] = (), *, hub: Path | None = None, calm_cache: Path | None = None
) -> list[FoundModel]:
    """Model folders in the given paths (each a model folder or a folder of them), the Hugging Face
    cache and calm's converted bundled models; folders of model types calm has no adapter for included."""
    found: list[FoundModel] = []
    for path in paths:
        path = Path(path).expanduser()
        if not path.is_dir():
            raise ValueError(f"{path}: no such folder to look for models in")
        candidates = [path] if (path / "config.json").is_file() else sorted(p for p in path.glob("*") if p.is_dir())
        found += [m for m in (inspect_folder(c, "path") for c in candidates) if m is not None]
    for snapshot, model_id in hf_cache_folders(hub or hf_hub_cache()):
        model = inspect_folder(snapshot, "hf-cache", model_id)
        if model is not None:
            found.append(model)
    cache = calm_cache or calm_models_cache()
    if cache.is_dir():
        found += [
            m
            for m in (inspect_folder(p, "calm-cache", f"bundled:{p.name}") for p in sorted(cache.glob("*")))
            if m is not None
        ]
    return found
