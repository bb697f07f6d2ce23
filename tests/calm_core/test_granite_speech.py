"""The Granite Speech adapter against the stock transformers forward (speech LoRA loaded), on a tiny model."""

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from calm_core.backbones import LoadOptions, load_backbone
from calm_core.backbones.granite_speech import AUDIO_ONLY_TURN, DEFAULT_PROMPT, GraniteMel, GraniteSpeechBackbone
from calm_core.errors import AudioError, ModelLoadError
from calm_core.testing import make_tiny_granite_speech, tone

from . import audio_lm_checks as checks


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_granite_speech(tmp_path_factory.mktemp("granite") / "tiny")


@pytest.fixture(scope="module")
def granite(model_dir: Path) -> GraniteSpeechBackbone:
    backbone = load_backbone(model_dir)
    assert isinstance(backbone, GraniteSpeechBackbone)
    return backbone


@pytest.fixture(scope="module")
def stock_lora(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The stock model with its lm_head, with the folder's LoRA loaded by peft's PeftModel.from_pretrained
    (peft's own loader and key handling, independent of the adapter's)."""
    from peft import PeftModel
    from transformers import GraniteSpeechForConditionalGeneration

    base = tmp_path_factory.mktemp("granite-base")
    shutil.copytree(model_dir, base, dirs_exist_ok=True, ignore=shutil.ignore_patterns("adapter_*"))
    full = GraniteSpeechForConditionalGeneration.from_pretrained(base).eval()
    wrapped = PeftModel.from_pretrained(full, str(model_dir)).eval()
    assert wrapped.active_adapters == ["default"]
    return wrapped


@pytest.fixture(scope="module")
def stock(stock_lora):  # type: ignore[no-untyped-def]
    """The stock conditional-generation model itself, the LoRA injected into its layers."""
    return stock_lora.get_base_model()


def stock_inputs(granite: GraniteSpeechBackbone, clip: np.ndarray) -> dict:
    """What GraniteSpeechProcessor gives for the prompt and one clip: <|audio|> repeated once per audio
    token (its count formula), tokenised, and the log-mel (equal to the stock extractor's, tested below)."""
    n = granite.mel.n_audio_tokens(clip.size)
    text = granite.prompt.replace("<|audio|>", "<|audio|>" * n)
    return {
        "input_ids": granite.tokenizer(text, return_tensors="pt")["input_ids"],
        "input_features": granite.mel.log_mel(torch.from_numpy(clip)[None]),
    }


def reference_log_mel(mel: GraniteMel, clip: np.ndarray) -> np.ndarray:
    """GraniteSpeechFeatureExtractor's recipe in float64 numpy through transformers.audio_utils (another
    STFT and filter bank implementation than the adapter's torch one): (frames // 2, 2 * n_mels)."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    filters = mel_filter_bank(
        num_frequency_bins=mel.n_fft // 2 + 1,
        num_mel_filters=mel.n_mels,
        min_frequency=0.0,
        max_frequency=mel.sampling_rate / 2,
        sampling_rate=mel.sampling_rate,
        norm=None,
        mel_scale="htk",
    )
    window = window_function(mel.win_length, "hann", frame_length=mel.n_fft)  # centred in the FFT frame
    power = spectrogram(
        clip.astype(np.float64),
        window,
        frame_length=mel.n_fft,
        hop_length=mel.hop_length,
        power=2.0,
        center=True,
        pad_mode="reflect",
        mel_filters=filters,
    )  # (n_mels, frames)
    logmel = np.log10(np.maximum(power.T, 1e-10))
    logmel = np.maximum(logmel, logmel.max() - 8.0) / 4 + 1
    logmel = logmel[: logmel.shape[0] // 2 * 2]
    return logmel.reshape(-1, 2 * mel.n_mels)


def test_prompt_is_the_chat_template_of_an_audio_only_turn(granite) -> None:
    assert granite.prompt == DEFAULT_PROMPT
    rendered = granite.tokenizer.apply_chat_template(AUDIO_ONLY_TURN, tokenize=False, add_generation_prompt=True)
    assert rendered == granite.prompt
    clip = tone(440.0, 1.3)
    ours = (
        granite.decoder.prefix_ids
        + [granite.audio_token_id] * granite.audio_tokens(clip).shape[0]
        + granite.decoder.suffix_ids
    )
    assert stock_inputs(granite, clip)["input_ids"][0].tolist() == ours


@pytest.mark.parametrize("seconds", [0.02, 0.1, 0.31, 1.0, 4.05, 9.7])
def test_log_mel_matches_the_extractors_recipe(granite, seconds: float) -> None:
    clip = tone(523.0, seconds, seed=int(seconds * 100))
    ours = granite.mel.log_mel(torch.from_numpy(clip)[None])[0].numpy()
    ref = reference_log_mel(granite.mel, clip)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-4


@pytest.mark.parametrize("n_samples", [257, 320, 479, 480, 4_799, 4_800, 16_000, 48_123, 160_000])
def test_audio_token_count_is_the_processors(granite, n_samples: int) -> None:
    from transformers.models.granite_speech.feature_extraction_granite_speech import GraniteSpeechFeatureExtractor

    # The stock count formula is plain Python; it reads only these settings from the extractor.
    settings = SimpleNamespace(
        melspec_kwargs={"hop_length": 160}, projector_window_size=15, projector_downsample_rate=5
    )
    expected = GraniteSpeechFeatureExtractor._get_num_audio_features(settings, [n_samples])[0]  # type: ignore[arg-type]
    clip = tone(300.0, n_samples / 16_000)[:n_samples]
    assert granite.mel.n_audio_tokens(n_samples) == expected == granite.audio_tokens(clip).shape[0]


def test_log_mel_equals_the_stock_extractor(granite, model_dir: Path) -> None:
    pytest.importorskip(
        "torchaudio",
        reason="GraniteSpeechFeatureExtractor needs torchaudio, whose PyPI wheels are CUDA builds that do not"
        " load against the CPU torch installed here",
    )
    from transformers import GraniteSpeechFeatureExtractor

    extractor = GraniteSpeechFeatureExtractor.from_pretrained(model_dir)
    for seconds in (0.1, 1.0, 9.7):
        clip = tone(880.0, seconds)
        stock = extractor(clip)
        assert torch.allclose(granite.mel.log_mel(torch.from_numpy(clip)[None]), stock["input_features"], atol=1e-6)
        assert stock["audio_embed_sizes"] == [granite.mel.n_audio_tokens(clip.size)]


def test_heads_match_the_stock_full_forward_with_the_lora(granite, stock) -> None:
    clips = [tone(440.0, 1.0), tone(1800.0, 5.3, seed=4)]  # 5.3 s: six conformer attention blocks, the last partial
    ours = granite.head_activations(clips)
    plain = granite.decoder.heads(
        granite.batch_audio_tokens(clips), granite.loaded_layers - 1, prefix_cache=False, last_token_exit=False
    )
    for i, clip in enumerate(clips):
        ref = checks.stock_heads(stock, stock_inputs(granite, clip)).view_as(ours[i])
        assert (ref - ours[i]).abs().max().item() < 1e-5
        assert (ref.flatten() - plain[i].flatten()).abs().max().item() < 1e-5


def test_the_lora_is_on_and_changes_the_heads(granite, stock, stock_lora) -> None:
    layer = granite.text_layers[0].self_attn
    assert all(type(getattr(layer, p)).__module__.startswith("peft.") for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
    clip = tone(440.0, 1.0)
    with stock_lora.disable_adapter():
        without = checks.stock_heads(stock, stock_inputs(granite, clip))
    ours = granite.head_activations([clip])[0].flatten(1)
    assert (without - ours).abs().max().item() > 0.1


def test_audio_is_scaled_by_the_embedding_multiplier_like_text(granite) -> None:
    """The spliced audio tokens go through Granite's embedding multiplier with the text, as in the stock forward."""
    seen: list[torch.Tensor] = []
    hook = granite.text_layers[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    clip = tone(440.0, 0.5)
    try:
        granite.decoder.heads([granite.audio_tokens(clip)], 0, prefix_cache=False, last_token_exit=False)
    finally:
        hook.remove()
    start = len(granite.decoder.prefix_ids)
    tokens = granite.audio_tokens(clip)
    multiplier = granite.model.language_model.config.embedding_multiplier
    assert multiplier != 1.0
    assert torch.allclose(seen[0][0, start : start + tokens.shape[0]], tokens * multiplier)


def test_early_exit_equals_full_forward_exactly(granite) -> None:
    checks.check_early_exit_exact(granite, [tone(300.0, 0.8), tone(2000.0, 1.2, seed=9)])


def test_early_exit_stops_the_forward(granite) -> None:
    checks.check_early_exit_stops(granite, tone(440.0, 0.5))


def test_batched_equals_one_by_one(granite) -> None:
    # Two clips of one length share an encoder run; the third is encoded alone.
    clips = [tone(440.0, 0.5), tone(880.0, 2.0, seed=1), tone(1200.0, 0.5, seed=2)]
    checks.check_batched_equals_one_by_one(granite, clips)


def test_truncated_load_gives_the_same_heads(granite, model_dir: Path) -> None:
    checks.check_truncated_load(granite, model_dir, tone(700.0, 1.0))


def test_vocabulary_projection_is_not_loaded(granite) -> None:
    checks.check_no_vocabulary_projection(granite)


def test_nf4_quantised_load_runs_on_cpu(granite, model_dir: Path) -> None:
    pytest.importorskip("bitsandbytes")
    q = load_backbone(model_dir, LoadOptions(dtype="nf4"))
    o_proj = q.text_layers[0].self_attn.o_proj
    # The LoRA wraps the 4-bit projection.
    assert type(o_proj).__module__.startswith("peft.") and type(o_proj.base_layer).__name__ == "Linear4bit"
    for audio_side in (q.model.encoder, q.model.projector):
        assert not any(type(m).__name__ == "Linear4bit" for m in audio_side.modules())
    assert q.fingerprint.differences(granite.fingerprint) == ["precision"]
    clip = tone(440.0, 1.0)
    heads_q, heads_f = q.head_activations([clip]), granite.head_activations([clip])
    assert torch.nn.functional.cosine_similarity(heads_q.flatten(), heads_f.flatten(), dim=0) > 0.9


def test_fingerprint_tracks_weights_lora_prompt_and_processor(granite, model_dir: Path, tmp_path: Path) -> None:
    assert granite.fingerprint.differences(load_backbone(model_dir, LoadOptions(prompt="<|audio|>")).fingerprint) == [
        "prompt"
    ]
    other_base = make_tiny_granite_speech(tmp_path / "seed1", seed=1, lora_seed=0)
    assert granite.fingerprint.differences(load_backbone(other_base).fingerprint) == ["weights"]
    other_lora = make_tiny_granite_speech(tmp_path / "lora1", lora_seed=1)
    assert granite.fingerprint.differences(load_backbone(other_lora).fingerprint) == ["weights"]
    assert not torch.equal(
        load_backbone(other_lora).head_activations([tone(440.0, 0.5)]), granite.head_activations([tone(440.0, 0.5)])
    )

    edited = tmp_path / "edited"
    shutil.copytree(model_dir, edited)
    adapter = json.loads((edited / "adapter_config.json").read_text())
    adapter["lora_alpha"] *= 2
    (edited / "adapter_config.json").write_text(json.dumps(adapter))
    assert granite.fingerprint.differences(load_backbone(edited).fingerprint) == ["lora"]
    preprocessor = json.loads((model_dir / "preprocessor_config.json").read_text())
    (edited / "preprocessor_config.json").write_text(json.dumps({**preprocessor, "win_length": 320}))
    assert granite.fingerprint.differences(load_backbone(edited).fingerprint) == ["lora", "processor"]


def test_missing_weights_name_the_folder(model_dir: Path, tmp_path: Path) -> None:
    checks.check_missing_weights_named(model_dir, tmp_path)


def test_missing_lora_is_an_error_naming_the_folder(model_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "no-lora"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("adapter_*"))
    with pytest.raises(ModelLoadError, match=f"{bare}: config.json sets has_lora_adapter but .* no adapter_config"):
        load_backbone(bare)


def test_lora_without_peft_is_an_error_naming_the_extra(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(
        ModelLoadError, match=rf"{model_dir}: the speech LoRA .* needs peft: pip install 'calm-audio\[granite\]'"
    ):
        load_backbone(model_dir)


def test_bad_feature_extractor_setting_names_folder_key_and_value(model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad-mel"
    shutil.copytree(model_dir, bad)
    preprocessor = json.loads((bad / "preprocessor_config.json").read_text())
    (bad / "preprocessor_config.json").write_text(json.dumps({**preprocessor, "hop_length": "160"}))
    with pytest.raises(ModelLoadError, match=f"{bad}: feature extractor setting hop_length='160' is not a positive"):
        load_backbone(bad)


def test_too_short_clip_is_an_error(granite) -> None:
    with pytest.raises(AudioError, match="too short"):
        granite.head_activations([np.zeros(200, dtype=np.float32)])


def test_calm_fit_end_to_end(model_dir: Path, tone_sets, tmp_path: Path) -> None:
    result = checks.check_calm_fit(model_dir, tone_sets, tmp_path)
    assert result["calm"]["accuracy"] >= 0.5  # chance is 0.25


def test_lora_names_of_both_checkpoint_layouts_map_onto_the_base_model() -> None:
    from calm_core.backbones.granite_speech import lora_key

    tail = "layers.3.self_attn.q_proj.lora_A.weight"
    # transformers 5's layout and the released checkpoints' (language_model was a causal LM with .model)
    assert lora_key(f"base_model.model.model.language_model.{tail}") == f"language_model.{tail}"
    assert lora_key(f"base_model.model.language_model.model.{tail}") == f"language_model.{tail}"


def test_lora_that_does_not_fit_is_an_error_naming_the_file(model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    edited = tmp_path / "renamed-lora"
    shutil.copytree(model_dir, edited)
    weights = load_file(str(edited / "adapter_model.safetensors"))
    save_file({k.replace("q_proj", "x_proj"): v for k, v in weights.items()}, str(edited / "adapter_model.safetensors"))
    with pytest.raises(
        ModelLoadError, match=r"adapter_model.safetensors: the LoRA does not fit the model.s layers \(missing 8"
    ):
        load_backbone(edited)
