"""The part every "audio encoder + projector + decoder LM" family shares: a fixed prompt with the audio's
tokens spliced in, run through the decoder until the deepest needed layer, read at the last prompt token.

An adapter supplies the audio tokens (its own encoder and projector) and the decoder; this module owns
the prompt, the batch layout and the head read-out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .base import capture_heads


def split_prompt(tokenizer: Any, prompt: str, placeholder: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the one audio placeholder in a prompt; ValueError otherwise."""
    if prompt.count(placeholder) != 1:
        raise ValueError(f"prompt must contain {placeholder} exactly once, got: {prompt!r}")
    head, tail = prompt.split(placeholder)
    return (
        tokenizer(head, add_special_tokens=False)["input_ids"],
        tokenizer(tail, add_special_tokens=False)["input_ids"],
    )


def o_proj(layer: Any) -> torch.nn.Module:
    """The attention output projection of a Llama-style decoder layer: its input is every head's output."""
    projection: torch.nn.Module = layer.self_attn.o_proj
    return projection


@dataclass
class PromptDecoder:
    """[prefix][audio tokens][suffix] through a decoder-only language model; heads at the last token."""

    language_model: Any  # a module with .layers, .get_input_embeddings(), forward(inputs_embeds=, attention_mask=)
    prefix_ids: list[int]
    suffix_ids: list[int]
    audio_token_id: int  # the placeholder id repeated once per audio token (embedded, then overwritten)
    pad_id: int
    device: torch.device
    projection: Callable[[Any], torch.nn.Module] = o_proj

    @property
    def layers(self) -> Any:
        return self.language_model.layers

    def embeddings(self, audio: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded prompt embeddings with each clip's audio tokens spliced in: (B, T, hidden),
        the attention mask (B, T) and each row's last-token index (B,)."""
        embed = self.language_model.get_input_embeddings()
        start = len(self.prefix_ids)
        rows = []
        for tokens in audio:  # (n_tokens, hidden)
            ids = torch.tensor(self.prefix_ids + [self.audio_token_id] * tokens.shape[0] + self.suffix_ids)
            e = embed(ids.to(self.device))
            rows.append(torch.cat([e[:start], tokens.to(e.dtype), e[start + tokens.shape[0] :]]))
        lengths = torch.tensor([r.shape[0] for r in rows])
        width = int(lengths.max())
        pad = embed(torch.tensor([self.pad_id], device=self.device))[0]
        batch = torch.stack([torch.cat([r, pad.expand(width - r.shape[0], -1)]) for r in rows])
        mask = (torch.arange(width)[None] < lengths[:, None]).long().to(self.device)
        # Right padding keeps every clip's positions 0..n-1, as if it ran alone.
        return batch, mask, lengths - 1

    def heads(self, audio: Sequence[torch.Tensor], exit_layer: int) -> torch.Tensor:
        """Every head's output at each clip's last prompt token, layers 0..exit_layer: (B, L, H * D)."""
        embeds, mask, last = self.embeddings(audio)
        return torch.stack(self.language_heads(embeds, mask, last, exit_layer), dim=1)

    def language_heads(
        self, embeds: torch.Tensor, mask: torch.Tensor, last: torch.Tensor, exit_layer: int
    ) -> list[torch.Tensor]:
        """Per layer 0..exit_layer, every head's output at each row's last token: [(B, H * D)]."""
        rows = torch.arange(embeds.shape[0])
        return capture_heads(
            lambda: self.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False),
            [self.projection(self.layers[i]) for i in range(exit_layer + 1)],
            lambda x: x[rows, last.to(x.device)],  # the projection's input: (B, T, H * D)
        )
