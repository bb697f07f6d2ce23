"""Whisper adapter: encoder heads (mean over the clip's frames) then decoder heads at the last prompt token.

Heads are numbered as one stack: layers 0..E-1 are the encoder's self-attention, layers
E..E+D-1 the decoder's self-attention at the last token of a fixed decoder prompt
(`<|startoftranscript|><|notimestamps|>` by default). Early exit therefore stops inside the
encoder when every selected head lives there, and never runs the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AudioError, ModelLoadError
from .audio_lm import quiet_transformers
from .base import HeadLayout, LoadOptions, capture_heads, feature_fingerprint, precision_kwargs, resolve_exit_layer
from .valid_frames import mel_valid_frames

ADAPTER_VERSION = "whisper/1"


class WhisperBackbone:
    name = "whisper"

    def __init__(self, model_dir: Path, options: LoadOptions = LoadOptions()):
        from transformers import AutoConfig, AutoTokenizer, WhisperFeatureExtractor, WhisperModel

        self.model_dir = Path(model_dir)
        self.device = torch.device(options.device)
        precision = options.dtype or ("fp16" if self.device.type == "cuda" else "fp32")
        config = AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
        self.n_enc, self.n_dec = config.encoder_layers, config.decoder_layers
        if config.encoder_attention_heads != config.decoder_attention_heads:
            raise ModelLoadError(f"{self.model_dir}: encoder and decoder head counts differ; not supported")
        self.layout = HeadLayout(
            n_layers=self.n_enc + self.n_dec,
            n_heads=config.encoder_attention_heads,
            head_dim=config.d_model // config.encoder_attention_heads,
        )
        self.loaded_layers = self.layout.n_layers
        if options.load_layers is not None:
            self.loaded_layers = max(1, min(options.load_layers, self.layout.n_layers))
            config.decoder_layers = max(0, self.loaded_layers - self.n_enc)
            config.encoder_layers = min(self.n_enc, self.loaded_layers)
        try:
            with quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
                self.feature_extractor = WhisperFeatureExtractor.from_pretrained(self.model_dir, local_files_only=True)
                # NF4 quantises every linear layer; convolutions, embeddings and norms stay in the
                # compute dtype. device_map places the weights once (a 4-bit model cannot be moved).
                self.model = WhisperModel.from_pretrained(
                    self.model_dir,
                    config=config,
                    local_files_only=True,
                    device_map={"": self.device},
                    **precision_kwargs(precision, self.device),
                ).eval()
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{self.model_dir}: could not load Whisper ({e})") from e
        english_only = config.vocab_size == 51864
        default = (
            "<|startoftranscript|><|notimestamps|>"
            if english_only
            else ("<|startoftranscript|><|en|><|transcribe|><|notimestamps|>")
        )
        self.prompt = options.prompt or default
        self.prompt_ids = self.tokenizer(self.prompt, add_special_tokens=False)["input_ids"]
        if not self.prompt_ids:
            raise ValueError(f"decoder prompt {self.prompt!r} encodes to no tokens")
        full = AutoConfig.from_pretrained(self.model_dir, local_files_only=True).to_dict()
        self.fingerprint = feature_fingerprint(
            ADAPTER_VERSION, full, self.model_dir, precision, self.prompt, self.feature_extractor, self.layout,
            encoder_frames="valid",
        )  # fmt: skip

    def _encode(self, mels: torch.Tensor, n_valid: int, exit_layer: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Run the encoder on clips of one length (their own frames only): per-layer mean head
        outputs [(B, H * D)] up to exit_layer, and the encoder output (if the exit is past it).

        Unlike Qwen2-Audio, stock Whisper attends to its 30 s of padding (it has no mask), so
        valid-frame features are not the stock ones; they are what the clip itself says, at a
        fraction of the cost, and are used the same way for fitting and inference.
        """
        enc = self.model.encoder
        conv_len = (n_valid - 1) // 2 + 1
        x = mels.to(device=self.device, dtype=enc.conv1.weight.dtype)
        x = F.gelu(enc.conv2(F.gelu(enc.conv1(x))))[:, :, :conv_len]
        h = x.permute(0, 2, 1) + enc.embed_positions.weight[:conv_len]
        n_layers = min(exit_layer + 1, len(enc.layers))
        state = {"h": h}

        def run() -> None:
            for layer in enc.layers[:n_layers]:
                state["h"] = layer(state["h"], None)

        heads = capture_heads(
            run,
            [layer.self_attn.out_proj for layer in enc.layers[:n_layers]],
            lambda t: t.mean(1),  # (B, T, H * D) -> mean over the clip's frames
            stop=exit_layer < len(enc.layers),
        )
        return heads, enc.layer_norm(state["h"])

    @torch.inference_mode()
    def head_activations(self, clips: Sequence[np.ndarray], exit_layer: int | None = None) -> torch.Tensor:
        exit_layer = resolve_exit_layer(exit_layer, self.loaded_layers)
        out = torch.empty(len(clips), exit_layer + 1, self.layout.n_heads * self.layout.head_dim)
        mels = []
        for clip in clips:
            mel, n_valid = mel_valid_frames(self.feature_extractor, clip)
            if n_valid < 3:
                raise AudioError(f"clip of {clip.size} samples is too short for the audio encoder")
            mels.append((mel, n_valid))
        # Clips of the same length run as one batch: no padding, so batching changes nothing.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (mel, n_valid) in enumerate(mels):
            groups.setdefault((n_valid, mel.shape[-1]), []).append(i)
        for (n_valid, _), idx in groups.items():
            heads, encoded = self._encode(torch.stack([mels[i][0] for i in idx]), n_valid, exit_layer)
            if exit_layer >= self.n_enc:
                heads += self._decode(encoded, exit_layer - self.n_enc)
            out[idx] = torch.stack(heads, dim=1)
        return out.view(len(clips), exit_layer + 1, self.layout.n_heads, self.layout.head_dim)

    def _decode(self, encoded: torch.Tensor, exit_dec: int) -> list[torch.Tensor]:
        ids = torch.tensor([self.prompt_ids], device=self.device).expand(encoded.shape[0], -1)
        return capture_heads(
            lambda: self.model.decoder(input_ids=ids, encoder_hidden_states=encoded, use_cache=False),
            [layer.self_attn.out_proj for layer in self.model.decoder.layers[: exit_dec + 1]],
            lambda t: t[:, -1],
        )
