"""A tiny random-weight Granite Speech written through the real save_pretrained path: conformer encoder,
Q-Former projector, Granite LM with its multipliers, and a peft LoRA adapter beside the weights, as
ibm-granite/granite-speech-3.3 ships it (adapter_config.json + adapter_model.safetensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .common import random_model
from .qwen2_audio import tiny_tokenizer

ROLE_TOKENS = ["<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"]
AUDIO_TOKEN = "<|audio|>"
# Granite 3.3's chat format: a system turn (a default one naming today's date when none is given),
# then <|start_of_role|>role<|end_of_role|>content<|end_of_text|> per turn.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}"
    "{%- set system_message = \"Knowledge Cutoff Date: April 2024.\\nToday's Date: \" + strftime_now('%B %d, %Y')"
    ' + ".\\nYou are Granite, developed by IBM." %}{%- set loop_messages = messages %}{%- endif %}'
    "{{- '<|start_of_role|>system<|end_of_role|>' + system_message + '<|end_of_text|>\\n' }}"
    "{%- for message in loop_messages %}"
    "{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}"
)
N_MELS, PROJECTOR_WINDOW, PROJECTOR_DOWNSAMPLE = 80, 15, 5
# What GraniteSpeechFeatureExtractor saves (its log-mel and projector settings, the released values).
FEATURE_EXTRACTOR = {
    "feature_extractor_type": "GraniteSpeechFeatureExtractor",
    "sampling_rate": 16_000,
    "n_fft": 512,
    "win_length": 400,
    "hop_length": 160,
    "n_mels": N_MELS,
    "projector_window_size": PROJECTOR_WINDOW,
    "projector_downsample_rate": PROJECTOR_DOWNSAMPLE,
    "padding_value": 0.0,
}


def make_tiny_granite_speech(
    out_dir: str | Path,
    *,
    n_layers: int = 4,
    hidden: int = 64,
    n_heads: int = 4,
    audio_layers: int = 2,
    audio_dim: int = 32,
    seed: int = 0,
    lora: bool = True,
    lora_seed: int | None = None,
) -> Path:
    """Write a random-weight Granite Speech (model, LoRA adapter, tokenizer, processor settings) to out_dir.

    The LoRA wraps q_proj, k_proj, v_proj and o_proj of every decoder layer with random A and B (peft's
    default B = 0 would make it a no-op); lora_seed draws other LoRA weights over the same model.
    The processor is written as files: GraniteSpeechFeatureExtractor cannot be built without torchaudio.
    """
    from transformers import GraniteSpeechConfig, GraniteSpeechForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer()
    tok.add_tokens([*ROLE_TOKENS, AUDIO_TOKEN], special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE
    config = GraniteSpeechConfig(
        text_config={
            "model_type": "granite",
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_hidden_layers": n_layers,
            "num_attention_heads": n_heads,
            "num_key_value_heads": max(1, n_heads // 2),
            "max_position_embeddings": 2048,
            "pad_token_id": tok.pad_token_id,
            # granite-3.3-2b's multipliers, so that the tiny model exercises them
            "embedding_multiplier": 12.0,
            "residual_multiplier": 0.22,
            "attention_multiplier": 0.015625,
            "logits_scaling": 8.0,
        },
        encoder_config={
            "input_dim": 2 * N_MELS,  # two log-mel frames stacked per encoder frame
            "num_layers": audio_layers,
            "hidden_dim": audio_dim,
            "num_heads": 4,
            "output_dim": 42,
            "context_size": 50,  # 1 s blocks (the released 200 is 4 s): more block edges in short clips
            "max_pos_emb": 64,
        },
        projector_config={
            "model_type": "blip_2_qformer",
            "hidden_size": audio_dim,
            "encoder_hidden_size": audio_dim,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": audio_dim * 2,
            "cross_attention_frequency": 1,
        },
        audio_token_index=tok.convert_tokens_to_ids(AUDIO_TOKEN),
        has_lora_adapter=lora,
        window_size=PROJECTOR_WINDOW,
        downsample_rate=PROJECTOR_DOWNSAMPLE,
    )
    model = random_model(GraniteSpeechForConditionalGeneration, config, seed)
    model.save_pretrained(out)
    if lora:
        save_lora(add_random_lora(model, seed if lora_seed is None else lora_seed), model, out)
    tok.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(
        json.dumps({**FEATURE_EXTRACTOR, "processor_class": "GraniteSpeechProcessor"}, indent=2)
    )
    (out / "processor_config.json").write_text(
        json.dumps({"processor_class": "GraniteSpeechProcessor", "audio_token": AUDIO_TOKEN}, indent=2)
    )
    return out


def save_lora(config: Any, model: torch.nn.Module, out: Path) -> None:
    """The adapter alone in peft's format, as the released checkpoints ship it: adapter_config.json and
    adapter_model.safetensors with names under base_model.model. (written with peft's own API)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    config.save_pretrained(str(out))
    state = get_peft_model_state_dict(model, adapter_name="default")
    save_file(
        {f"base_model.model.{k}": v.contiguous() for k, v in state.items()},
        str(out / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )


def add_random_lora(model: torch.nn.Module, seed: int) -> Any:
    """A peft LoRA on the decoder's attention projections, with random A and B; its LoraConfig."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.1,  # dropout is off in eval mode, as at inference
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    inject_adapter_in_model(config, model, adapter_name="default")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) / p.shape[-1] ** 0.5)
    return config
