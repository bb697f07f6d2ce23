"""The part every "audio encoder + projector + decoder LM" family shares: a fixed prompt with the audio's
tokens spliced in, run through the decoder until the deepest needed layer, read at the last prompt token.

An adapter supplies the audio tokens (its own encoder and projector) and the decoder; this module owns
the prompt, the batch layout and the head read-out, and two ways to do less work for the same heads:
the prompt's text before the audio is run once per loaded model (its keys and values are cached), and
the exit layer computes its queries for the last token only (last_token.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .base import StopForward, capture_heads, run_hooked
from .last_token import cache_keys_values, last_token_heads, supports_last_token


def split_prompt(tokenizer: Any, prompt: str, placeholder: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the one audio placeholder in a prompt; ValueError otherwise."""
    if prompt.count(placeholder) != 1:
        raise ValueError(f"prompt must contain {placeholder} exactly once, got: {prompt!r}")
    head, tail = prompt.split(placeholder)
    return (
        tokenizer(head, add_special_tokens=False)["input_ids"],
        tokenizer(tail, add_special_tokens=False)["input_ids"],
    )


def cache_keyword(language_model: torch.nn.Module) -> str:
    """The name a decoder's forward takes its KV cache under: transformers 5.25 renamed
    past_key_values to cache (the old name is deprecated, to be removed in 5.40)."""
    parameters = inspect.signature(language_model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache a decoder's forward returned, under either name (see cache_keyword)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def o_proj(layer: Any) -> torch.nn.Module:
    """The attention output projection of a Llama-style decoder layer: its input is every head's output."""
    projection: torch.nn.Module = layer.self_attn.o_proj
    return projection


@dataclass
class PrefixStates:
    """Keys and values of the prompt's text before the audio, per decoder layer: [(1, KV, P, D)] each."""

    prefix_ids: tuple[int, ...]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


@dataclass
class PromptDecoder:
    """[prefix][audio tokens][suffix] through a decoder-only language model; heads at the last token.

    prefix_cache: run the prefix once (on first use, again if prefix_ids change) and start every
    batch from its keys and values. last_token_exit: read every layer's heads by recomputing its
    attention for the last token (last_token.py), so the exit layer needs its query for one token
    only; used where every layer read is one last_token.py recognises. Both give the plain forward's
    heads within float rounding, and early exit stays bit-identical to the full forward either way;
    heads(..., prefix_cache=False, last_token_exit=False) is the plain forward.
    """

    language_model: Any  # a module with .layers, .get_input_embeddings(), forward(inputs_embeds=, attention_mask=)
    prefix_ids: list[int]
    suffix_ids: list[int]
    audio_token_id: int  # the placeholder id repeated once per audio token (embedded, then overwritten)
    pad_id: int
    device: torch.device
    projection: Callable[[Any], torch.nn.Module] = o_proj
    prefix_cache: bool = True
    last_token_exit: bool = False  # measured: 0.66x at exit layer 0, 1.03x at full depth (performance.md)
    _prefix: PrefixStates | None = field(default=None, init=False, repr=False)

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

    def heads(
        self,
        audio: Sequence[torch.Tensor],
        exit_layer: int,
        *,
        prefix_cache: bool | None = None,
        last_token_exit: bool | None = None,
    ) -> torch.Tensor:
        """Every head's output at each clip's last prompt token, layers 0..exit_layer: (B, L, H * D).
        prefix_cache / last_token_exit override the decoder's settings for this call."""
        embeds, mask, last = self.embeddings(audio)
        out = self.language_heads(
            embeds, mask, last, exit_layer, prefix_cache=prefix_cache, last_token_exit=last_token_exit
        )
        return torch.stack(out, dim=1)

    def language_heads(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        last: torch.Tensor,
        exit_layer: int,
        *,
        prefix_cache: bool | None = None,
        last_token_exit: bool | None = None,
    ) -> list[torch.Tensor]:
        """Per layer 0..exit_layer, every head's output at each row's last token: [(B, H * D)].
        embeds start with the prefix_ids' embeddings, as embeddings() builds them."""
        use_cache = (self.prefix_cache if prefix_cache is None else prefix_cache) and bool(self.prefix_ids)
        use_last = (self.last_token_exit if last_token_exit is None else last_token_exit) and self.last_token_ready(
            exit_layer
        )
        cache = None
        if use_cache:
            cache = self.prefix_kv_cache(embeds.shape[0])
            n = len(self.prefix_ids)
            # The rest continues at position n (the model counts the cached tokens); the mask, as
            # embeddings() built it, already covers prefix + rest.
            embeds, last = embeds[:, n:], last - n
        elif use_last:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.language_model.config)  # the read-outs take keys from it

        def run() -> object:
            kwargs = {cache_keyword(self.language_model): cache}
            return self.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=cache is not None, **kwargs)

        if use_last:
            return self._last_token_read(run, cache, last, exit_layer)
        rows = torch.arange(embeds.shape[0])
        return capture_heads(
            run,
            [self.projection(self.layers[i]) for i in range(exit_layer + 1)],
            lambda x: x[rows, last.to(x.device)],  # the projection's input: (B, T, H * D)
        )

    def _last_token_read(
        self, run: Callable[[], object], cache: Any, last: torch.Tensor, exit_layer: int
    ) -> list[torch.Tensor]:
        """Heads of layers 0..exit_layer through last_token_heads: layers before the exit run stock
        and fill `cache` (the one run passes to the forward); the exit layer computes its keys and
        values and stops there."""
        heads: list[torch.Tensor] = []
        inputs: dict[int, tuple[torch.Tensor, dict[str, Any]]] = {}

        def layer_input(i: int) -> Callable[..., None]:
            def hook(_layer: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                inputs[i] = (args[0] if args else kwargs["hidden_states"], kwargs)
                if i == exit_layer:
                    read(i, *cache_keys_values(self.layers[i], inputs[i][0], kwargs["position_embeddings"], cache))
                    raise StopForward

            return hook

        def read(i: int, keys: torch.Tensor, values: torch.Tensor) -> None:
            hidden, kwargs = inputs.pop(i)
            out = last_token_heads(
                self.layers[i], hidden, kwargs["position_embeddings"], keys, values, last.to(hidden.device)
            )
            heads.append(out.float().cpu())

        def before_o_proj(i: int) -> Callable[..., None]:
            def hook(_module: torch.nn.Module, _args: tuple[Any, ...]) -> None:
                # After this layer's update: all its keys and values, as its attention used them.
                layer_cache = cache.layers[self.layers[i].self_attn.layer_idx]
                read(i, layer_cache.keys, layer_cache.values)

            return hook

        handles = [
            self.layers[i].register_forward_pre_hook(layer_input(i), with_kwargs=True) for i in range(exit_layer + 1)
        ]
        handles += [
            self.layers[i].self_attn.o_proj.register_forward_pre_hook(before_o_proj(i)) for i in range(exit_layer)
        ]
        run_hooked(run, handles)
        if len(heads) != exit_layer + 1:
            raise RuntimeError(f"read {len(heads)} layers, expected {exit_layer + 1}")
        return heads

    def last_token_ready(self, exit_layer: int) -> bool:
        """Whether layers 0..exit_layer can be read through last_token_heads (see last_token.py)."""
        return all(
            supports_last_token(layer) and self.projection(layer) is layer.self_attn.o_proj
            for layer in self.layers[: exit_layer + 1]
        )

    def prefix_kv_cache(self, batch: int) -> Any:
        """A fresh cache holding the prefix's keys and values for a batch (a forward appends to it)."""
        from transformers import DynamicCache

        states = self.prefix_states()
        cache = DynamicCache(config=self.language_model.config)
        for i, (k, v) in enumerate(zip(states.keys, states.values, strict=True)):
            cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), i)
        return cache

    @torch.no_grad()
    def prefix_states(self) -> PrefixStates:
        """The prefix's keys and values, computed on first use and again whenever prefix_ids change."""
        key = tuple(self.prefix_ids)
        if self._prefix is None or self._prefix.prefix_ids != key:
            ids = torch.tensor([self.prefix_ids], device=self.device)
            embeds = self.language_model.get_input_embeddings()(ids)
            out = self.language_model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), use_cache=True)
            layers = output_cache(out).layers
            self._prefix = PrefixStates(key, [c.keys for c in layers], [c.values for c in layers])
        return self._prefix
