"""Cached candidate lists -> :class:`benchmark.api.Batch` tensors, one split at a time."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from benchmark.api import Batch, DataSpec
from benchmark.data.lists import CandidateLists


def data_spec(lists: CandidateLists) -> DataSpec:
    cfg = lists.meta["config"]
    return DataSpec(dataset=lists.meta["dataset"], n_users=lists.n_users, n_items=lists.n_items,
                    list_len=cfg["n_candidates"], history_len=cfg["history_len"], k=cfg["list_size"])


class SplitTensors:
    """The requests of one split as CPU tensors, cut into batches on demand."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.request_id = torch.from_numpy(arrays["request_id"].astype(np.int64))
        self.user = torch.from_numpy(arrays["user"].astype(np.int64))
        self.items = torch.from_numpy(arrays["items"].astype(np.int64))
        self.scores = torch.from_numpy(arrays["scores"].astype(np.float32))
        self.labels_np = arrays["labels"].astype(np.int8)
        self.labels = torch.from_numpy(self.labels_np.astype(np.float32))
        self.mask = torch.ones(self.items.shape, dtype=torch.bool)
        self.hist_items = torch.from_numpy(arrays["hist_items"].astype(np.int64))
        self.hist_labels = torch.from_numpy(arrays["hist_labels"].astype(np.float32))
        self.hist_len = torch.from_numpy(arrays["hist_len"].astype(np.int64))
        self.exposed = torch.from_numpy(arrays["exposed"].astype(bool))

    @classmethod
    def of(cls, lists: CandidateLists, split: str, limit: int | None = None) -> "SplitTensors":
        arrays = lists.split(split)
        if limit is not None:
            arrays = {k: v[:limit] for k, v in arrays.items()}
        return cls(arrays)

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def batch(self, index: torch.Tensor) -> Batch:
        return Batch(request_id=self.request_id[index], user=self.user[index], items=self.items[index],
                     scores=self.scores[index], labels=self.labels[index], mask=self.mask[index],
                     hist_items=self.hist_items[index], hist_labels=self.hist_labels[index],
                     hist_len=self.hist_len[index], exposed=self.exposed[index])

    def batches(self, batch_size: int, order: torch.Tensor | None = None,
                device: torch.device | str = "cpu") -> Iterator[Batch]:
        """Batches in ``order`` (a permutation of the rows; None = stored order)."""
        order = torch.arange(len(self)) if order is None else order
        for start in range(0, len(self), batch_size):
            yield self.batch(order[start:start + batch_size]).to(device)
