"""A random-weight Qwen2-Audio-7B-Instruct folder at its real widths, in the released layout, for runs on CPU.

    python bench/realsize.py --out /work/realsize/qwen2-audio-7b            # tensors an exit at layer 8 needs
    python bench/realsize.py --out DIR --exit-layer 16                       # ... at layer 16
    calm fit --model DIR --dtype nf4 --max-layer 8 ...                       # the truncated load reads it

Widths come from bench/configs/qwen2-audio-7b-instruct.json. The folder is laid out as the release is:
config.json, bf16 safetensors shards named model-0000i-of-0000N.safetensors under the release's key names
(`language_model.model.layers.N...`, `audio_tower...`), model.safetensors.index.json, and a processor and
tokenizer built here (no download). By default only the tensors up to the exit are written - decoder layers
0..exit, the audio encoder, the projector and the token embeddings - into the shards that the full model's
plan puts them in; the index lists exactly what was written, so loading more layers than that is refused by
calm's loader instead of filling them with random values. Speed and memory do not depend on the weights'
values, so this runs the same kernels at the same shapes as the real checkpoint.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CONFIG = Path(__file__).with_name("configs") / "qwen2-audio-7b-instruct.json"
MAX_SHARD_BYTES = 4 * 10**9  # shards of at most 4 GB, as save_pretrained splits a 16.8 GB bf16 model into five
SAVE_DTYPE = torch.bfloat16  # the release's dtype
_TEXT_LAYER = re.compile(r"^language_model\.model\.layers\.(\d+)\.")
# The prompt calm sends; the tokenizer is trained on it so that, like the released BPE, it gives one token per
# common English word (a byte-level tokenizer would make the prompt, and every forward, about twice as long).
_TOKENIZER_TEXT = "system\nYou are a helpful assistant.\nuser\nAudio 1: \nWhat is the sound in this audio?\nassistant\n"


@dataclass(frozen=True)
class Written:
    """What write_realsize put on disk."""

    path: Path
    shards: int  # N in model-0000i-of-0000N: the full model's shard count
    tensors: int
    bytes: int
    seconds: float


def prompt_tokenizer() -> Any:
    """A byte-level BPE Qwen2 tokenizer trained on calm's prompt, with Qwen2-Audio's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    from calm_core.testing.qwen2_audio import SPECIAL_TOKENS

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator([_TOKENIZER_TEXT] * 4, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    vocab = dict(model["vocab"])
    vocab["<|endoftext|>"] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    return tok


def realsize_config(tokenizer: Any, *, text_layers: int | None = None, audio_layers: int | None = None) -> Any:
    """Qwen2AudioConfig at the widths in bench/configs; text_layers / audio_layers override the depths."""
    from transformers import Qwen2AudioConfig

    widths = json.loads(CONFIG.read_text())
    audio, text = dict(widths["audio_config"]), dict(widths["text_config"])
    if text_layers is not None:
        text["num_hidden_layers"] = text_layers
    if audio_layers is not None:
        audio["encoder_layers"] = audio_layers
    config = Qwen2AudioConfig(
        audio_config=audio,
        text_config={"model_type": "qwen2", **text, "pad_token_id": tokenizer.pad_token_id},
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),  # type: ignore[call-arg]
    )
    config.architectures = ["Qwen2AudioForConditionalGeneration"]
    config.dtype = SAVE_DTYPE
    return config


def released_key(key: str) -> str:
    """A transformers 5 state-dict key under the name the released checkpoint stores it."""
    from calm_core.testing.qwen2_audio import _legacy_key

    return _legacy_key(key)


def tensor_plan(config: Any) -> dict[str, torch.Size]:
    """Every tensor of the full model (lm_head included) under its released name, in save order."""
    from transformers import Qwen2AudioForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    plan = {released_key(k): v.shape for k, v in model.state_dict().items()}
    if getattr(config.text_config, "tie_word_embeddings", False) or getattr(config, "tie_word_embeddings", False):
        plan.pop("language_model.lm_head.weight", None)
    return plan


def shard_plan(plan: dict[str, torch.Size], max_bytes: int = MAX_SHARD_BYTES) -> dict[str, int]:
    """Shard index (0-based) of each tensor: filled in order, a new shard when the next tensor would overflow."""
    shard, used, out = 0, 0, {}
    for name, shape in plan.items():
        size = shape.numel() * SAVE_DTYPE.itemsize
        if used and used + size > max_bytes:
            shard, used = shard + 1, 0
        out[name] = shard
        used += size
    return out


def needed(name: str, text_layers: int) -> bool:
    """Whether the model calm loads for decoder layers 0..text_layers-1 has this tensor (it never has lm_head)."""
    match = _TEXT_LAYER.match(name)
    if match:
        return int(match.group(1)) < text_layers
    return not name.startswith("language_model.lm_head.")


def random_tensor(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Unit-gain matrices (as calm's tiny writers spread them), norm scales of one, biases of zero."""
    if len(shape) >= 2:
        t = torch.randn(shape, generator=generator, dtype=torch.float32)
        return t.mul_(shape[-1] ** -0.5).to(SAVE_DTYPE)
    if "norm" in name and name.endswith(".weight"):
        return torch.ones(shape, dtype=SAVE_DTYPE)
    return torch.zeros(shape, dtype=SAVE_DTYPE)


def write_realsize(
    out: str | Path,
    *,
    exit_layer: int | None = 8,
    text_layers: int | None = None,
    audio_layers: int | None = None,
    seed: int = 0,
) -> Written:
    """Write the folder: config, processor, the tensors decoder layers 0..exit_layer need (all with None).

    text_layers / audio_layers shrink the model's depths (the test suite's reduced-depth run); the widths stay.
    """
    from safetensors.torch import save_file
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = prompt_tokenizer()
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer)
    processor.save_pretrained(out)
    config = realsize_config(tokenizer, text_layers=text_layers, audio_layers=audio_layers)
    config.save_pretrained(out)
    depth = config.text_config.num_hidden_layers
    keep = depth if exit_layer is None else min(exit_layer + 1, depth)
    plan = tensor_plan(config)
    shards = shard_plan(plan)
    n_shards = max(shards.values()) + 1
    generator = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for shard in range(n_shards):
        names = [n for n, s in shards.items() if s == shard and needed(n, keep)]
        if not names:
            continue
        file = f"model-{shard + 1:05d}-of-{n_shards:05d}.safetensors"
        tensors = {n: random_tensor(n, plan[n], generator) for n in names}
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map |= dict.fromkeys(names, file)
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return Written(out, n_shards, len(weight_map), total, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--exit-layer", type=int, default=8, help="write decoder layers 0..N (default 8)")
    p.add_argument("--all-layers", action="store_true", help="write every decoder layer (lm_head is never written)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    done = write_realsize(args.out, exit_layer=None if args.all_layers else args.exit_layer, seed=args.seed)
    print(
        f"{done.path}: {done.tensors} tensors, {done.bytes / 1e9:.2f} GB in shards of {done.shards}, "
        f"{done.seconds:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # calm_core from the checkout
    sys.exit(main())
