"""The one module of the suite that imports RecBole (anchors.md §0, architecture.md §7).

The sequential baselines SASRec, Caser and GRU4Rec (methods.md §2.1–2.3) are RecBole 1.2.1's own
model classes, ``recbole.model.sequential_recommender.{SASRec,Caser,GRU4Rec}``. Only those classes
are used in the suite: they are built here from a minimal configuration mapping and a minimal
dataset object (the few keys and counts their constructors read), never through RecBole's
``Config``, dataset or trainer. Every ``recbole`` import sits inside a function, so importing this
module (and ``baselines``) stays cheap.

The one exception is :func:`recbole_sasrec_throughput`, which runs RecBole's own data pipeline and
trainer for the side-by-side speed measurement of ``python -m benchmark.perf --section recbole``;
it works around RecBole's incompatibilities with NumPy 2 / pandas 3 / torch 2.13 locally and
undoes every change before it returns.

RecBole's layout, which :func:`build_model` follows: item 0 is padding and real items are
``1..n_items - 1`` (so ``n_items`` = our ``spec.n_items + 1``, our codes unchanged); item
sequences are right-padded (``item_seq[b, :len]`` oldest first, zeros after) with their length
in ``item_seq_len``. Caser's user table also treats row 0 as padding (``padding_idx=0``, no
gradient), so the caller shifts our user ids ``0..n_users-1`` by one.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch

MODELS = ("SASRec", "Caser", "GRU4Rec")
"""RecBole model classes the suite wraps (methods.md §2.1–2.3)."""

# field names of RecBole's interaction format; the three models only derive attribute names from them
USER_FIELD = "user_id"
ITEM_FIELD = "item_id"
LIST_SUFFIX = "_list"
LENGTH_FIELD = "item_length"
NEG_PREFIX = "neg_"

# the model-specific keys each constructor reads (recbole/properties/model/<Model>.yaml)
_MODEL_KEYS = {
    "SASRec": ("n_layers", "n_heads", "hidden_size", "inner_size", "hidden_dropout_prob", "attn_dropout_prob",
               "hidden_act", "layer_norm_eps", "initializer_range", "loss_type"),
    "Caser": ("embedding_size", "loss_type", "nh", "nv", "dropout_prob", "reg_weight"),
    "GRU4Rec": ("embedding_size", "hidden_size", "loss_type", "num_layers", "dropout_prob"),
}


class _DatasetCounts:
    """The part of a RecBole dataset the three constructors read: ``num(field)`` for the item
    count (``SequentialRecommender``) and ``user_num`` (Caser)."""

    def __init__(self, n_users: int, n_items: int):
        self._counts = {USER_FIELD: n_users, ITEM_FIELD: n_items}

    def num(self, field: str) -> int:
        if field not in self._counts:
            raise KeyError(f"the RecBole adapter's dataset has no field {field!r} (only {sorted(self._counts)})")
        return self._counts[field]

    @property
    def user_num(self) -> int:
        return self._counts[USER_FIELD]


def model_class(name: str) -> type:
    """RecBole's class ``name`` (one of :data:`MODELS`); any other name is an error."""
    if name not in MODELS:
        raise ValueError(f"unknown RecBole sequential model {name!r}; the adapter wraps {', '.join(MODELS)}")
    from recbole.model import sequential_recommender

    return getattr(sequential_recommender, name)


def build_model(name: str, *, n_items: int, n_users: int, max_len: int, params: Mapping[str, Any]) -> torch.nn.Module:
    """RecBole's ``name`` model, built from a minimal config.

    ``n_items``/``n_users``: table sizes in RecBole's convention (padding row 0 included).
    ``max_len``: ``MAX_ITEM_LIST_LENGTH`` (SASRec's position table, Caser's window).
    ``params``: exactly the model's own keys (:data:`_MODEL_KEYS`); a missing or extra key is an
    error, so no RecBole default is taken silently. The config is a plain ``dict``: a key a
    constructor reads that is not here raises ``KeyError`` naming it (RecBole's ``Config`` would
    return None). ``device`` is set to CPU; the three models store it but never read it, and the
    caller moves the module with ``.to()``.
    """
    cls = model_class(name)
    expected = set(_MODEL_KEYS[name])
    if set(params) != expected:
        raise ValueError(f"RecBole {name} needs exactly the keys {sorted(expected)}; "
                         f"missing {sorted(expected - set(params))}, unknown {sorted(set(params) - expected)}")
    config = {
        "USER_ID_FIELD": USER_FIELD, "ITEM_ID_FIELD": ITEM_FIELD, "LIST_SUFFIX": LIST_SUFFIX,
        "ITEM_LIST_LENGTH_FIELD": LENGTH_FIELD, "NEG_PREFIX": NEG_PREFIX, "MAX_ITEM_LIST_LENGTH": int(max_len),
        "device": torch.device("cpu"), **params,
    }
    return cls(config, _DatasetCounts(n_users=n_users, n_items=n_items))


