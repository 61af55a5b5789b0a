"""Reference rows that need no training: the retriever's own order and a uniformly random order."""
from __future__ import annotations

import torch

from benchmark.api import Batch, DataSpec, Reranker
from benchmark.registry import register

_MASK32 = 0xFFFFFFFF


class UntrainedReference(Reranker):
    """A fixed scoring rule with no parameters; the trainer only evaluates it."""

    family = "reference"
    trainable = False

    def loss(self, batch: Batch) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} is a reference row without parameters; it has no loss to train")


@register("retriever", groups=("reference",))
class RetrieverOrder(UntrainedReference):
    """The retriever's order: score = the retriever score x."""

    uses_retriever_score = True

    def score(self, batch: Batch) -> torch.Tensor:
        return batch.scores.masked_fill(~batch.mask, -torch.inf)


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash (xor-shift, odd multiply); a bijection on [0, 2**32). The factor
    is below 2**31, so every product of a 32-bit value stays exact in int64."""
    for _ in range(2):
        h = ((h ^ (h >> 16)) * 0x45D9F3B) & _MASK32
    return h ^ (h >> 16)


@register("random", groups=("reference",))
class RandomOrder(UntrainedReference):
    """A uniformly random order of the candidates (seeded by the run's seed, or by ``seed``)."""

    def __init__(self, spec: DataSpec, *, seed: int | None = None):
        super().__init__(spec)
        # two 32-bit keys (from torch's global RNG, which the run seeds, unless ``seed`` is given);
        # each score is then a hash of (keys, request, column), so a request's order does not
        # depend on batching, call order or repeated calls. A buffer, so a state dict restores it.
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.register_buffer("keys", torch.randint(0, _MASK32 + 1, (2,), generator=generator, dtype=torch.int64))

    def score(self, batch: Batch) -> torch.Tensor:
        columns = torch.arange(batch.items.shape[1], device=batch.items.device)
        cell = (batch.request_id[:, None] * batch.items.shape[1] + columns) & _MASK32
        keys = self.keys.to(cell.device)
        bits = _mix32(_mix32(cell ^ keys[0]) ^ keys[1])
        uniform = ((bits.double() + 0.5) / 2.0 ** 32).float()
        return uniform.masked_fill(~batch.mask, -torch.inf)
