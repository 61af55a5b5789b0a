"""Input-level injection of the retriever score x (methods.md §7; paper §4 RQ2 and App. D.4).

:class:`ScoreInput` sits where a list reranker (PRM, PIER) builds its per-candidate input from
the user part ``u`` (``[B, d]``, the encoded user state) and the item part ``e_i`` (``[B, C, d]``)
and returns the two parts with x folded in; the backbone then adds them as usual
(``u_i + e_i``). Definitions, with ``x`` ``[B, C]`` and ``z = list_standardise(x)``:

* score feature ``s_i = W_s [x_i ; z_i] + b_s`` (a learned projection ``R^2 -> R^d``). The raw x
  keeps the calibration across requests; z keeps the order inside the list when the retriever's
  scores differ only in the third decimal (as MF probabilities often do, methods.md §7 pitfalls);
* ``"none"``:   ``u_i = u``, ``e_i`` unchanged; x is not read;
* ``"concat"`` ("c score"): ``u_i = W_c [u ; s_i] + b_c`` (concatenate, project back to d);
* ``"plus"``   ("+ score"): ``u_i = u + s_i``;
* ``"weight"`` ("w score"): ``u_i = u``, ``e_i <- w_i e_i`` with ``w_i = n · softmax_list(z)_i``
  over the n real candidates of the list: positive (never zeroes an embedding), mean 1 per list,
  larger for candidates the retriever ranks higher. No parameters.

Padded candidates (``mask`` False) are left out of every list statistic. The backbone applies
this after its own LayerNorm of each part, so that a weight is not normalised away.
"""
from __future__ import annotations

import torch
from torch import nn

from benchmark.errors import ConfigError

MODES = ("none", "concat", "plus", "weight")

VARIANTS = {"c": ("concat", "concatenated with the user state ('c score', App. D.4)"),
            "plus": ("plus", "added to the user state ('+ score', App. D.4)"),
            "w": ("weight", "weighting the candidate embeddings ('w score', App. D.4)")}
"""Slug suffix -> (``score_input`` mode, description) of the three score variants (Table 2)."""


def register_score_variants(base: str, label: str) -> None:
    """Register ``<base>-c-score``, ``<base>-plus-score`` and ``<base>-w-score`` on a backbone
    that accepts ``score_input`` (PRM, PIER), in the ``score-variants`` group."""
    from benchmark.registry import register_variant

    for suffix, (mode, what) in VARIANTS.items():
        register_variant(f"{base}-{suffix}-score", base=base, groups=("score-variants",), score_input=mode,
                         doc=f"{label} + retriever score {what}")


def list_standardise(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` over the real candidates of each list; 0 on padded slots."""
    m = mask.to(x.dtype)
    n = m.sum(dim=1, keepdim=True).clamp(min=1)
    mean = (x * m).sum(dim=1, keepdim=True) / n
    std = (((x - mean) * m).square().sum(dim=1, keepdim=True) / n).sqrt()
    return (x - mean) / (std + eps) * m


class ScoreInput(nn.Module):
    """Fold the retriever score into the user and item parts of a candidate's input (module doc)."""

    def __init__(self, mode: str, hidden: int):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"score_input must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.feature = nn.Linear(2, hidden) if mode in ("concat", "plus") else None
        self.combine = nn.Linear(2 * hidden, hidden) if mode == "concat" else None

    def forward(self, user: torch.Tensor, item: torch.Tensor, x: torch.Tensor | None,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``user [B, d]``, ``item [B, C, d]``, ``x [B, C]`` (None only for mode "none") ->
        ``(user part [B, C or 1, d], item part [B, C, d])``."""
        if self.mode == "none":
            return user[:, None, :], item
        if x is None:
            raise ValueError(f"score_input={self.mode!r} needs the retriever score x")
        z = list_standardise(x, mask)
        if self.mode == "weight":
            weight = torch.softmax(z.masked_fill(~mask, -torch.inf), dim=1) * mask.sum(dim=1, keepdim=True)
            return user[:, None, :], item * weight[..., None]
        score = self.feature(torch.stack([x, z], dim=-1))
        user = user[:, None, :].expand_as(score)
        if self.mode == "concat":
            return self.combine(torch.cat([user, score], dim=-1)), item
        return user + score, item