def sequence_state(net: torch.nn.Module, item_seq: torch.Tensor, item_seq_len: torch.Tensor,
                   user: torch.Tensor) -> torch.Tensor:
    """The user state ``[B, d]`` from RecBole's own ``forward``, with each model's signature
    (``SASRec/GRU4Rec.forward(item_seq, item_seq_len)``, ``Caser.forward(user, item_seq)``).
    Inputs are already in RecBole's layout (right-padded, RecBole user ids)."""
    name = type(net).__name__
    if name == "Caser":
        return net(user, item_seq)
    if name in ("SASRec", "GRU4Rec"):
        return net(item_seq, item_seq_len)
    raise ValueError(f"not a wrapped RecBole model: {type(net).__qualname__}")


def caser_regulariser(net: torch.nn.Module) -> torch.Tensor:
    """The regularisation RecBole's ``Caser.calculate_loss`` adds to its loss: ``reg_weight`` x
    the sum of L2 norms (not squared) of the user/item tables, the vertical filter and both FC
    weights, plus ``reg_weight`` x the L2 norms of the horizontal filters (``reg_loss_conv_h``)."""
    if type(net).__name__ != "Caser":
        raise ValueError(f"caser_regulariser needs a RecBole Caser, got {type(net).__qualname__}")
    tables = [net.user_embedding.weight, net.item_embedding.weight, net.conv_v.weight, net.fc1.weight, net.fc2.weight]
    return net.reg_weight * net.reg_loss(tables) + net.reg_loss_conv_h()


# --------------------------------------------------------------------------- throughput (perf)

_NUMPY_ALIASES = {"float_": "float64", "complex_": "complex128", "unicode_": "str_"}
# names RecBole's Config.compatibility_settings() assigns on the numpy module
_NUMPY_TOUCHED = ("bool", "int", "float", "complex", "object", "str", "long", "unicode", *_NUMPY_ALIASES)


@contextlib.contextmanager
def numpy_aliases_for_recbole() -> Iterator[None]:
    """Inside: ``np.float_``, ``np.complex_`` and ``np.unicode_`` exist again (removed in NumPy
    2.0; RecBole's ``Config.compatibility_settings`` reads them and then sets ``np.float``,
    ``np.int``, ... which its data code uses). On exit every numpy attribute RecBole touches is
    restored to what it was before (or removed), so nothing leaks into the rest of the process."""
    import numpy as np

    missing = object()
    saved = {name: np.__dict__.get(name, missing) for name in _NUMPY_TOUCHED}
    for alias, target in _NUMPY_ALIASES.items():
        if alias not in np.__dict__:
            setattr(np, alias, getattr(np, target))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                np.__dict__.pop(name, None)
            else:
                setattr(np, name, value)


@contextlib.contextmanager
def _recbole_sandbox(workdir: str) -> Iterator[None]:
    """RecBole's pipeline with every global side effect confined and undone: numpy aliases,
    ``sys.argv`` (RecBole's Config parses ``--key=value`` arguments of the host process), the
    working directory (its Trainer writes ``./log_tensorboard``), ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
    (torch >= 2.6 refuses RecBole's pickled checkpoints otherwise) and the cudnn flags its
    ``init_seed`` sets."""
    argv, cwd = sys.argv, os.getcwd()
    env_old = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    with numpy_aliases_for_recbole(), warnings.catch_warnings():
        # pandas 3 copy-on-write: RecBole's NaN fill (`feat[field].fillna(inplace=True)`) is a
        # no-op; the caller checks that the data it times has no NaN, so only the warning goes
        warnings.filterwarnings("ignore", message=".*chained assignment.*")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
        # torch notes that RecBole builds tensors from read-only pandas 3 arrays (harmless for timing)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        sys.argv = sys.argv[:1]
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
        os.chdir(workdir)
        try:
            yield
        finally:
            os.chdir(cwd)
            sys.argv = argv
            if env_old is None:
                os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
            else:
                os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = env_old
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


