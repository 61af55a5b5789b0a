"""Layered configuration (architecture.md §1, issue "training harness").

Each run resolves three tables, every layer overriding the one before:

* ``data`` (the protocol): ``DataConfig`` defaults < ``configs/<dataset>.toml [data]`` < profile < ``--set data.KEY``;
* ``train`` (the trainer): ``TrainConfig`` defaults < ``[train]`` < profile < ``--set train.KEY``;
* model hyper-parameters: the class's keyword defaults < the slug's variant overrides <
  ``[model]`` (applied to every method that accepts the key) < ``[methods.<slug>]`` < profile
  ``model`` (where accepted) < ``--set model.KEY`` (where accepted) < ``--set <slug>.KEY``.

Values of ``--set`` are parsed as TOML values (never ``eval``); unknown keys and ill-typed values
are errors naming the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from benchmark.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"

FillPolicy = Literal["topk", "random", "score_matched"]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The paper's protocol (protocol.md §3–§7). Every field is part of the list-cache key."""

    k_core: int | None = None
    """Iterative k-core threshold; None = the source layout's default (20 for the official
    releases, as in the paper; 10 for the shared KuaiRand window and Amazon sample)."""
    label: str | None = None
    """Binary label rule: ``rating>=N`` (ML, Amazon) or a KuaiRand signal column such as
    ``is_click``/``long_view``; None = the dataset default (protocol.md §3.2)."""
    dedup: bool = True
    """Keep only the earliest interaction of each (user, item) pair (protocol.md §3.1)."""
    max_users: int | None = None
    """Keep a seeded random subset of this many users before the k-core filter (scaling runs)."""
    sample_users: int | None = None
    """Keep a seeded random subset of this many users after the k-core filter (the smoke profile:
    a small dataset that still has the dataset's own k-core, where sampling first and filtering
    afterwards leaves nothing on the sparse KuaiRand and Amazon logs)."""
    list_size: int = 6
    """Exposed items per request (the window length, and the cut-off k of the metrics)."""
    history_len: int = 50
    n_candidates: int = 50
    fill: FillPolicy = "topk"
    """How the non-exposed candidates are chosen (protocol.md §6.2)."""
    n_folds: int = 5
    """Cross-fitting folds for the retriever scores of train requests (protocol.md §5.3)."""
    data_seed: int = 0
    """Seeds folds, MF initialisation, negative sampling and random fillers (never the rerankers)."""
    mf_dim: int = 128
    mf_init_std: float = 0.01
    """Std of the normal initialisation of the MF embeddings (chosen on the retriever's own
    hold-out AUC: 0.01 beat 1/sqrt(dim) and 0.3 on all four datasets)."""
    mf_lr: float = 1e-3
    mf_weight_decay: float = 0.0
    mf_batch_size: int = 2048
    """Positive interactions per MF step; each brings ``mf_negatives`` sampled negatives."""
    mf_negatives: int = 4
    mf_observed_negatives: bool = True
    """Use observed label-0 interactions as extra MF negatives (protocol.md §7)."""
    mf_holdout: float = 0.2
    """Chronological per-user share of the retriever data held out for early stopping and AUC."""
    mf_max_epochs: int = 100
    mf_patience: int = 5

    def validate(self) -> "DataConfig":
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"data.{key}: {why}")

        if self.k_core is not None and self.k_core < 1:
            raise bad("k_core", "must be >= 1")
        for key in ("max_users", "sample_users"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise bad(key, "must be >= 1")
        if self.list_size < 1:
            raise bad("list_size", "must be >= 1")
        if self.n_candidates <= self.list_size:
            raise bad("n_candidates", f"must exceed list_size ({self.list_size})")
        if self.history_len < 1:
            raise bad("history_len", "must be >= 1")
        if self.fill not in typing.get_args(FillPolicy):
            raise bad("fill", f"must be one of {typing.get_args(FillPolicy)}, got {self.fill!r}")
        if self.n_folds < 2:
            raise bad("n_folds", "must be >= 2")
        if not 0.0 < self.mf_holdout < 1.0:
            raise bad("mf_holdout", "must be in (0, 1)")
        for key in ("mf_dim", "mf_batch_size", "mf_max_epochs", "mf_patience", "mf_negatives"):
            if getattr(self, key) < 1:
                raise bad(key, "must be >= 1")
        if self.mf_lr <= 0:
            raise bad("mf_lr", "must be > 0")
        if self.mf_init_std <= 0:
            raise bad("mf_init_std", "must be > 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The fields, less those in ``OMIT_AT_DEFAULT`` that are at their default, so that a field
        added later leaves the keys of existing records and cached lists unchanged."""
        out = dataclasses.asdict(self)
        for key in OMIT_AT_DEFAULT:
            if out[key] is None:
                del out[key]
        return out

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


OMIT_AT_DEFAULT = ("sample_users",)
"""DataConfig fields added after results were committed: left out of ``to_dict`` (and so out of
every record's config hash and every list-cache key) while they are None."""


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether ``value`` fits a field annotation (int for float is fine; bool is never an int)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(annotation))
    if origin is Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _checked(annotation: Any, key: str, value: Any, where: str) -> Any:
    """``value`` if it fits ``annotation`` (an int given for a float field becomes a float)."""
    if not _accepts(annotation, value):
        raise ConfigError(f"{where}: {key} = {value!r} does not fit type {annotation}")
    is_float = annotation is float or float in typing.get_args(annotation)
    return float(value) if is_float and isinstance(value, int) and not isinstance(value, bool) else value


def _apply(cls: type, base: Any, values: dict[str, Any], where: str) -> Any:
    """``base`` with ``values`` applied; unknown keys and ill-typed values name the key."""
    hints = typing.get_type_hints(cls)
    coerced = {}
    for key, value in values.items():
        if key not in hints:
            close = difflib.get_close_matches(key, sorted(hints), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{where}: unknown setting {key!r}{hint}")
        coerced[key] = _checked(hints[key], key, value, where)
    return dataclasses.replace(base, **coerced)


def parse_set_options(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["data.k_core=10", "data.fill='random'"]`` -> ``{"data": {"k_core": 10, "fill": "random"}}``.

    Values are TOML values; a bare word that is not valid TOML is taken as a string."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if "." not in key:
            raise ConfigError(f"--set {item!r}: key must be section.name, e.g. data.k_core")
        section, name = key.split(".", 1)
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out.setdefault(section, {})[name] = value
    return out


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The shared trainer's settings (paper App. D.2 Table 7 where it gives them)."""

    batch_size: int = 2048
    eval_batch_size: int = 4096
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_epochs: int = 200
    """Upper bound; the paper trains "until convergence", here early stopping decides."""
    patience: int = 10
    """Epochs without a better validation N@k before stopping (at least ``min_patience_steps`` steps)."""
    min_patience_steps: int = 150
    """Floor on the patience in optimiser steps: early stopping waits at least this many steps for an
    improvement, however few steps an epoch has. At Table 7's batch of 2048 a KuaiRand epoch is 3
    steps and an Amazon one 5, so 10 epochs were 30 and 50 steps, which ended GRU4Rec, DCDR, PIER
    and EGRerank before they learned (results/NOTES.md); 150 steps is twice the longest validation
    dip measured in their 40-epoch re-runs. 0 counts epochs only."""
    min_delta: float = 0.0
    grad_clip: float = 5.0
    """Max global gradient norm (0 = off)."""
    deterministic: bool = True
    max_train_requests: int | None = None
    """Use only the first N train requests (smoke runs)."""

    def validate(self) -> "TrainConfig":
        for key in ("batch_size", "eval_batch_size", "max_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: must be >= 1")
        if self.lr <= 0:
            raise ConfigError("train.lr: must be > 0")
        if self.patience < 1:
            raise ConfigError("train.patience: must be >= 1")
        if self.min_patience_steps < 0:
            raise ConfigError("train.min_patience_steps: must be >= 0")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.min_delta < 0:
            raise ConfigError("train.weight_decay, train.grad_clip and train.min_delta must be >= 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The fields; ``min_patience_steps`` = 0 (epochs only, the trainer before it existed) is left
        out, so ``--set train.min_patience_steps=0`` resolves to the config hash of a record made
        before it, and such a record counts as finished."""
        out = dataclasses.asdict(self)
        if out["min_patience_steps"] == 0:  # added after records were made; 0 = as before
            del out["min_patience_steps"]
        return out

    def steps_per_epoch(self, n_train: int) -> int:
        return -(-n_train // self.batch_size)

    def patience_epochs(self, n_train: int) -> int:
        """The patience early stopping applies, in epochs: ``patience``, raised so that it covers
        ``min_patience_steps`` optimiser steps of ``n_train`` requests."""
        return max(self.patience, -(-self.min_patience_steps // self.steps_per_epoch(n_train)))

    def patience_steps(self, n_train: int) -> int:
        """Optimiser steps early stopping waits for an improvement: the applied patience × steps per epoch."""
        return self.patience_epochs(n_train) * self.steps_per_epoch(n_train)


PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # the real configuration: defaults and the per-dataset TOML, nothing else
    "paper": {},
    # a tiny, fast configuration that exercises every code path: 150 users sampled after the
    # dataset's own k-core, 2 epochs of 512 requests, hidden size 32, and a DNR switch epoch of 1
    # so the learned generator runs too
    "smoke": {
        "data": {"sample_users": 150, "mf_dim": 16, "mf_max_epochs": 3, "mf_patience": 2},
        "train": {"max_epochs": 2, "patience": 1, "batch_size": 256, "max_train_requests": 512},
        "model": {"switch_epoch": 1, "hidden": 32},
    },
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run's result (its hash is the store's cache key)."""

    dataset: str
    method: str
    profile: str
    data: DataConfig
    train: TrainConfig
    model: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "method": self.method, "profile": self.profile,
                "data": self.data.to_dict(), "train": self.train.to_dict(), "model": self.model}

    def digest(self) -> str:
        payload = {k: v for k, v in self.to_dict().items() if k != "profile"}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def dataset_config_file(dataset: str) -> Path:
    return CONFIG_DIR / f"{dataset}.toml"


def dataset_tables(dataset: str) -> dict[str, Any]:
    path = dataset_config_file(dataset)
    if not path.exists():
        return {}
    with path.open("rb") as fh:
        tables = tomllib.load(fh)
    unknown = set(tables) - {"data", "train", "model", "methods"}
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {sorted(unknown)}; use data, train, model, methods.<slug>")
    return tables


def load_data_config(dataset: str, overrides: dict[str, Any] | None = None) -> DataConfig:
    """Resolve the data protocol for ``dataset``: defaults < its TOML ``[data]`` < overrides."""
    cfg = _apply(DataConfig, DataConfig(), dataset_tables(dataset).get("data", {}), str(dataset_config_file(dataset)))
    if overrides:
        cfg = _apply(DataConfig, cfg, overrides, "--set data")
    return cfg.validate()


def _check_model_value(cls: type, key: str, value: Any, where: str) -> Any:
    import inspect

    annotation = typing.get_type_hints(cls.__init__).get(key, inspect.Parameter.empty)
    return value if annotation is inspect.Parameter.empty else _checked(annotation, key, value, where)


def _backbone_keys(entry, backbone: str):
    """The backbone's registry entry and the keys of it that the wrapping method leaves to
    ``backbone_args`` (all but its ``backbone_controlled`` ones)."""
    from benchmark import registry

    inner = registry.get(backbone)
    return inner, registry.accepted_hparams(inner.cls) - set(getattr(entry.cls, "backbone_controlled", ()))


def _backbone_args(entry, backbone: str, overrides: list[tuple[str, Any, str, bool]], method: str) -> dict[str, Any]:
    """The backbone's resolved hyper-parameters, less those the wrapping method sets itself: its
    slug's defaults, then the layered ``overrides`` the backbone accepts (a key neither accepts is
    an error where the layer names this method, and ignored where the layer is generic)."""
    from benchmark import registry

    inner, accepted = _backbone_keys(entry, backbone)
    args = {k: v for k, v in inner.hyperparameters().items() if k in accepted}
    for key, value, where, generic in overrides:
        if key in accepted:
            args[key] = _check_model_value(inner.cls, key, value, where)
        elif not generic:
            options = sorted(registry.accepted_hparams(entry.cls) | accepted)
            close = difflib.get_close_matches(key, options, n=1)
            raise ConfigError(f"{where}: {method} (backbone {backbone}) has no hyper-parameter {key!r}"
                              + (f" (did you mean {close[0]!r}?)" if close else ""))
    return args


def resolve_run_config(dataset: str, method: str, profile: str = "paper",
                       settings: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """The full configuration of one (dataset, method) run; see the module docstring for the
    layers. ``settings`` is ``parse_set_options`` output."""
    from benchmark import registry

    if profile not in PROFILES:
        close = difflib.get_close_matches(profile, list(PROFILES), n=1)
        raise ConfigError(f"unknown profile {profile!r}" + (f"; did you mean {close[0]}?" if close else "")
                          + f" (choose from {', '.join(PROFILES)})")
    settings = settings or {}
    prof = PROFILES[profile]
    tables = dataset_tables(dataset)
    where = str(dataset_config_file(dataset))

    data = _apply(DataConfig, DataConfig(), tables.get("data", {}), where)
    data = _apply(DataConfig, data, prof.get("data", {}), f"profile {profile}")
    data = _apply(DataConfig, data, settings.get("data", {}), "--set data").validate()
    train = _apply(TrainConfig, TrainConfig(), tables.get("train", {}), where)
    train = _apply(TrainConfig, train, prof.get("train", {}), f"profile {profile}")
    train = _apply(TrainConfig, train, settings.get("train", {}), "--set train").validate()

    entry = registry.get(method)
    accepted = registry.accepted_hparams(entry.cls)
    model = entry.hyperparameters()
    # A method that wraps a backbone (DNR) takes the backbone's other hyper-parameters through
    # ``backbone_args``; keys only the backbone accepts are collected here and checked once the
    # backbone slug is known (it may itself be set by a layer).
    wraps = "backbone_args" in accepted
    for_backbone: list[tuple[str, Any, str, bool]] = []

    def layer(values: dict[str, Any], where: str, generic: bool) -> None:
        for key, value in values.items():
            if key == "backbone_args":
                raise ConfigError(f"{where}: set the backbone's keys directly (e.g. n_heads = 8), not backbone_args")
            if key not in accepted:
                if wraps:
                    for_backbone.append((key, value, where, generic))
                    continue
                if generic:
                    continue
                close = difflib.get_close_matches(key, sorted(accepted), n=1)
                raise ConfigError(f"{where}: {method} has no hyper-parameter {key!r}"
                                  + (f" (did you mean {close[0]!r}?)" if close else ""))
            model[key] = _check_model_value(entry.cls, key, value, where)

    methods_table = tables.get("methods", {})
    unknown_slugs = set(methods_table) - set(registry.available())
    if unknown_slugs:
        raise ConfigError(f"{where}: [methods.*] names unknown method(s) {sorted(unknown_slugs)}")
    layer(tables.get("model", {}), where, generic=True)
    layer(methods_table.get(method, {}), f"{where} [methods.{method}]", generic=False)
    layer(prof.get("model", {}), f"profile {profile}", generic=True)
    layer(settings.get("model", {}), "--set model", generic=True)
    layer(settings.get(method, {}), f"--set {method}", generic=False)
    if wraps:
        model["backbone_args"] = _backbone_args(entry, model["backbone"], for_backbone, method)
    return RunConfig(dataset=dataset, method=method, profile=profile, data=data, train=train, model=model)


def _settable(entry, settings: dict[str, dict[str, Any]] | None = None) -> set[str]:
    """Model keys a ``--set model.KEY`` may name for this method: its own, and for a method that
    wraps a backbone, the backbone's that it does not set itself (the backbone ``settings`` choose
    with ``<method>.backbone`` or ``model.backbone``, else the method's default)."""
    from benchmark import registry

    keys = registry.accepted_hparams(entry.cls)
    if "backbone_args" in keys:
        settings = settings or {}
        backbone = settings.get(entry.slug, {}).get("backbone", settings.get("model", {}).get(
            "backbone", entry.hyperparameters()["backbone"]))
        if backbone in registry.available():
            keys = (keys - {"backbone_args"}) | _backbone_keys(entry, backbone)[1]
        else:
            keys = keys - {"backbone_args"}  # an unknown backbone is reported when the config resolves
    return keys


def check_settings(settings: dict[str, dict[str, Any]], methods: list[str]) -> None:
    """Reject ``--set`` sections and model keys that no selected method can use."""
    from benchmark import registry

    for section, values in settings.items():
        if section in ("data", "train"):
            continue
        if section == "model":
            accepted = set().union(*(_settable(registry.get(m), settings) for m in methods))
            for key in values:
                if key not in accepted:
                    raise ConfigError(f"--set model.{key}: none of the selected methods has this hyper-parameter")
        elif section not in registry.available():
            close = difflib.get_close_matches(section, ["data", "train", "model", *registry.available()], n=1)
            raise ConfigError(f"--set {section}.…: unknown section {section!r}"
                              + (f" (did you mean {close[0]}?)" if close else "")
                              + "; use data.KEY, train.KEY, model.KEY or <method>.KEY")
