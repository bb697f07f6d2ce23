"""Audio Flamingo 3 adapter (NVIDIA): Qwen2-Audio's encoder shape (Whisper layers, average pool) with a
two-layer projector into a Qwen2 language model, so it reuses Qwen2-Audio's exact valid-frame encoder."""

from __future__ import annotations

from typing import Any

from .decoder import split_prompt
from .qwen2_audio import Qwen2AudioBackbone

ADAPTER_VERSION = "audioflamingo3/1"
AUDIO_PLACEHOLDER = "<sound>"
# What the released processor's chat template renders for one user turn holding only the audio.
DEFAULT_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<sound><|im_end|>\n<|im_start|>assistant\n"
)
AUDIO_ONLY_TURN = [{"role": "user", "content": [{"type": "audio"}]}]


class AudioFlamingo3Backbone(Qwen2AudioBackbone):
    """Head activations of Audio Flamingo 3's Qwen2 decoder at the last prompt token.

    The stock encoder runs 30 s windows with padded frames masked out of attention; for the clip's
    first 30 s that is the same computation as Qwen2-Audio's, so its valid-frame encoder (one clip at a
    time or batched) is exact here too and is inherited as is.
    """

    name = "audioflamingo3"
    title = "Audio Flamingo 3"
    adapter_version = ADAPTER_VERSION
    default_prompt = DEFAULT_PROMPT

    def model_class(self) -> Any:
        from transformers import AudioFlamingo3Model

        return AudioFlamingo3Model

    def template_prompt(self) -> str:
        if getattr(self.processor, "chat_template", None) is None:
            return DEFAULT_PROMPT
        prompt: str = self.processor.apply_chat_template(AUDIO_ONLY_TURN, tokenize=False, add_generation_prompt=True)
        return prompt

    def prompt_ids(self, prompt: str) -> tuple[list[int], list[int]]:
        return split_prompt(self.tokenizer, prompt, AUDIO_PLACEHOLDER)
