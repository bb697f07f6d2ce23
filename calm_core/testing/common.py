"""Pieces the tiny-model writers share."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def spread_weights(model: torch.nn.Module) -> None:
    """Random init gives near-zero projections; rescale every matrix to unit gain so audio moves the heads."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0 / np.sqrt(p.shape[-1]))


def random_model(model_class: Any, config: Any, seed: int) -> Any:
    """model_class(config) in eval mode with seeded random weights spread to unit gain (a tiny writer's model)."""
    torch.manual_seed(seed)
    model = model_class(config).eval()
    spread_weights(model)
    return model
