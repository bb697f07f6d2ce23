"""The Qwen3-Omni thinker adapter against the stock transformers forward, on tiny random-weight models."""

import functools
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from calm_core.backbones import load_backbone
from calm_core.backbones.qwen_omni import QWEN3_DEFAULT_PROMPT, encode_qwen3_audio, qwen3_mel
from calm_core.errors import AudioError, ModelLoadError
from calm_core.testing import make_tiny_qwen3_omni_moe, tone

from . import audio_lm_checks as checks
from . import qwen_omni_checks as omni_checks

# Two shapes: heads x head_dim equal to the hidden size, and larger than it with one key/value head
# (the released thinker has 32 heads of 128 over a hidden size of 2048).
SHAPES = {
    "4 heads of 16, 2 kv": {"hidden": 64, "n_heads": 4, "head_dim": 16, "n_kv_heads": 2},
    "4 heads of 24, 1 kv": {"hidden": 64, "n_heads": 4, "head_dim": 24, "n_kv_heads": 1},
}


@pytest.fixture(scope="module")
def omni_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("omni3")
    return {
        name: make_tiny_qwen3_omni_moe(root / f"shape{i}", **shape) for i, (name, shape) in enumerate(SHAPES.items())
    }


@pytest.fixture(scope="module")
def omni_dir(omni_dirs: dict[str, Path]) -> Path:
    return omni_dirs["4 heads of 16, 2 kv"]


@pytest.fixture(scope="module")
def omni(omni_dir: Path):
    return load_backbone(omni_dir)


