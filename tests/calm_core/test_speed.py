"""The faster forward against the plain one: prefix cache, batched audio encoder, last-token exit layer."""

from pathlib import Path

import pytest
import torch

from calm_core.backbones import LoadOptions, load_backbone
from calm_core.backbones.decoder import PromptDecoder
from calm_core.backbones.last_token import supports_last_token
from calm_core.testing import tone

ATOL = 1e-5  # fp32: different kernel shapes round differently, nothing more


@pytest.fixture(scope="module")
def audio(backbone) -> list[torch.Tensor]:
    """Audio tokens of clips of unequal lengths, so the batch has right padding."""
    clips = [tone(440.0, 0.5), tone(880.0, 2.0, seed=1), tone(1200.0, 1.1, seed=2)]
    with torch.inference_mode():
        return [backbone.audio_tokens(c) for c in clips]


@pytest.fixture(scope="module")
def plain(backbone, audio) -> torch.Tensor:
    with torch.inference_mode():
        return backbone.decoder.heads(audio, backbone.loaded_layers - 1, prefix_cache=False, last_token_exit=False)


def test_the_prefix_cache_is_on_and_last_token_read_out_available(backbone) -> None:
    assert backbone.decoder.prefix_cache and not backbone.decoder.last_token_exit
    assert all(backbone.decoder.last_token_ready(i) for i in range(backbone.loaded_layers))


@pytest.mark.parametrize("last_token_exit", [False, True])
def test_prefix_cache_equals_the_uncached_forward_at_every_exit(backbone, audio, plain, last_token_exit) -> None:
    for exit_layer in range(backbone.loaded_layers):
        with torch.inference_mode():
            cached = backbone.decoder.heads(audio, exit_layer, prefix_cache=True, last_token_exit=last_token_exit)
        assert cached.shape == (len(audio), exit_layer + 1, plain.shape[-1])
        assert (cached - plain[:, : exit_layer + 1]).abs().max().item() < ATOL


def test_prefix_states_are_computed_once_and_again_when_the_prompt_changes(backbone, audio) -> None:
    decoder = PromptDecoder(
        backbone.decoder.language_model,
        list(backbone.decoder.prefix_ids),
        backbone.decoder.suffix_ids,
        backbone.audio_token_id,
        backbone.decoder.pad_id,
        backbone.device,
    )
    with torch.inference_mode():
        decoder.heads(audio, 1)
        first = decoder.prefix_states()
        decoder.heads(audio[:1], 2)
        assert decoder.prefix_states() is first  # reused, not rebuilt
        n = len(decoder.prefix_ids)
        assert first.keys[0].shape[0] == 1 and first.keys[0].shape[2] == n
        assert torch.equal(first.keys[0], decoder.prefix_states().keys[0])  # a forward did not mutate it
        decoder.prefix_ids = decoder.prefix_ids[:-3]
        changed = decoder.heads(audio, 3)
        assert decoder.prefix_states() is not first and decoder.prefix_states().keys[0].shape[2] == n - 3
        ref = decoder.heads(audio, 3, prefix_cache=False, last_token_exit=False)
    assert (changed - ref).abs().max().item() < ATOL


def test_last_token_read_out_equals_the_stock_one_at_every_exit(backbone, audio, plain) -> None:
    full = backbone.decoder.heads(audio, backbone.loaded_layers - 1, prefix_cache=False, last_token_exit=True)
    for exit_layer in range(backbone.loaded_layers):
        with torch.inference_mode():
            fast = backbone.decoder.heads(audio, exit_layer, prefix_cache=False, last_token_exit=True)
        assert (fast - plain[:, : exit_layer + 1]).abs().max().item() < ATOL
        # Every layer is read the same way whichever layer is the exit: early exit changes no bit.
        assert torch.equal(fast, full[:, : exit_layer + 1])


def test_last_token_exit_stops_before_the_exit_layer_runs(backbone, audio) -> None:
    ran = []
    hooks = [layer.register_forward_hook(lambda *_: ran.append(1)) for layer in backbone.text_layers]
    try:
        with torch.inference_mode():
            backbone.decoder.heads(audio, 2, last_token_exit=True)
    finally:
        for h in hooks:
            h.remove()
    assert len(ran) == 2  # layers 0 and 1; layer 2's attention is computed for the last token only


