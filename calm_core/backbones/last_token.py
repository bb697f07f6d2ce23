"""Head outputs at one position: each read layer's attention recomputed for the last prompt token only.

CALM reads every head's output at the last token and nothing else. On a Llama-style decoder layer
that output is softmax(q k^T * scaling) v for the last token's query q against the keys and values
of all tokens. Reading it that way at every layer (keys and values taken from the KV cache the
stock forward fills) makes the exit layer cheap: it needs its keys and values for all positions
but its query for one, and skips the rest of the layer. Read-outs are computed the same way at
every layer, so early exit stays bit for bit equal to the full forward; against the stock
o_proj input they agree within float rounding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# Decoder layers whose forward is exactly: input_layernorm -> self_attn with q_proj / k_proj /
# v_proj (optional per-head q_norm / k_norm), rotate-half rotary embeddings from the model's
# position_embeddings, a KV cache update, softmax(q k^T * scaling) v, o_proj. Each was read in
# transformers 5.23. Qwen2.5-Omni's multimodal rotary positions are recomposed by its rotary
# module, so its layers see ordinary (B, T, D) cos / sin. Layers not listed (Gemma 3n's AltUp,
# Phi-4's fused qkv_proj) and sliding-window layers are read at their o_proj input instead.
LLAMA_STYLE_LAYERS = frozenset(
    {
        "GraniteDecoderLayer",
        "LlamaDecoderLayer",
        "MistralDecoderLayer",
        "Qwen2DecoderLayer",
        "Qwen2_5OmniDecoderLayer",
        "Qwen3DecoderLayer",
        "Qwen3OmniMoeThinkerTextDecoderLayer",
    }
)
_ATTENTION_ATTRIBUTES = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "layer_idx")


def supports_last_token(layer: Any) -> bool:
    """Whether this module reproduces the decoder layer's attention (else read its o_proj input)."""
    attn = getattr(layer, "self_attn", None)
    return (
        type(layer).__name__ in LLAMA_STYLE_LAYERS
        and hasattr(layer, "input_layernorm")
        and attn is not None
        and all(hasattr(attn, a) for a in _ATTENTION_ATTRIBUTES)
        and getattr(attn, "sliding_window", None) is None
        and hasattr(attn, "q_norm") == hasattr(attn, "k_norm")
    )


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding, the same operations as transformers' apply_rotary_pos_emb.
    x: (B, heads, T, D); cos, sin: (B, T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos.unsqueeze(1)) + (rotated * sin.unsqueeze(1))


def cache_keys_values(
    layer: Any, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor], cache: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the stock layer's attention puts in the cache: rotated keys and values of every position,
    appended to the cached ones and returned whole: (B, KV, S, D) each."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    shape = (*x.shape[:-1], -1, attn.head_dim)
    k = attn.k_proj(x).view(shape)
    if hasattr(attn, "k_norm"):
        k = attn.k_norm(k)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    cos, sin = position_embeddings
    k = _rotate(k.transpose(1, 2), cos, sin)
    keys, values = cache.update(k, v, attn.layer_idx)
    return keys, values


def last_token_heads(
    layer: Any,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    keys: torch.Tensor,
    values: torch.Tensor,
    last: torch.Tensor,
) -> torch.Tensor:
    """Every head's output (the o_proj input) at position last[b] of each row: (B, H * D).

    hidden: the layer's input (B, T, hidden); keys / values: the layer's whole cache after its
    update, (B, KV, S, D), whose last T entries are this forward's tokens. Rows are right-padded,
    so the last token attends to every cached key and to its own row's positions 0..last[b].
    """
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    rows = torch.arange(batch, device=hidden.device)
    x = layer.input_layernorm(hidden[rows, last][:, None])  # (B, 1, hidden)
    q = attn.q_proj(x).view(batch, 1, -1, attn.head_dim)
    if hasattr(attn, "q_norm"):  # Qwen3-style per-head norm, before the rotation
        q = attn.q_norm(q)
    cos, sin = (t.expand(batch, -1, -1)[rows, last][:, None] for t in position_embeddings)  # (B, 1, D)
    q = _rotate(q.transpose(1, 2), cos, sin)  # (B, H, 1, D)
    n_keys = keys.shape[2] - length + last + 1  # cached keys, then the row's own tokens up to last
    mask = torch.arange(keys.shape[2], device=hidden.device)[None] < n_keys[:, None]  # (B, S)
    out = F.scaled_dot_product_attention(
        q, keys, values, attn_mask=mask[:, None, None], scale=attn.scaling, enable_gqa=keys.shape[1] != q.shape[1]
    )
    return out.transpose(1, 2).reshape(batch, -1)
