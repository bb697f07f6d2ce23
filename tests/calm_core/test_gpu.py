"""CUDA paths: NF4 loading with bitsandbytes and early exit on the GPU. Skipped without a CUDA device."""

import pytest
import torch

from calm_core.backbones import LoadOptions, load_backbone
from calm_core.testing import tone

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def test_nf4_on_cuda_matches_fp32_direction_and_exits_early(tiny_model_dir, backbone) -> None:
    gpu = load_backbone(tiny_model_dir, LoadOptions(device="cuda", dtype="nf4"))
    assert type(gpu.text_layers[0].self_attn.o_proj).__name__ == "Linear4bit"
    clips = [tone(440.0, 1.0), tone(1500.0, 0.7, seed=2)]
    full = gpu.head_activations(clips)
    for exit_layer in range(gpu.loaded_layers):
        assert torch.equal(gpu.head_activations(clips, exit_layer=exit_layer), full[:, : exit_layer + 1])
    cpu = backbone.head_activations(clips)
    cos = torch.nn.functional.cosine_similarity(full.flatten(1), cpu.flatten(1))
    assert bool((cos > 0.9).all())


def test_fp32_on_cuda_equals_cpu(tiny_model_dir, backbone) -> None:
    gpu = load_backbone(tiny_model_dir, LoadOptions(device="cuda", dtype="fp32"))
    clips = [tone(700.0, 1.2)]
    assert torch.allclose(gpu.head_activations(clips), backbone.head_activations(clips), atol=1e-4)