def _tiny_text_model(family: str) -> torch.nn.Module:
    """A random decoder LM of another family (grouped-query heads; Qwen3 adds per-head q/k norms)."""
    from transformers import LlamaConfig, LlamaModel, Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    common = dict(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    if family == "llama":
        return LlamaModel(LlamaConfig(**common)).eval()
    return Qwen3Model(Qwen3Config(head_dim=16, **common)).eval()


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_both_speed_ups_hold_on_other_decoder_families(family: str) -> None:
    lm = _tiny_text_model(family)
    assert supports_last_token(lm.layers[0])
    decoder = PromptDecoder(lm, list(range(10, 30)), list(range(40, 52)), 7, 0, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    audio = [torch.randn(n, 64, generator=gen) for n in (5, 17, 11)]
    with torch.inference_mode():
        ref = decoder.heads(audio, 2, prefix_cache=False, last_token_exit=False)
        for exit_layer in range(3):
            fast = decoder.heads(audio, exit_layer, prefix_cache=True, last_token_exit=True)
            assert (fast - ref[:, : exit_layer + 1]).abs().max().item() < ATOL


def test_an_unrecognised_read_out_runs_the_exit_layer_in_full(backbone, audio) -> None:
    def mlp_input(layer):  # an adapter reading another module: the shortcut does not apply
        return layer.mlp.down_proj

    d = backbone.decoder
    decoder = PromptDecoder(
        d.language_model, d.prefix_ids, d.suffix_ids, d.audio_token_id, d.pad_id, d.device, projection=mlp_input
    )
    assert not decoder.last_token_ready(1)
    with torch.inference_mode():
        fast = decoder.heads(audio, 1, last_token_exit=True)
        ref = decoder.heads(audio, 1, prefix_cache=False, last_token_exit=False)
    assert fast.shape == ref.shape and (fast - ref).abs().max().item() < ATOL


def test_padded_masked_encoder_batch_equals_one_clip_at_a_time(backbone) -> None:
    from calm_core.backbones.valid_frames import encode_valid_frames_batch, mel_valid_frames

    clips = [tone(440.0, 0.5), tone(880.0, 2.0, seed=1), tone(150.0, 0.13, seed=5), tone(1200.0, 1.37, seed=2)]
    mels = [mel_valid_frames(backbone.feature_extractor, c) for c in clips]
    with torch.inference_mode():
        padded = encode_valid_frames_batch(backbone.model.audio_tower, backbone.model.multi_modal_projector, mels)
        for clip, tokens in zip(clips, padded, strict=True):
            alone = backbone.audio_tokens(clip)
            assert tokens.shape == alone.shape
            assert (tokens - alone).abs().max().item() < ATOL


def test_batch_audio_tokens_buckets_equal_lengths_and_keeps_order(backbone) -> None:
    clips = [tone(440.0, 1.0), tone(880.0, 0.6, seed=1), tone(300.0, 1.0, seed=2), tone(990.0, 0.6, seed=3)]
    with torch.inference_mode():
        batched = backbone.batch_audio_tokens(clips)
        for clip, tokens in zip(clips, batched, strict=True):
            alone = backbone.audio_tokens(clip)
            assert tokens.shape == alone.shape and (tokens - alone).abs().max().item() < ATOL


def test_head_activations_of_a_mixed_batch_equal_the_plain_one_by_one_run(backbone) -> None:
    clips = [tone(300.0, 0.8), tone(2000.0, 1.9, seed=9), tone(650.0, 0.4, seed=3)]
    fast = backbone.head_activations(clips)
    for i, clip in enumerate(clips):
        with torch.inference_mode():
            alone = backbone.decoder.heads(
                [backbone.audio_tokens(clip)], backbone.loaded_layers - 1, prefix_cache=False, last_token_exit=False
            )
        assert (fast[i].flatten(1) - alone[0]).abs().max().item() < ATOL


def test_nf4_runs_the_fast_paths(tiny_model_dir: Path, backbone) -> None:
    pytest.importorskip("bitsandbytes")
    q = load_backbone(tiny_model_dir, LoadOptions(dtype="nf4"))
    assert q.decoder.last_token_ready(1)
    clips = [tone(440.0, 1.0), tone(900.0, 0.6, seed=1)]
    with torch.inference_mode():
        tokens = q.batch_audio_tokens(clips)
        plain = q.decoder.heads(tokens, 3, prefix_cache=False, last_token_exit=False)
        for exit_layer in range(4):
            fast = q.decoder.heads(tokens, exit_layer, prefix_cache=True, last_token_exit=True)
            assert (fast - plain[:, : exit_layer + 1]).abs().max().item() < 1e-4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no CUDA device")
def test_gpu_suite_without_cuda_fails_naming_the_device() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--device", "cuda"], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert "'cuda' was requested but CUDA is not available" in done.stderr


def test_bench_steps_write_a_new_report_folder_and_name_the_run_of_each_section(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "not" / "yet" / "perf.md"  # --steps with a folder that does not exist used to crash
    cmd = [sys.executable, "bench/run.py", "--quick", "--steps", "memory", "--out", str(out)]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert set(report["runs"]) == {"memory"} and "--steps memory" in report["runs"]["memory"]["command"]
    assert "load average" in report["runs"]["memory"]["machine"]
    text = out.read_text()
    assert "| memory | `" in text and "## 2. Resident memory by layers loaded — tiny" in text
    bad = subprocess.run([*cmd[:4], "nosuchstep", "--out", str(out)], cwd=root, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown --steps nosuchstep" in bad.stderr
