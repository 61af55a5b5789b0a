"""Small helpers shared by the method test files (imported as ``helpers``; pytest puts tests/ on the path)."""
from __future__ import annotations

import torch

from benchmark import registry


def build(slug, spec, **hparams):
    """``slug`` built with seed 0, in eval mode."""
    torch.manual_seed(0)
    return registry.build(slug, spec, **hparams).eval()


def scores(model, batch, seed=None):
    """``model.score(batch)`` without gradients; with ``seed``, torch's global RNG is seeded first
    (for methods whose inference draws from it)."""
    with torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        return model.score(batch)
