"""The sequential baselines SASRec, Caser and GRU4Rec (methods.md §2.1–2.3), as RecBole's own models.

Each is a pointwise scorer (methods.md §2, "Adaptation" in §2.1): RecBole's ``forward`` encodes
the user's history into a state ``h`` and every candidate c gets the logit ``<h, e_c>`` with the
model's own item table, exactly as RecBole's ``predict``/``full_sort_predict``; training is
pointwise BCE of these logits against the request's labels over its 50 candidates (Eq. 2,
:func:`benchmark.api.bce_loss`), the same data and loss as the rerankers, so only the encoder
differs. None of them reads the retriever score ``batch.scores``, the candidates' positions
(a candidate's logit depends only on its id, so permuting the candidates permutes the scores),
the other candidates, or the history's feedback labels.

The RecBole modules are built in :mod:`baselines.recbole_adapter`, the only module that imports
RecBole. Hyper-parameters are RecBole's defaults (``recbole/properties/model/<Model>.yaml``)
except the embedding/hidden size, 128 as in the paper (DNR App. E, Table 7: "emb 128") and
methods.md §2.1–2.3, and dropout (see :class:`RecBoleSequential`).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from baselines import recbole_adapter
from benchmark.api import Batch, DataSpec, Reranker, bce_loss
from benchmark.registry import register


def right_padded(hist_items: torch.Tensor, hist_len: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Our left-padded, oldest-first history ``[B, H]`` -> RecBole's layout of the last ``width``
    items: ``item_seq [B, width]`` with ``item_seq[b, :n]`` the ``n = min(hist_len, width)``
    most recent items, oldest first, then zeros; and ``item_seq_len [B]`` = n."""
    batch, length = hist_items.shape
    if length < width:  # fewer stored history slots than the window: pad on the left first
        hist_items = torch.nn.functional.pad(hist_items, (width - length, 0))
        length = width
    last = hist_items[:, length - width:]
    n = hist_len.clamp(max=width)
    # slot j of the output holds the item at column j + (width - n) of the left-padded window
    cols = torch.arange(width, device=hist_items.device)
    source = (cols + (width - n)[:, None]).clamp(max=width - 1)
    seq = torch.where(cols < n[:, None], last.gather(1, source), torch.zeros_like(last))
    return seq, n


class RecBoleSequential(Reranker):
    """Base of the three wrappers: RecBole's model ``net``, the layout conversion, dot-product
    scores and pointwise BCE (methods.md §2.1 "Adaptation").

    **Empty history.** RecBole never builds a sequence of length 0 (its first training instance
    has one item) and its SASRec/GRU4Rec read the state at ``item_seq_len - 1``, which would be
    index -1 (an error on CPU, a device assert on GPU). Rows with ``hist_len == 0`` are passed as
    an all-padding sequence of length 1, so the state is read at slot 0: for SASRec the
    transformer output of (padding item + position 0) with every key masked, for GRU4Rec one GRU
    step on the padding item. It is finite, the same for every empty-history request, and learned
    through the position embedding / layers (the padding row itself gets no gradient). Caser has
    a fixed window and needs nothing special (an all-padding window plus the user embedding).

    **Dropout.** The suite's config layer passes the dataset TOML's generic ``[model] dropout``
    (the paper's Table 7: 0.3 on ML-1M and Kuaivideo, 0.5 on Books, given for all methods) to
    every method with a ``dropout`` keyword. These models accept it and map it to RecBole's
    dropout rate(s), so all methods of a dataset share the paper's dropout; the class default,
    used when no TOML sets it, is RecBole's own default for that model.
    """

    family = "sequential"
    micro_batchable = True  # per-candidate BCE (Caser's weight norm is per call, so shares sum to it)
    recbole_name: ClassVar[str] = ""
    window: int
    """Sequence length given to RecBole (``MAX_ITEM_LIST_LENGTH``)."""

    def __init__(self, spec: DataSpec, *, window: int, params: dict[str, Any]):
        super().__init__(spec)
        if window < 1:
            raise ValueError(f"{type(self).__name__}: the history window must be >= 1, got {window}")
        self.window = window
        # RecBole convention: row 0 of each table is padding, so one extra row; our item codes
        # 1..n_items are used unchanged, our user ids 0..n_users-1 are shifted by one (Caser)
        self.net = recbole_adapter.build_model(self.recbole_name, n_items=spec.n_items + 1, n_users=spec.n_users + 1,
                                               max_len=window, params=params)

    def user_state(self, batch: Batch) -> torch.Tensor:
        """RecBole's ``forward`` over the history: ``[B, d]``."""
        seq, n = right_padded(batch.hist_items, batch.hist_len, self.window)
        return recbole_adapter.sequence_state(self.net, seq, n.clamp(min=1), batch.user + 1)

    def logits(self, batch: Batch) -> torch.Tensor:
        """``<h, e_c>`` for every candidate ``[B, C]`` (RecBole's ``predict``, batched over C)."""
        h = self.user_state(batch)
        return torch.einsum("bd,bcd->bc", h, self.net.item_embedding(batch.items))

    def score(self, batch: Batch) -> torch.Tensor:
        return self.logits(batch).masked_fill(~batch.mask, -torch.inf)

    def loss(self, batch: Batch) -> "torch.Tensor | dict[str, torch.Tensor]":
        # on the unmasked logits: -inf on a padded slot would make BCE NaN
        return bce_loss(self.logits(batch), batch.labels, batch.mask)


