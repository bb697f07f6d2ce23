"""The Voxtral adapter against the stock transformers forward, on a tiny model with a tekken tokenizer."""

from pathlib import Path

import numpy as np
import pytest
import torch

from calm_core.backbones import load_backbone
from calm_core.backbones.voxtral import VoxtralBackbone
from calm_core.errors import AudioError
from calm_core.testing import make_tiny_voxtral, tone

from . import audio_lm_checks as checks

pytest.importorskip("mistral_common", reason="Voxtral's tokenizer is read by mistral-common")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_voxtral(tmp_path_factory.mktemp("voxtral") / "tiny")


@pytest.fixture(scope="module")
def voxtral(model_dir: Path) -> VoxtralBackbone:
    backbone = load_backbone(model_dir)
    assert isinstance(backbone, VoxtralBackbone)
    return backbone


def pcm16(clip: np.ndarray) -> np.ndarray:
    """The clip on the 16-bit grid: mistral-common reads audio files as 16-bit PCM, so both paths see these samples."""
    return (np.round(np.clip(clip, -1, 1) * 32767) / 32768).astype(np.float32)


def stock_inputs(backbone: VoxtralBackbone, clip: np.ndarray, folder: Path, text: str | None = None) -> dict:
    """The processor's chat template on one user turn holding the clip (as a file, its supported way)."""
    import soundfile as sf

    path = folder / f"clip-{clip.size}.wav"
    sf.write(path, clip, 16_000, subtype="PCM_16")
    content = [{"type": "audio", "path": str(path)}] + ([{"type": "text", "text": text}] if text else [])
    return backbone.processor.apply_chat_template([{"role": "user", "content": content}])


@pytest.mark.parametrize("seconds", [0.3, 1.3, 29.9])
def test_prompt_and_encoder_input_equal_the_stock_processor(voxtral, tmp_path: Path, seconds: float) -> None:
    clip = pcm16(tone(440.0, seconds))
    enc = stock_inputs(voxtral, clip, tmp_path)
    tokens = voxtral.audio_tokens(clip)
    assert tokens.shape[0] == 375  # one 30 s window
    ours = voxtral.decoder.prefix_ids + [voxtral.audio_token_id] * tokens.shape[0] + voxtral.decoder.suffix_ids
    assert enc["input_ids"][0].tolist() == ours
    assert torch.equal(enc["input_features"], voxtral.windows(clip))


def test_a_prompt_with_text_after_the_audio_matches_the_chat_template(model_dir: Path, tmp_path: Path) -> None:
    from calm_core.backbones import LoadOptions

    b = load_backbone(model_dir, LoadOptions(prompt="<s>[INST][BEGIN_AUDIO][AUDIO]What is this sound?[/INST]"))
    clip = pcm16(tone(300.0, 0.5))
    ours = b.decoder.prefix_ids + [b.audio_token_id] * 375 + b.decoder.suffix_ids
    assert stock_inputs(b, clip, tmp_path, "What is this sound?")["input_ids"][0].tolist() == ours


def test_the_encoder_needs_whole_windows(voxtral) -> None:
    # Voxtral's encoder takes no mask and refuses anything but full 30 s windows: there is no
    # valid-frame run to make equal, so the adapter always encodes the padded window.
    short = voxtral.windows(tone(440.0, 1.0))[..., :200]
    with pytest.raises(ValueError, match="expects the mel input features to be of length 3000"):
        voxtral.model.audio_tower(short)


def test_clips_longer_than_a_window_take_one_window_each(voxtral) -> None:
    assert voxtral.audio_tokens(tone(440.0, 31.0)).shape[0] == 2 * 375


def test_heads_match_the_stock_full_forward(voxtral, model_dir: Path, tmp_path: Path) -> None:
    from transformers import VoxtralForConditionalGeneration

    full = VoxtralForConditionalGeneration.from_pretrained(model_dir).eval()
    clips = [pcm16(tone(440.0, 1.0)), pcm16(tone(1800.0, 0.7, seed=4))]
    ours = voxtral.head_activations(clips)
    for i, clip in enumerate(clips):
        ref = checks.stock_heads(full, stock_inputs(voxtral, clip, tmp_path)).view_as(ours[i])
        assert (ref - ours[i]).abs().max().item() < 1e-5


def test_early_exit_equals_full_forward_exactly(voxtral) -> None:
    checks.check_early_exit_exact(voxtral, [tone(300.0, 0.8), tone(2000.0, 1.2, seed=9)])


def test_early_exit_stops_the_forward(voxtral) -> None:
    checks.check_early_exit_stops(voxtral, tone(440.0, 0.5))


def test_batched_equals_one_by_one(voxtral) -> None:
    checks.check_batched_equals_one_by_one(voxtral, [tone(440.0, 0.5), tone(880.0, 2.0, seed=1)])


def test_truncated_load_gives_the_same_heads(voxtral, model_dir: Path) -> None:
    checks.check_truncated_load(voxtral, model_dir, tone(700.0, 1.0))


def test_vocabulary_projection_is_not_loaded(voxtral) -> None:
    checks.check_no_vocabulary_projection(voxtral)


def test_nf4_quantised_load_runs_on_cpu(voxtral, model_dir: Path) -> None:
    checks.check_nf4_on_cpu(voxtral, model_dir, tone(440.0, 1.0))


def test_fingerprint_tracks_weights_prompt_and_processor(voxtral, model_dir: Path, tmp_path: Path) -> None:
    prompt = voxtral.prompt.replace("[/INST]", "Listen.[/INST]")
    checks.check_fingerprint(voxtral, model_dir, make_tiny_voxtral(tmp_path / "seed1", seed=1), tmp_path, prompt)


def test_missing_weights_name_the_folder(model_dir: Path, tmp_path: Path) -> None:
    checks.check_missing_weights_named(model_dir, tmp_path)


def test_empty_clip_is_an_error(voxtral) -> None:
    with pytest.raises(AudioError, match="empty clip"):
        voxtral.head_activations([np.zeros(0, dtype=np.float32)])


def test_calm_fit_end_to_end(model_dir: Path, tone_sets, tmp_path: Path) -> None:
    result = checks.check_calm_fit(model_dir, tone_sets, tmp_path)
    assert result["calm"]["accuracy"] >= 0.5  # chance is 0.25
