"""bench/realsize.py's Qwen2-Audio-7B-Instruct folder at real width, loaded truncated in NF4 on CPU by calm's
backbone, against the stock transformers forward on the same NF4 weights.

Reduced depth so that it runs in CI: the config keeps the release's 32 decoder layers, only layers 0 and 1 are
written and loaded; the audio encoder keeps its full width (d_model 1280, 20 heads, ffn 5120) but 2 of its 32
layers. All 32 would cost 1.3 GB more to write, about 2.4 GB more resident (30 layers of 19.7 M parameters, fp32
under NF4 on CPU), and 44 s for each stock 30 s padded encoder run (measured on a loaded 2-core machine), of which
the test makes two.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from calm_core.backbones import LoadOptions, load_backbone
from calm_core.errors import ModelLoadError
from calm_core.testing import tone

ROOT = Path(__file__).resolve().parents[2]
ENCODER_LAYERS = 2
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def realsize() -> Any:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import realsize
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return realsize


@pytest.fixture(scope="module")
def model_dir(realsize: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("bitsandbytes")
    out = tmp_path_factory.mktemp("realsize") / "qwen2-audio-7b"
    realsize.write_realsize(out, exit_layer=1, audio_layers=ENCODER_LAYERS)
    return out


@pytest.fixture(scope="module")
def nf4(model_dir: Path) -> Any:
    return load_backbone(model_dir, LoadOptions(dtype="nf4", load_layers=2))


def test_folder_has_the_released_layout_with_only_the_layers_written(realsize: Any, model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    widths = json.loads(realsize.CONFIG.read_text())
    for part in ("audio_config", "text_config"):
        expected = widths[part] | ({"encoder_layers": ENCODER_LAYERS} if part == "audio_config" else {})
        assert {k: config[part][k] for k in expected} == expected
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert all(re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", f) for f in files)
    assert {p.name for p in model_dir.glob("*.safetensors")} == files
    names = set(index["weight_map"])
    assert "language_model.model.embed_tokens.weight" in names and "language_model.lm_head.weight" not in names
    layers = {int(m.group(1)) for n in names if (m := re.match(r"language_model\.model\.layers\.(\d+)\.", n))}
    assert layers == {0, 1}
    assert (model_dir / "tokenizer.json").is_file() and (model_dir / "processor_config.json").is_file()


def test_truncated_nf4_load_at_real_width(nf4: Any) -> None:
    assert nf4.loaded_layers == 2 and nf4.layout.n_layers == 32
    assert (nf4.layout.n_heads, nf4.layout.head_dim) == (32, 128)
    o_proj = nf4.text_layers[0].self_attn.o_proj
    assert type(o_proj).__name__ == "Linear4bit" and o_proj.weight.numel() * 2 == 4096 * 4096


def stock_heads(bb: Any, clip: Any) -> torch.Tensor:
    """Every head at the last prompt token from Qwen2AudioModel's own forward (30 s padded mel, masked
    encoder, the whole prompt in one pass) on the backbone's loaded weights: (layers, H, D)."""
    enc = bb.processor(text=[bb.prompt], audio=[clip], sampling_rate=16000, return_tensors="pt")
    captured: list[torch.Tensor] = []
    hooks = [
        layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, a, out=captured: out.append(a[0][0, -1]))
        for layer in bb.text_layers
    ]
    try:
        with torch.inference_mode():
            bb.model(**enc)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(captured).float().view(len(captured), bb.layout.n_heads, bb.layout.head_dim)


@pytest.fixture(scope="module")
def clip() -> Any:
    return tone(1800.0, 2.0, seed=4)


@pytest.fixture(scope="module")
def stock(nf4: Any, clip: Any) -> torch.Tensor:
    return stock_heads(nf4, clip)


def test_valid_frame_audio_tokens_match_the_stock_padded_encoder(nf4: Any, clip: Any) -> None:
    from calm_core.testing.qwen2_audio import stock_audio_tokens

    ours, ref = nf4.audio_tokens(clip), stock_audio_tokens(nf4, clip)
    assert ours.shape == ref.shape == (50, 4096)
    assert ((ours - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_decoder_heads_equal_the_stock_forward_given_its_audio_tokens(nf4: Any, clip: Any, stock: Any) -> None:
    from calm_core.testing.qwen2_audio import stock_audio_tokens

    # The plain forward (no prefix cache): the same rows through the same kernels as the stock run. With the
    # cache, the prefix's rows go through NF4's CPU kernel apart from the rest, which may round differently.
    with torch.inference_mode():
        tokens = [stock_audio_tokens(nf4, clip)]
        ours = nf4.decoder.heads(tokens, exit_layer=1, prefix_cache=False, last_token_exit=False)[0].view_as(stock)
    assert stock.abs().max() > 0.1  # the heads carry signal at this width
    assert ((ours - stock).abs().max() / stock.abs().max()).item() < 1e-5


def test_heads_end_to_end_agree_with_the_stock_forward_to_bf16_rounding(nf4: Any, clip: Any, stock: Any) -> None:
    # bitsandbytes' CPU NF4 kernel rounds its input to bf16, so last-bit differences (the valid-frame encoder's
    # 1e-6, the prefix cache's split forward) can flip a rounding; the heads then agree to bf16's precision.
    ours = nf4.head_activations([clip])[0]
    assert ((ours - stock).abs().max() / stock.abs().max()).item() < 2e-2
    assert torch.nn.functional.cosine_similarity(ours.flatten(), stock.flatten(), dim=0) > 0.9999


def test_loading_layers_the_folder_lacks_is_refused(model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"holds decoder layers 0\.\.1 of 32.*--max-layer 1"):
        load_backbone(model_dir, LoadOptions(dtype="nf4", load_layers=3))
    with pytest.raises(ModelLoadError, match="holds decoder layers 0..1"):
        load_backbone(model_dir, LoadOptions(dtype="nf4"))


def test_cpu_probe_measures_a_truncated_load_and_reports_it(
    realsize: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """bench/realsize_cpu.py's per-process probe, on the tiny model (the real-size run takes half an hour)."""
    import os
    import shutil
    import subprocess

    pytest.importorskip("bitsandbytes")
    shutil.copytree(tiny_model_dir, tmp_path / "qwen2-audio-7b-instruct")
    cmd = [sys.executable, "bench/realsize_cpu.py", "--work", str(tmp_path), "--out", str(tmp_path / "out"),
           "--repeats", "1", "--probe", "nf4", "1"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(done.stdout.splitlines()[-1])
    assert row["exit_layer"] == 1 and row["load_s"] > 0 and len(row["segment_s"]) == 1
    parts = row["parameter_bytes"]
    assert {"audio_tower", "multi_modal_projector", "token embeddings", "decoder layers"} <= set(parts)
    # 2 layers of NF4 weights plus their block scales: a little above gpu_sizing's 0.5 byte per weight
    assert row["gpu_sizing_decoder_bytes"] < parts["decoder layers"] < 1.5 * row["gpu_sizing_decoder_bytes"]
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from realsize_cpu import report
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert "| nf4 | 1 |" in report({"probes": [row]})