def recbole_sasrec_throughput(*, epochs: int, batch_size: int, hidden_size: int, n_layers: int, n_heads: int,
                              inner_size: int, dropout: float, max_len: int, lr: float, weight_decay: float,
                              grad_clip: float, seed: int = 0, device: str = "cpu",
                              warmup_epochs: int = 0) -> dict[str, Any]:
    """Train RecBole's SASRec with RecBole's own pipeline on its bundled ml-100k and time it.

    RecBole's path, unchanged: ``Config(model="SASRec", dataset="ml-100k")`` -> ``create_dataset``
    -> ``data_preparation`` (leave-one-out split, every prefix of a user's sequence a training
    instance, CE loss over all items, no negative sampling) -> ``Trainer._train_epoch`` for
    ``epochs`` epochs. Only the training epochs are timed (``Trainer.fit`` would add validation
    and checkpoint writes); the same hyper-parameters as the suite's SASRec are passed in.

    Workarounds for RecBole 1.2.1 on NumPy 2 / pandas 3 / torch 2.13 (anchors.md §0), all local
    to this call and undone on return (:func:`_recbole_sandbox`):

    * ``np.float_``/``np.complex_``/``np.unicode_`` are aliased while RecBole runs
      (``Config.compatibility_settings`` reads them; NumPy 2 removed them);
    * ``recbole.quick_start`` is never imported (it imports ``ray.tune``, which needs
      ``pkg_resources``, gone from setuptools >= 82, and ``np.bool8``);
    * ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` while it runs (RecBole reloads pickled checkpoints
      with ``torch.load`` and the torch >= 2.6 default ``weights_only=True`` refuses them; the
      timed path itself writes and reads none);
    * ``sys.argv`` is hidden (RecBole's Config would read the host's ``--output=...`` as its own
      setting) and the working directory is a temporary folder (its Trainer creates
      ``log_tensorboard/``; checkpoints and any saved dataset go there too);
    * pandas 3 copy-on-write turns RecBole's in-place NaN fill into a no-op (it warns with
      ``ChainedAssignmentError``); the bundled ml-100k has no missing value, which is checked
      here, so the data RecBole trains on is unaffected.

    Returns the counts and timings (``train_sequences`` = training instances per epoch, each one
    padded sequence of ``max_len`` encoded once and one target item).
    """
    with tempfile.TemporaryDirectory(prefix="dnr-recbole-") as workdir, _recbole_sandbox(workdir):
        import recbole
        from recbole.config import Config
        from recbole.data import create_dataset, data_preparation
        from recbole.model.sequential_recommender import SASRec
        from recbole.trainer import Trainer
        from recbole.utils import init_seed

        config = Config(model="SASRec", dataset="ml-100k", config_dict={
            "data_path": os.path.join(os.path.dirname(recbole.__file__), "dataset_example"),
            "checkpoint_dir": os.path.join(workdir, "saved"),
            "device": device, "use_gpu": device.startswith("cuda"), "seed": seed, "reproducibility": True,
            "show_progress": False, "state": "WARNING", "log_wandb": False,
            "epochs": epochs, "train_batch_size": batch_size, "learning_rate": lr, "weight_decay": weight_decay,
            "clip_grad_norm": {"max_norm": grad_clip} if grad_clip > 0 else None,
            "loss_type": "CE", "train_neg_sample_args": None, "MAX_ITEM_LIST_LENGTH": max_len,
            "hidden_size": hidden_size, "n_layers": n_layers, "n_heads": n_heads, "inner_size": inner_size,
            "hidden_dropout_prob": dropout, "attn_dropout_prob": dropout,
        })
        init_seed(config["seed"], config["reproducibility"])
        tick = time.perf_counter()
        dataset = create_dataset(config)
        if bool(dataset.inter_feat.isna().to_numpy().any()):
            raise RuntimeError("RecBole's ml-100k has missing values: its NaN fill is a no-op under pandas 3, "
                               "so this measurement would not be RecBole's usual data")
        train_data, _, _ = data_preparation(config, dataset)
        prep_seconds = time.perf_counter() - tick
        init_seed(config["seed"], config["reproducibility"])
        model = SASRec(config, train_data.dataset).to(config["device"])
        trainer = Trainer(config, model)
        epoch_seconds, losses = [], []
        for epoch in range(warmup_epochs + epochs):  # the first warmup_epochs are not counted
            tick = time.perf_counter()
            losses.append(float(trainer._train_epoch(train_data, epoch, show_progress=False)))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            epoch_seconds.append(time.perf_counter() - tick)
        n_seq = len(train_data.dataset)
        return {
            "pipeline": "recbole Config + create_dataset + data_preparation + Trainer._train_epoch",
            "recbole_version": recbole.__version__,
            "data": "RecBole's bundled ml-100k atomic files, RecBole's default sequential split (leave-one-out)",
            "users": int(dataset.user_num - 1), "items": int(dataset.item_num - 1), "interactions": int(dataset.inter_num),
            "train_sequences": int(n_seq), "batches_per_epoch": len(train_data),
            "data_preparation_seconds": prep_seconds, "warmup_epoch_seconds": epoch_seconds[:warmup_epochs],
            "epoch_seconds": epoch_seconds[warmup_epochs:],
            "sequences_per_second": n_seq * epochs / sum(epoch_seconds[warmup_epochs:]),
            "loss_sum_per_epoch": losses, "n_params": sum(p.numel() for p in model.parameters()),
        }
