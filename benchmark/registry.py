"""Registry of method slugs (architecture.md §3).

``@register("prm")`` on a :class:`~benchmark.api.Reranker` subclass; variants are default
overrides of one class: ``register_variant("prm-large", base="prm", n_layers=4)``. The method
packages are imported here, lazily and in one place; nothing else imports a method by name.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
from typing import Any

from benchmark.errors import ConfigError, UserInputError

METHOD_PACKAGES = ("baselines", "dnr")


@dataclasses.dataclass(frozen=True)
class Entry:
    slug: str
    cls: type
    defaults: dict[str, Any]
    """Overrides of the class's keyword defaults (empty for a base registration)."""
    family: str
    doc: str
    groups: tuple[str, ...]

    def hyperparameters(self) -> dict[str, Any]:
        """Every keyword argument of the class with the value this slug uses by default."""
        params = inspect.signature(self.cls.__init__).parameters
        out = {name: p.default for name, p in params.items()
               if name not in ("self", "spec") and p.kind is inspect.Parameter.KEYWORD_ONLY}
        out.update(self.defaults)
        return out


_REGISTRY: dict[str, Entry] = {}
_loaded = False



def accepted_hparams(cls: type) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_hparams(cls: type, keys, slug: str = "") -> None:
    unknown = set(keys) - accepted_hparams(cls)
    if unknown:
        close = {k: difflib.get_close_matches(k, sorted(accepted_hparams(cls)), n=1) for k in unknown}
        hints = ", ".join(f"{k!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for k, c in sorted(close.items()))
        raise ConfigError(f"{slug or cls.__name__} has no hyper-parameter {hints}")


def _check_names(slug: str, groups: tuple[str, ...]) -> None:
    """Slugs and group names share one namespace, ``--methods``: a group named like a slug would
    make ``--methods NAME`` run the whole group (``resolve`` expands groups), not the one method."""
    if slug in _REGISTRY:
        raise ValueError(f"method slug {slug!r} registered twice")
    taken = {g for e in _REGISTRY.values() for g in e.groups} | {"all"}
    clash = sorted(({slug} & taken) | (set(groups) & (set(_REGISTRY) | {slug, "all"})))
    if clash:
        raise ValueError(f"{clash} would name both a method and a group: `--methods` could not tell them apart")


def register(slug: str, groups: tuple[str, ...] = ()):
    """Class decorator: register ``cls`` under ``slug``. Hyper-parameters must be keyword-only
    arguments of ``__init__(self, spec, *, ...)`` with defaults."""

    def wrap(cls: type) -> type:
        _check_names(slug, tuple(groups))
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[slug] = Entry(slug, cls, {}, cls.family, doc, tuple(groups))
        return cls

    return wrap


def register_variant(slug: str, base: str, doc: str = "", groups: tuple[str, ...] | None = None,
                     **overrides: Any) -> None:
    """Register ``slug`` as ``base`` with other default hyper-parameters."""
    parent = _REGISTRY[base]
    groups = parent.groups if groups is None else tuple(groups)
    _check_names(slug, groups)
    _check_hparams(parent.cls, overrides)
    _REGISTRY[slug] = Entry(slug, parent.cls, {**parent.defaults, **overrides}, parent.family,
                            doc or parent.doc, groups)


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for package in METHOD_PACKAGES:
            importlib.import_module(package)


def available() -> dict[str, Entry]:
    _load()
    return dict(_REGISTRY)


def group_names() -> list[str]:
    """``all`` and every group some method declares (baselines, dnr, reference, ...)."""
    return ["all", *sorted({g for e in available().values() for g in e.groups})]


def get(slug: str) -> Entry:
    entries = available()
    if slug not in entries:
        close = difflib.get_close_matches(slug, [*entries, *group_names()], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserInputError(f"unknown method {slug!r}{hint} (see python -m benchmark --list)")
    return entries[slug]


def resolve(names: list[str]) -> list[str]:
    """Expand group names (``all``, ``baselines``, ``dnr``, ...) and check every slug, keeping
    registry order and dropping repeats."""
    entries = available()
    out: list[str] = []
    for name in names:
        name = name.strip().lower()
        if not name:
            continue
        if name == "all":
            picked = list(entries)
        elif name in group_names():
            picked = [s for s, e in entries.items() if name in e.groups]
        else:
            picked = [get(name).slug]
        out.extend(s for s in picked if s not in out)
    if not out:
        raise UserInputError("no method selected")
    return out


def build(slug: str, spec, **hparams: Any):
    """Instantiate ``slug`` with its defaults overridden by ``hparams``."""
    entry = get(slug)
    _check_hparams(entry.cls, hparams, slug)
    return entry.cls(spec, **{**entry.defaults, **hparams})