def stock_thinker(model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    return omni_checks.stock_thinker(model_dir, Qwen3OmniMoeThinkerForConditionalGeneration)


def processor_inputs(backbone, clip: np.ndarray) -> dict[str, torch.Tensor]:
    """The thinker's inputs as Qwen3OmniMoeProcessor builds them for the prompt and one clip.

    The processor object cannot be built here (its video processor needs torchvision, which has no CPU
    wheel for this torch on PyPI), so its own audio code runs with its own default audio settings:
    features with feature_attention_mask, and <|audio_pad|> expanded to the encoder's token count.
    """
    from transformers import Qwen3OmniMoeProcessor

    proc = SimpleNamespace(
        feature_extractor=backbone.feature_extractor,
        audio_token="<|audio_pad|>",
        n_window=Qwen3OmniMoeProcessor.n_window,
    )
    proc.replace_audio_token = functools.partial(Qwen3OmniMoeProcessor.replace_audio_token, proc)
    audio, [replacement] = Qwen3OmniMoeProcessor._process_audio(
        proc, [clip], **Qwen3OmniMoeProcessor.audio_kwargs, return_tensors="pt"
    )
    text = backbone.tokenizer([backbone.prompt.replace("<|audio_pad|>", replacement)], return_tensors="pt")
    return omni_checks.thinker_inputs(text, audio)


def test_only_the_thinker_without_lm_head_is_loaded(omni, omni_dir: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(omni_dir / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert {k.split(".")[0] for k in keys} == {"thinker", "talker", "code2wav"}  # the released layout
    assert "thinker.lm_head.weight" in keys
    assert "thinker.model.layers.0.mlp.experts.3.gate_proj.weight" in keys  # one tensor per expert on disk
    assert json.loads((omni_dir / "config.json").read_text())["model_type"] == "qwen3_omni_moe"
    assert type(omni.model).__name__ == "Qwen3OmniMoeThinkerModel"
    assert {n.split(".")[0] for n, _ in omni.model.named_parameters()} == {"audio_tower", "language_model"}
    checks.check_no_vocabulary_projection(omni)


@pytest.mark.parametrize("seconds", [0.02, 0.5, 1.0, 1.37, 9.3, 31.0])
def test_audio_encoder_matches_the_stock_processor_run(omni, seconds: float) -> None:
    """The processor pads nothing for one clip; the encoder chunks it by 100 frames and attends in windows."""
    clip = tone(523.0, seconds, seed=int(seconds * 100))
    inputs = processor_inputs(omni, clip)
    omni_checks.check_encoder_matches_stock(omni, clip, inputs)
    assert qwen3_mel(omni.feature_extractor, clip).shape[-1] == int(inputs["feature_attention_mask"].sum())


def test_audio_encoder_batch_equals_one_clip_at_a_time(omni) -> None:
    clips = [tone(440.0, 0.3), tone(880.0, 2.6, seed=1), tone(1200.0, 0.7, seed=2), tone(300.0, 0.3, seed=5)]
    batched = omni_checks.check_encoder_batch_equals_one_clip_at_a_time(omni, clips)
    with torch.no_grad():
        # Why short clips get their own call: in one stock call with a longer clip, a 0.3 s clip's
        # chunk is padded to 100 frames and its last convolution outputs change.
        mels = [qwen3_mel(omni.feature_extractor, clip) for clip in clips[:2]]
        lengths = torch.tensor([m.shape[-1] for m in mels])
        mixed = omni.model.audio_tower(torch.cat(mels, dim=-1), feature_lens=lengths).last_hidden_state
        assert (mixed[: batched[0].shape[0]] - batched[0]).abs().max().item() > 1e-3
        assert torch.equal(torch.cat(encode_qwen3_audio(omni.model.audio_tower, mels[1:])), batched[1])


def test_prompt_is_the_processor_expansion(omni) -> None:
    clip = tone(440.0, 1.3)
    omni_checks.check_prompt_is_the_processor_expansion(omni, clip, processor_inputs(omni, clip))
    assert omni.prompt == QWEN3_DEFAULT_PROMPT and "<|audio_start|><|audio_pad|><|audio_end|>" in QWEN3_DEFAULT_PROMPT


def test_audio_only_rotary_positions_are_plain(omni_dir: Path, omni) -> None:
    omni_checks.check_audio_only_rotary_positions_are_plain(
        stock_thinker(omni_dir), processor_inputs(omni, tone(440.0, 2.0))
    )


@pytest.mark.parametrize("shape", list(SHAPES))
def test_heads_match_the_stock_full_thinker_forward(omni_dirs: dict[str, Path], shape: str) -> None:
    backbone, thinker = load_backbone(omni_dirs[shape]), stock_thinker(omni_dirs[shape])
    dims = SHAPES[shape]
    omni_checks.check_heads_match_the_stock_thinker(
        backbone, thinker, processor_inputs, dims["n_heads"], dims["head_dim"]
    )


def test_early_exit_equals_the_full_run(omni) -> None:
    checks.check_early_exit_exact(omni, [tone(300.0, 0.8), tone(2000.0, 1.2, seed=9)])


def test_early_exit_stops_the_forward(omni) -> None:
    checks.check_early_exit_stops(omni, tone(440.0, 0.5))


def test_truncated_load_builds_fewer_layers_and_gives_the_same_heads(omni, omni_dir: Path) -> None:
    checks.check_truncated_load(omni, omni_dir, tone(700.0, 1.0))


def test_a_thinker_saved_alone_gives_the_same_heads(omni, tmp_path: Path) -> None:
    alone = make_tiny_qwen3_omni_moe(tmp_path / "thinker", thinker_only=True)
    assert json.loads((alone / "config.json").read_text())["model_type"] == "qwen3_omni_moe_thinker"
    clips = [tone(440.0, 1.0), tone(990.0, 0.6, seed=3)]
    assert torch.equal(load_backbone(alone).head_activations(clips), omni.head_activations(clips))


def test_fingerprint_tracks_weights_prompt_and_processor(omni, omni_dir: Path, tmp_path: Path) -> None:
    other = make_tiny_qwen3_omni_moe(tmp_path / "seed1", seed=1)
    prompt = QWEN3_DEFAULT_PROMPT.replace("<|audio_end|>", "<|audio_end|>Listen.")
    checks.check_fingerprint(omni, omni_dir, other, tmp_path, prompt, prompt_components=("prompt", "prompt_ids"))


def test_nf4_quantises_attention_but_not_the_experts(omni, omni_dir: Path) -> None:
    q = checks.check_nf4_on_cpu(omni, omni_dir, tone(440.0, 1.0))
    moe = q.text_layers[0].mlp
    # The experts are fused 3-D parameters, not nn.Linear: bitsandbytes leaves them in the compute dtype.
    assert moe.experts.gate_up_proj.dim() == 3 and moe.experts.gate_up_proj.dtype == torch.float32
    assert not any(type(m).__name__ == "Linear4bit" for m in moe.modules())


def test_missing_weights_name_the_folder(omni_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    checks.check_missing_weights_named(omni_dir, tmp_path)
    partial = tmp_path / "no-audio-tower"
    partial.mkdir()
    for f in omni_dir.iterdir():
        if f.suffix != ".safetensors":
            (partial / f.name).symlink_to(f)
    state = load_file(str(omni_dir / "model.safetensors"))
    save_file({k: v for k, v in state.items() if ".audio_tower." not in k}, str(partial / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=rf"{partial}: the weights lack \d+ thinker tensors \(e.g. audio_tower"):
        load_backbone(partial)


def test_too_short_clip_is_an_error(omni) -> None:
    with pytest.raises(AudioError, match="200 samples is too short"):
        omni.head_activations([np.zeros(200, dtype=np.float32)])


def test_calm_fit_and_eval_on_a_tiny_model_made_by_the_command(tone_sets, tmp_path: Path) -> None:
    command = ["make-tiny-model", str(tmp_path / "m"), "--family", "qwen3_omni_moe"]
    made = subprocess.run(
        [sys.executable, "-m", "calm_core.testing", *command],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    model_dir = Path(json.loads(made.stdout)["model_dir"])
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "qwen3_omni_moe"
    result = checks.check_calm_fit(model_dir, tone_sets, tmp_path)
    assert result["calm"]["accuracy"] >= 0.5  # chance is 0.25
