"""Checks every encoder + projector + decoder adapter must pass, shared by the per-family tests.

Each takes the adapter loaded on a tiny model written through the family's own save_pretrained.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from calm_core.backbones import LoadOptions, load_backbone
from calm_core.errors import ModelLoadError

from ..conftest import TONE_CLASSES


def stock_heads(full_model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """Every decoder layer's o_proj input at the last token of the stock forward (lm_head included): (L, H * D)."""
    captured: list[torch.Tensor] = []
    hooks = [
        layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, a: captured.append(a[0][0, -1]))
        for layer in full_model.model.language_model.layers
    ]
    try:
        with torch.no_grad():
            full_model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(captured)


def check_early_exit_exact(backbone: Any, clips: list[np.ndarray]) -> None:
    full = backbone.head_activations(clips)
    for exit_layer in range(backbone.loaded_layers):
        early = backbone.head_activations(clips, exit_layer=exit_layer)
        assert early.shape[1] == exit_layer + 1
        assert torch.equal(early, full[:, : exit_layer + 1]), f"exit layer {exit_layer}"


def check_early_exit_stops(backbone: Any, clip: np.ndarray) -> None:
    ran: list[int] = []
    hooks = [layer.register_forward_hook(lambda *_: ran.append(1)) for layer in backbone.text_layers]
    try:
        backbone.head_activations([clip], exit_layer=1)
    finally:
        for h in hooks:
            h.remove()
    assert len(ran) == 1  # layer 0 completes; layer 1 stops at its o_proj


def check_batched_equals_one_by_one(backbone: Any, clips: list[np.ndarray]) -> None:
    batched = backbone.head_activations(clips)
    for i, clip in enumerate(clips):
        assert torch.allclose(batched[i], backbone.head_activations([clip])[0], atol=1e-5)


def check_truncated_load(backbone: Any, model_dir: Path, clip: np.ndarray) -> None:
    small = load_backbone(model_dir, LoadOptions(load_layers=2))
    assert small.loaded_layers == 2 and len(small.text_layers) == 2
    assert small.layout == backbone.layout and small.fingerprint.digest == backbone.fingerprint.digest
    assert sum(p.numel() for p in small.model.parameters()) < sum(p.numel() for p in backbone.model.parameters())
    assert torch.equal(small.head_activations([clip]), backbone.head_activations([clip], exit_layer=1))
    with pytest.raises(ValueError, match="outside the 2 loaded layers"):
        small.head_activations([clip], exit_layer=2)


def check_no_vocabulary_projection(backbone: Any) -> None:
    assert not hasattr(backbone.model, "lm_head")
    assert not any("lm_head" in name for name, _ in backbone.model.named_parameters())


def check_nf4_on_cpu(backbone: Any, model_dir: Path, clip: np.ndarray) -> Any:
    """Loads the model in NF4 on CPU, checks it and returns the quantised backbone."""
    pytest.importorskip("bitsandbytes")
    q = load_backbone(model_dir, LoadOptions(dtype="nf4"))
    assert type(q.text_layers[0].self_attn.o_proj).__name__ == "Linear4bit"
    # The audio side stays in the compute dtype (Qwen-Omni's projection is inside its audio tower).
    audio_side = [getattr(q.model, name) for name in ("audio_tower", "multi_modal_projector") if hasattr(q.model, name)]
    assert audio_side and not any(type(m).__name__ == "Linear4bit" for part in audio_side for m in part.modules())
    assert q.fingerprint.differences(backbone.fingerprint) == ["precision"]
    heads_q, heads_f = q.head_activations([clip]), backbone.head_activations([clip])
    assert torch.nn.functional.cosine_similarity(heads_q.flatten(), heads_f.flatten(), dim=0) > 0.9
    return q


def check_fingerprint(
    backbone: Any,
    model_dir: Path,
    other_weights: Path,
    tmp_path: Path,
    prompt: str,
    prompt_components: tuple[str, ...] = ("prompt",),
) -> None:
    """The fingerprint changes with the weights, the prompt and the feature extractor's settings, each alone.
    prompt_components: what a new prompt changes (an adapter may also record its token ids)."""
    assert backbone.fingerprint.differences(load_backbone(other_weights).fingerprint) == ["weights"]
    reprompted = load_backbone(model_dir, LoadOptions(prompt=prompt))
    assert backbone.fingerprint.differences(reprompted.fingerprint) == list(prompt_components)
    copy = tmp_path / "other-processor"
    shutil.copytree(model_dir, copy)
    if (copy / "processor_config.json").is_file():  # a processor saved whole, its extractor nested
        config_file = copy / "processor_config.json"
        config = json.loads(config_file.read_text())
        config["feature_extractor"]["n_fft"] = 512
    else:  # a feature extractor saved on its own
        config_file = copy / "preprocessor_config.json"
        config = {**json.loads(config_file.read_text()), "n_fft": 512}
    config_file.write_text(json.dumps(config))
    assert backbone.fingerprint.differences(load_backbone(copy).fingerprint) == ["processor"]


def check_missing_weights_named(model_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "no-weights"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ModelLoadError, match=f"{bare}: could not load"):
        load_backbone(bare)


def check_calm_fit(model_dir: Path, tone_sets: dict[str, Path], tmp_path: Path) -> dict[str, Any]:
    """`calm fit --model DIR` as a real subprocess, then `calm eval` of what it wrote."""
    out = tmp_path / "tones.safetensors"
    common = ["--cache-dir", str(tmp_path / "cache")]

    def calm(*args: str) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-m", "calm_core.cli", "-q", *args], capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    fitted = calm("fit", "--model", str(model_dir), "--support", str(tone_sets["support"]), "--out", str(out), *common)
    assert out.is_file() and fitted["support"] == 5 * len(TONE_CLASSES)
    assert 0 <= fitted["exit_layer"] < fitted["n_layers"] == 4
    evaluated = calm("eval", "--classifier", str(out), "--data", str(tone_sets["test"]), "--json", *common)
    assert evaluated["n"] == 5 * len(TONE_CLASSES)
    return evaluated
