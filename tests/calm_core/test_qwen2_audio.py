"""The Qwen2-Audio adapter against the stock transformers forward, on the tiny model."""

from pathlib import Path

import numpy as np
import pytest
import torch

from calm_core.backbones import LoadOptions, load_backbone
from calm_core.backbones.valid_frames import mel_valid_frames
from calm_core.errors import AudioError, ModelLoadError
from calm_core.testing import make_tiny_qwen2_audio, tone
from calm_core.testing.qwen2_audio import stock_audio_tokens

from . import audio_lm_checks as checks


@pytest.mark.parametrize("seconds", [0.1, 0.5, 1.0, 1.37, 7.3, 29.99, 30.0])
def test_valid_frame_encoder_matches_padded_masked_run(backbone, seconds: float) -> None:
    clip = tone(523.0, seconds, seed=int(seconds * 100))
    ours = backbone.audio_tokens(clip)
    stock = stock_audio_tokens(backbone, clip)
    assert ours.shape == stock.shape
    assert (ours - stock).abs().max().item() < 1e-5


def test_valid_frame_mel_reads_only_what_the_convolutions_need(backbone) -> None:
    mel, n_valid = mel_valid_frames(backbone.feature_extractor, tone(440.0, 1.0))
    assert n_valid == 100 and mel.shape == (128, 101)


def test_prompt_ids_match_the_stock_processor(backbone) -> None:
    clip = tone(440.0, 1.3)
    enc = backbone.processor(text=[backbone.prompt], audio=[clip], sampling_rate=16000, return_tensors="pt")
    n_audio = backbone.audio_tokens(clip).shape[0]
    ours = backbone.decoder.prefix_ids + [backbone.audio_token_id] * n_audio + backbone.decoder.suffix_ids
    assert enc["input_ids"][0].tolist() == ours


def test_heads_match_the_stock_full_forward(backbone, tiny_model_dir: Path) -> None:
    from transformers import Qwen2AudioForConditionalGeneration

    full = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    clips = [tone(440.0, 1.0), tone(1800.0, 0.7, seed=4)]
    ours = backbone.head_activations(clips)
    layers = full.model.language_model.layers
    for i, clip in enumerate(clips):
        enc = backbone.processor(text=[backbone.prompt], audio=[clip], sampling_rate=16000, return_tensors="pt")
        captured = []
        hooks = [
            layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, a, out=captured: out.append(a[0][0, -1]))
            for layer in layers
        ]
        with torch.no_grad():
            full(**enc)  # the whole model, lm_head included
        for h in hooks:
            h.remove()
        ref = torch.stack(captured).view_as(ours[i])
        assert (ref - ours[i]).abs().max().item() < 1e-5


def test_early_exit_equals_full_forward_exactly(backbone) -> None:
    checks.check_early_exit_exact(backbone, [tone(300.0, 0.8), tone(2000.0, 1.2, seed=9)])


def test_early_exit_stops_the_forward(backbone) -> None:
    checks.check_early_exit_stops(backbone, tone(440.0, 0.5))


def test_batched_equals_one_by_one(backbone) -> None:
    clips = [tone(440.0, 0.5), tone(880.0, 2.0, seed=1), tone(1200.0, 1.1, seed=2)]
    batched = backbone.head_activations(clips)
    for i, clip in enumerate(clips):
        assert torch.allclose(batched[i], backbone.head_activations([clip])[0], atol=1e-5)


def test_truncated_load_reads_fewer_layers_and_gives_the_same_heads(backbone, tiny_model_dir: Path) -> None:
    small = load_backbone(tiny_model_dir, LoadOptions(load_layers=2))
    assert small.loaded_layers == 2 and len(small.text_layers) == 2
    assert small.layout == backbone.layout and small.fingerprint.digest == backbone.fingerprint.digest
    n_small = sum(p.numel() for p in small.model.parameters())
    n_full = sum(p.numel() for p in backbone.model.parameters())
    assert n_small < n_full
    clips = [tone(700.0, 1.0)]
    assert torch.equal(small.head_activations(clips), backbone.head_activations(clips, exit_layer=1))
    with pytest.raises(ValueError, match="outside the 2 loaded layers"):
        small.head_activations(clips, exit_layer=2)


