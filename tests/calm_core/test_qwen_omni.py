"""The Qwen2.5-Omni thinker adapter against the stock transformers forward, on tiny random-weight models."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from calm_core.backbones import LoadOptions, load_backbone
from calm_core.backbones.qwen_omni import DEFAULT_PROMPT, omni_mel
from calm_core.errors import AudioError, ModelLoadError
from calm_core.testing import make_tiny_qwen2_5_omni, tone

from . import audio_lm_checks as checks
from . import qwen_omni_checks as omni_checks

# Two shapes that differ where the 3B and 7B configs do: head count, head_dim and key/value grouping.
SHAPES = {
    "4 heads of 16, 2 kv": {"hidden": 64, "n_heads": 4, "n_kv_heads": 2},
    "4 heads of 24, 1 kv": {"hidden": 96, "n_heads": 4, "n_kv_heads": 1},
}


@pytest.fixture(scope="module")
def omni_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("omni")
    return {name: make_tiny_qwen2_5_omni(root / f"shape{i}", **shape) for i, (name, shape) in enumerate(SHAPES.items())}


@pytest.fixture(scope="module")
def omni_dir(omni_dirs: dict[str, Path]) -> Path:
    return omni_dirs["4 heads of 16, 2 kv"]


@pytest.fixture(scope="module")
def omni(omni_dir: Path):
    return load_backbone(omni_dir)


def stock_thinker(model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    return omni_checks.stock_thinker(model_dir, Qwen2_5OmniThinkerForConditionalGeneration)


def processor_inputs(backbone, clip: np.ndarray) -> dict[str, torch.Tensor]:
    """The thinker's inputs as Qwen2_5OmniProcessor builds them for the prompt and one clip.

    The processor object cannot be built here (its video processor needs torchvision, which has no CPU
    wheel for this torch on PyPI), so its own audio code runs on just the parts it uses: 30 s padded
    features with feature_attention_mask, and <|AUDIO|> expanded to the encoder's token count.
    """
    from transformers import Qwen2_5OmniProcessor

    proc = SimpleNamespace(feature_extractor=backbone.feature_extractor, audio_token="<|AUDIO|>")
    proc.replace_audio_token = functools.partial(Qwen2_5OmniProcessor.replace_audio_token, proc)
    audio, [replacement] = Qwen2_5OmniProcessor._process_audio(
        proc, [clip], sampling_rate=16000, return_attention_mask=True, return_tensors="pt"
    )
    text = backbone.tokenizer([backbone.prompt.replace("<|AUDIO|>", replacement)], return_tensors="pt")
    return omni_checks.thinker_inputs(text, audio)


def test_only_the_thinker_without_lm_head_is_loaded(omni, omni_dir: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(omni_dir / "model.safetensors"), "pt") as f:
        on_disk = {k.split(".")[0] for k in f.keys()} | {k for k in f.keys() if "lm_head" in k}
    assert {"thinker", "talker", "token2wav", "thinker.lm_head.weight"} <= on_disk  # the released layout
    assert json.loads((omni_dir / "config.json").read_text())["model_type"] == "qwen2_5_omni"
    names = [name for name, _ in omni.model.named_parameters()]
    assert type(omni.model).__name__ == "Qwen2_5OmniThinkerModel" and not hasattr(omni.model, "lm_head")
    assert {n.split(".")[0] for n in names} == {"audio_tower", "language_model"}  # no vision, talker, lm_head


@pytest.mark.parametrize("seconds", [0.1, 1.0, 2.01, 4.37, 29.99, 31.0])
def test_audio_encoder_matches_the_stock_padded_masked_run(omni, seconds: float) -> None:
    clip = tone(523.0, seconds, seed=int(seconds * 100))
    inputs = processor_inputs(omni, clip)
    omni_checks.check_encoder_matches_stock(omni, clip, inputs)
    assert omni_mel(omni.feature_extractor, clip).shape[-1] == int(inputs["feature_attention_mask"].sum())


def test_audio_encoder_batch_equals_one_clip_at_a_time(omni) -> None:
    clips = [tone(440.0, 0.3), tone(880.0, 2.6, seed=1), tone(1200.0, 1.1, seed=2)]
    omni_checks.check_encoder_batch_equals_one_clip_at_a_time(omni, clips)


def test_prompt_is_the_processor_expansion(omni) -> None:
    clip = tone(440.0, 1.3)
    omni_checks.check_prompt_is_the_processor_expansion(omni, clip, processor_inputs(omni, clip))
    assert omni.prompt == DEFAULT_PROMPT and "<|audio_bos|><|AUDIO|><|audio_eos|>" in DEFAULT_PROMPT


def test_audio_only_rotary_positions_are_plain(omni_dir: Path, omni) -> None:
    omni_checks.check_audio_only_rotary_positions_are_plain(
        stock_thinker(omni_dir), processor_inputs(omni, tone(440.0, 2.0))
    )


@pytest.mark.parametrize("shape", list(SHAPES))
def test_heads_match_the_stock_full_thinker_forward(omni_dirs: dict[str, Path], shape: str) -> None:
    backbone, thinker = load_backbone(omni_dirs[shape]), stock_thinker(omni_dirs[shape])
    dims = SHAPES[shape]
    omni_checks.check_heads_match_the_stock_thinker(
        backbone, thinker, processor_inputs, dims["n_heads"], dims["hidden"] // dims["n_heads"]
    )


def test_early_exit_equals_the_full_run(omni) -> None:
    checks.check_early_exit_exact(omni, [tone(300.0, 0.8), tone(2000.0, 1.2, seed=9)])


def test_early_exit_stops_the_forward(omni) -> None:
    checks.check_early_exit_stops(omni, tone(440.0, 0.5))


def test_truncated_load_builds_fewer_layers_and_gives_the_same_heads(omni, omni_dir: Path) -> None:
    small = load_backbone(omni_dir, LoadOptions(load_layers=2))
    assert small.loaded_layers == 2 and len(small.text_layers) == 2
    assert small.layout == omni.layout and small.fingerprint.digest == omni.fingerprint.digest
    assert sum(p.numel() for p in small.model.parameters()) < sum(p.numel() for p in omni.model.parameters())
    clips = [tone(700.0, 1.0)]
    assert torch.equal(small.head_activations(clips), omni.head_activations(clips, exit_layer=1))
    with pytest.raises(ValueError, match="outside the 2 loaded layers"):
        small.head_activations(clips, exit_layer=2)


def test_a_thinker_saved_alone_gives_the_same_heads(omni, tmp_path: Path) -> None:
    alone = make_tiny_qwen2_5_omni(tmp_path / "thinker", thinker_only=True)
    assert json.loads((alone / "config.json").read_text())["model_type"] == "qwen2_5_omni_thinker"
    clips = [tone(440.0, 1.0), tone(990.0, 0.6, seed=3)]
    assert torch.equal(load_backbone(alone).head_activations(clips), omni.head_activations(clips))


def test_fingerprint_tracks_weights_prompt_and_processor(omni, omni_dir: Path, tmp_path: Path) -> None:
    other = load_backbone(make_tiny_qwen2_5_omni(tmp_path / "seed1", seed=1))
    assert omni.fingerprint.differences(other.fingerprint) == ["weights"]
    prompt = DEFAULT_PROMPT.replace("<|audio_eos|>", "<|audio_eos|>Listen.")
    assert omni.fingerprint.differences(load_backbone(omni_dir, LoadOptions(prompt=prompt)).fingerprint) == [
        "prompt",
        "prompt_ids",
    ]
    changed = tmp_path / "processor"
    changed.mkdir()
    for f in omni_dir.iterdir():
        (changed / f.name).symlink_to(f)
    (changed / "preprocessor_config.json").unlink()
    fe = json.loads((omni_dir / "preprocessor_config.json").read_text())
    (changed / "preprocessor_config.json").write_text(json.dumps({**fe, "n_fft": 512}))
    assert omni.fingerprint.differences(load_backbone(changed).fingerprint) == ["processor"]


def test_nf4_quantised_load_runs_on_cpu(omni, omni_dir: Path) -> None:
    pytest.importorskip("bitsandbytes")
    q = load_backbone(omni_dir, LoadOptions(dtype="nf4"))
    assert type(q.text_layers[0].self_attn.o_proj).__name__ == "Linear4bit"
    assert type(q.model.audio_tower.layers[0].fc1).__name__ == "Linear"  # the audio encoder is not quantised
    assert q.fingerprint.differences(omni.fingerprint) == ["precision"]
    clips = [tone(440.0, 1.0)]
    heads_q, heads_f = q.head_activations(clips), omni.head_activations(clips)
    cos = torch.nn.functional.cosine_similarity(heads_q.flatten(), heads_f.flatten(), dim=0)
    assert cos > 0.9


def test_missing_weights_name_the_folder(omni_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "no-weights"
    bare.mkdir()
    for f in omni_dir.iterdir():
        if f.suffix != ".safetensors":
            (bare / f.name).symlink_to(f)
    with pytest.raises(ModelLoadError, match=f"{bare}: could not load the Qwen2.5-Omni thinker"):
        load_backbone(bare)
    partial = tmp_path / "no-audio-tower"
    partial.mkdir()
    for f in bare.iterdir():
        (partial / f.name).symlink_to(f.resolve())
    state = load_file(str(omni_dir / "model.safetensors"))
    save_file({k: v for k, v in state.items() if ".audio_tower." not in k}, str(partial / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=rf"{partial}: the weights lack \d+ thinker tensors \(e.g. audio_tower"):
        load_backbone(partial)


def test_too_short_clip_is_an_error(omni) -> None:
    with pytest.raises(AudioError, match="too short"):
        omni.head_activations([np.zeros(200, dtype=np.float32)])


def test_calm_fit_and_eval_on_a_tiny_model_made_by_the_command(tone_sets, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=600, check=False
        )
        assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
        return proc.stdout

    made = json.loads(run("calm_core.testing", "make-tiny-model", str(tmp_path / "m"), "--family", "qwen2_5_omni"))
    model = made["model_dir"]
    out = tmp_path / "tones.safetensors"
    fit = json.loads(
        run("calm_core.cli", "-q", "fit", "--model", model, "--support", str(tone_sets["support"]), "--out", str(out))
    )
    assert out.is_file() and fit["support"] == 20 and fit["n_layers"] == 4
    result = json.loads(
        run("calm_core.cli", "-q", "eval", "--classifier", str(out), "--data", str(tone_sets["test"]), "--json")
    )
    assert result["n"] == 20 and result["calm"]["accuracy"] >= 0.5  # chance is 0.25
