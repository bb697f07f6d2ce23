"""A tiny random-weight Audio Flamingo 3 written through the real save_pretrained path."""

from __future__ import annotations

from pathlib import Path

from .common import random_model
from .qwen2_audio import tiny_tokenizer

# Renders like the released checkpoint's processor template: a default system turn, then each turn
# with <sound> first when it holds audio, then its text.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% if m['content'] | selectattr('type', 'equalto', 'audio') | list %}<sound>{% endif %}"
    "{% for c in m['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_audioflamingo3(
    out_dir: str | Path,
    *,
    n_layers: int = 4,
    hidden: int = 64,
    n_heads: int = 4,
    audio_layers: int = 2,
    audio_dim: int = 64,
    seed: int = 0,
) -> Path:
    """Write a random-weight Audio Flamingo 3 (model, tokenizer with <sound>, processor) to out_dir."""
    from transformers import (
        AudioFlamingo3Config,
        AudioFlamingo3ForConditionalGeneration,
        AudioFlamingo3Processor,
        WhisperFeatureExtractor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    tok.add_tokens(["<sound>"], special_tokens=True)
    processor = AudioFlamingo3Processor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128, return_attention_mask=True),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
    )
    config = AudioFlamingo3Config(
        audio_config={
            "hidden_size": audio_dim,
            "num_hidden_layers": audio_layers,
            "num_attention_heads": 4,
            "intermediate_size": audio_dim * 2,
            "num_mel_bins": 128,
            "max_source_positions": 1500,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": n_layers,
            "num_attention_heads": n_heads,
            "num_key_value_heads": max(1, n_heads // 2),
            "max_position_embeddings": 2048,
            "pad_token_id": tok.pad_token_id,
        },
        audio_token_id=tok.convert_tokens_to_ids("<sound>"),
    )
    model = random_model(AudioFlamingo3ForConditionalGeneration, config, seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
