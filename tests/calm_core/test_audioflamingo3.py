"""The Audio Flamingo 3 adapter against the stock transformers forward, on a tiny model."""

from pathlib import Path

import numpy as np
import pytest
import torch

from calm_core.backbones import load_backbone
from calm_core.backbones.audioflamingo3 import AUDIO_ONLY_TURN, DEFAULT_PROMPT, AudioFlamingo3Backbone
from calm_core.errors import AudioError
from calm_core.testing import make_tiny_audioflamingo3, tone

from . import audio_lm_checks as checks


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_audioflamingo3(tmp_path_factory.mktemp("af3") / "tiny")


@pytest.fixture(scope="module")
def af3(model_dir: Path) -> AudioFlamingo3Backbone:
    backbone = load_backbone(model_dir)
    assert isinstance(backbone, AudioFlamingo3Backbone)
    return backbone


def stock_inputs(backbone: AudioFlamingo3Backbone, clip: np.ndarray) -> dict:
    """What the processor gives for one audio-only user turn, through its chat template."""
    turn = [{"role": "user", "content": [{"type": "audio", "audio": clip}]}]
    return backbone.processor.apply_chat_template(turn, tokenize=True, add_generation_prompt=True, return_dict=True)


def test_prompt_is_the_chat_template_of_an_audio_only_turn(af3) -> None:
    assert af3.prompt == DEFAULT_PROMPT
    rendered = af3.processor.apply_chat_template(AUDIO_ONLY_TURN, tokenize=False, add_generation_prompt=True)
    assert rendered == af3.prompt
    clip = tone(440.0, 1.3)
    ours = af3.decoder.prefix_ids + [af3.audio_token_id] * af3.audio_tokens(clip).shape[0] + af3.decoder.suffix_ids
    assert stock_inputs(af3, clip)["input_ids"][0].tolist() == ours


@pytest.mark.parametrize("seconds", [0.1, 0.5, 1.37, 7.3, 29.99, 30.0])
def test_valid_frame_encoder_matches_the_stock_padded_masked_run(af3, seconds: float) -> None:
    clip = tone(523.0, seconds, seed=int(seconds * 100))
    enc = stock_inputs(af3, clip)
    with torch.no_grad():
        stock = af3.model.get_audio_features(enc["input_features"], enc["input_features_mask"]).pooler_output
    ours = af3.audio_tokens(clip)
    assert ours.shape == stock.shape
    assert (ours - stock).abs().max().item() < 1e-5


def test_heads_match_the_stock_full_forward(af3, model_dir: Path) -> None:
    from transformers import AudioFlamingo3ForConditionalGeneration

    full = AudioFlamingo3ForConditionalGeneration.from_pretrained(model_dir).eval()
    clips = [tone(440.0, 1.0), tone(1800.0, 0.7, seed=4)]
    ours = af3.head_activations(clips)
    for i, clip in enumerate(clips):
        ref = checks.stock_heads(full, stock_inputs(af3, clip)).view_as(ours[i])
        assert (ref - ours[i]).abs().max().item() < 1e-5


def test_early_exit_equals_full_forward_exactly(af3) -> None:
    checks.check_early_exit_exact(af3, [tone(300.0, 0.8), tone(2000.0, 1.2, seed=9)])


def test_early_exit_stops_the_forward(af3) -> None:
    checks.check_early_exit_stops(af3, tone(440.0, 0.5))


def test_batched_equals_one_by_one(af3) -> None:
    checks.check_batched_equals_one_by_one(af3, [tone(440.0, 0.5), tone(880.0, 2.0, seed=1), tone(1200.0, 1.1)])


def test_truncated_load_gives_the_same_heads(af3, model_dir: Path) -> None:
    checks.check_truncated_load(af3, model_dir, tone(700.0, 1.0))


def test_vocabulary_projection_is_not_loaded(af3) -> None:
    checks.check_no_vocabulary_projection(af3)


def test_nf4_quantised_load_runs_on_cpu(af3, model_dir: Path) -> None:
    checks.check_nf4_on_cpu(af3, model_dir, tone(440.0, 1.0))


def test_fingerprint_tracks_weights_prompt_and_processor(af3, model_dir: Path, tmp_path: Path) -> None:
    prompt = af3.prompt.replace("<sound>", "<sound>Listen.")
    checks.check_fingerprint(af3, model_dir, make_tiny_audioflamingo3(tmp_path / "seed1", seed=1), tmp_path, prompt)


def test_missing_weights_name_the_folder(model_dir: Path, tmp_path: Path) -> None:
    checks.check_missing_weights_named(model_dir, tmp_path)


def test_too_short_clip_is_an_error(af3) -> None:
    with pytest.raises(AudioError, match="too short"):
        af3.head_activations([np.zeros(200, dtype=np.float32)])


def test_calm_fit_end_to_end(model_dir: Path, tone_sets, tmp_path: Path) -> None:
    result = checks.check_calm_fit(model_dir, tone_sets, tmp_path)
    assert result["calm"]["accuracy"] >= 0.5  # chance is 0.25