@register("sasrec", groups=("baselines",))
class SASRecBaseline(RecBoleSequential):
    """SASRec (methods.md §2.1) via RecBole: causal self-attention over the history, <h, e_c>, BCE.

    Sees: the history item ids (the last ``spec.history_len``, RecBole's position table has that
    many rows) and the candidate ids. Not the user id, the retriever score, candidate positions
    or history labels. Hyper-parameters: RecBole's SASRec.yaml (2 layers, 2 heads, FFN 256, GELU,
    LN eps 1e-12, init std 0.02, dropout 0.5) except ``hidden`` 128 (RecBole: 64) and ``dropout``
    from the dataset TOML when it sets one (Table 7); ``attn_dropout`` None = same as ``dropout``.
    """

    recbole_name = "SASRec"

    def __init__(self, spec: DataSpec, *, hidden: int = 128, n_layers: int = 2, n_heads: int = 2,
                 inner_size: int = 256, dropout: float = 0.5, attn_dropout: float | None = None,
                 hidden_act: str = "gelu", layer_norm_eps: float = 1e-12, init_std: float = 0.02):
        super().__init__(spec, window=spec.history_len, params={
            "hidden_size": hidden, "n_layers": n_layers, "n_heads": n_heads, "inner_size": inner_size,
            "hidden_dropout_prob": dropout, "attn_dropout_prob": dropout if attn_dropout is None else attn_dropout,
            "hidden_act": hidden_act, "layer_norm_eps": layer_norm_eps, "initializer_range": init_std,
            "loss_type": "CE"})  # loss_type: RecBole's own loss, built but unused (we train BCE)


@register("caser", groups=("baselines",))
class CaserBaseline(RecBoleSequential):
    """Caser (methods.md §2.2) via RecBole: horizontal/vertical convolutions over the last L items + user, BCE.

    Sees: the last ``window`` history item ids (older ones are never read), the user id and the
    candidate ids. Not the retriever score, candidate positions or history labels. The loss adds
    RecBole's own Caser regularisation (``reg_weight`` x L2 norms of its tables, filters and FC
    weights, as in ``Caser.calculate_loss``) to the BCE. Hyper-parameters: RecBole's Caser.yaml
    (nv 4, nh 8, dropout 0.4, reg_weight 1e-4) except ``hidden`` 128 (RecBole: 64), ``dropout``
    from the dataset TOML when set (Table 7), and ``window`` L = 5 (the Caser paper's L; RecBole's
    generic MAX_ITEM_LIST_LENGTH of 50 is far above what it recommends for Caser, methods.md §2.2).
    """

    recbole_name = "Caser"

    def __init__(self, spec: DataSpec, *, hidden: int = 128, window: int = 5, nv: int = 4, nh: int = 8,
                 dropout: float = 0.4, reg_weight: float = 1e-4):
        super().__init__(spec, window=window, params={
            "embedding_size": hidden, "nv": nv, "nh": nh, "dropout_prob": dropout, "reg_weight": reg_weight,
            "loss_type": "CE"})

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"bce": bce_loss(self.logits(batch), batch.labels, batch.mask),
                "reg": recbole_adapter.caser_regulariser(self.net)}


@register("gru4rec", groups=("baselines",))
class GRU4RecBaseline(RecBoleSequential):
    """GRU4Rec (methods.md §2.3) via RecBole: a GRU over the history, projected to the item space, <h, e_c>, BCE.

    Sees: the history item ids (the last ``spec.history_len``) and the candidate ids. Not the
    user id, the retriever score, candidate positions or history labels. Hyper-parameters:
    RecBole's GRU4Rec.yaml (1 layer, GRU hidden 128, dropout 0.3) except the item embedding
    ``hidden`` 128 (RecBole: 64) and ``dropout`` from the dataset TOML when set (Table 7).
    """

    recbole_name = "GRU4Rec"

    def __init__(self, spec: DataSpec, *, hidden: int = 128, gru_hidden: int = 128, num_layers: int = 1,
                 dropout: float = 0.3):
        super().__init__(spec, window=spec.history_len, params={
            "embedding_size": hidden, "hidden_size": gru_hidden, "num_layers": num_layers, "dropout_prob": dropout,
            "loss_type": "CE"})