def test_original_checkpoint_key_names_load_the_same(backbone, tmp_path: Path) -> None:
    legacy = load_backbone(make_tiny_qwen2_audio(tmp_path / "legacy", legacy_keys=True))
    clips = [tone(440.0, 1.0)]
    assert torch.equal(legacy.head_activations(clips), backbone.head_activations(clips))


def test_fingerprint_tracks_weights_precision_and_prompt(backbone, tiny_model_dir: Path, tmp_path: Path) -> None:
    other = load_backbone(make_tiny_qwen2_audio(tmp_path / "seed1", seed=1))
    assert backbone.fingerprint.differences(other.fingerprint) == ["weights"]
    prompt = backbone.prompt.replace("What is the sound", "Which sound is it")
    reprompted = load_backbone(tiny_model_dir, LoadOptions(prompt=prompt))
    assert backbone.fingerprint.differences(reprompted.fingerprint) == ["prompt"]


def test_nf4_quantised_load_runs_on_cpu(tiny_model_dir: Path, backbone) -> None:
    pytest.importorskip("bitsandbytes")
    q = load_backbone(tiny_model_dir, LoadOptions(dtype="nf4"))
    assert type(q.text_layers[0].self_attn.o_proj).__name__ == "Linear4bit"
    assert q.fingerprint.differences(backbone.fingerprint) == ["precision"]
    clips = [tone(440.0, 1.0)]
    heads_q, heads_f = q.head_activations(clips), backbone.head_activations(clips)
    cos = torch.nn.functional.cosine_similarity(heads_q.flatten(), heads_f.flatten(), dim=0)
    assert cos > 0.9


def test_missing_model_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="absent: no such model folder"):
        load_backbone(tmp_path / "absent")
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_backbone("nobody/no-such-model")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_backbone(tmp_path)


def test_prompt_without_audio_placeholder_is_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="exactly once"):
        load_backbone(tiny_model_dir, LoadOptions(prompt="no audio here"))


def test_too_short_clip_is_an_error_not_a_text_only_forward(backbone) -> None:
    with pytest.raises(AudioError, match="too short"):
        backbone.head_activations([np.zeros(200, dtype=np.float32)])


def test_weights_digest_ignores_header_key_order(tmp_path: Path) -> None:
    import json
    import struct

    from calm_core.fingerprint import weights_digest

    body = b"\x00" * 16
    for name, meta in (("a", {"x": "1", "y": "2"}), ("b", {"y": "2", "x": "1"})):
        header = json.dumps({"__metadata__": meta, "t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + body)
    assert weights_digest(tmp_path / "a") == weights_digest(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").write_bytes(
        (tmp_path / "b" / "model.safetensors").read_bytes()[:-1] + b"\x01"
    )
    assert weights_digest(tmp_path / "a") != weights_digest(tmp_path / "b")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where there is no CUDA device")
@pytest.mark.parametrize("model", ["tiny", "bundled"])
def test_cuda_requested_without_cuda_is_a_clear_error(tiny_model_dir: Path, model: str) -> None:
    from calm_core.backbones.base import BUNDLED_WHISPER

    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load_backbone(tiny_model_dir if model == "tiny" else BUNDLED_WHISPER, LoadOptions(device="cuda"))


def test_decoder_layers_missing_from_the_weights_are_refused_not_made_up(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    part = tmp_path / "part"
    shutil.copytree(tiny_model_dir, part)
    state = load_file(str(part / "model.safetensors"))
    kept = {k: v for k, v in state.items() if not ("language_model" in k and ".layers.3." in k)}
    save_file(kept, str(part / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"holds decoder layers 0\.\.2 of 4, but 4 were to be loaded"):
        load_backbone(part)
    assert load_backbone(part, LoadOptions(load_layers=3)).loaded_layers == 3
