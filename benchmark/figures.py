"""The report's figures (issue 6): a pure function of the stored run records; it never trains.

    python -m benchmark.figures [--results-dir results] [--out-dir results/figures] [--datasets ml-1m,kuairand]

Each figure is drawn on matplotlib's Agg canvas (no display and no pyplot state, so it runs headless
and in worker processes) and saved as PNG and PDF, without timestamps: the same records give the same
files. A figure whose inputs are absent is not drawn; :func:`skipped` says why (the report's index
prints it), and a multi-panel figure names the panels it left out the same way.

``fig3_sensitivity``
    The paper's Figure 3: test N@6 against the value of one swept setting, one panel per swept key,
    one line per dataset and method. Inputs: the sweep points written by
    ``python -m benchmark --sweep KEY=V1,V2,...`` under ``<results-dir>/sweeps/<KEY>=<V>/``. A point is
    the mean over its finished seeds, with a min–max bar over seeds when there are several. The
    dotted vertical line in a line's colour is the value the main runs use for that dataset and
    method (the registry default < the dataset's TOML < the profile, without ``--set``).
``fig5_noise``
    The paper's Figure 5: densities on [0, 1] of the noise ε each DNR generator fed into Eq. 4, against
    the real noise ε_real = (x − (1−α)z)/α that the retriever scores x imply for the feedback z; one
    panel per dataset. Inputs: the 20-bin histograms DNR logs every epoch (``dnr/model.py``
    ``epoch_log``, ``dnr/noise.py`` ``NoiseMonitor``), over all real candidates of the training
    requests. Histograms clip to [0, 1] *before* counting, so the edge bins of the N(0, 1) noise and of
    ε_real hold everything below 0 / above 1; the curves are step densities of those bins, exactly what
    was logged. A learned curve is read at the selected (best validation) epoch when f_φ was in use
    there, else at the last epoch it was; a heuristic curve likewise at an epoch the heuristic was in use.
``validation_<dataset>``
    Validation N@6 per trained epoch, one line per method (its lowest finished seed, normally seed 0)
    and one panel per method family (the DNR rows split into main rows, Table 3 ablations, PIER
    backbone and larger backbone, so that no panel holds a dozen lines); a star marks the epoch training selected (the best validation
    N@6 of the final stage), dotted lines mark stage changes of multi-stage methods; methods without
    training (retriever, random) are horizontal dashed lines.
``cost_quality``
    Test N@6 (mean over seeds) against training seconds per epoch (``summary.epoch_seconds``: a
    run's median epoch per stage, mean over seeds), log x, one panel per dataset; the title warns
    when the timings come from more than one machine / device / thread setting, since they are then
    not comparable.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from adjustText import adjust_text
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from benchmark import registry, store
from benchmark.api import FAMILIES
from benchmark.cli import SWEEP_DIR
from benchmark.config import parse_set_options, resolve_run_config
from benchmark.errors import ConfigError, UserInputError
from benchmark.summary import epoch_seconds, timing_setting

METRIC = "N@6"
DATASET_ORDER = ("ml-1m", "kuairand", "amazon-books")
KEY_LABELS = {
    "alpha": "α: share of noise in x′ (Eq. 4)",
    "lam": "λ: weight of the loss on x′ (Eq. 6)",
    "switch_epoch": "T: epoch after which f_φ replaces the heuristic",
}
# Figure 5: where each curve comes from, in order of preference (heuristic-only runs first, since
# they log that heuristic for every epoch; a DNR run logs it only up to its switch epoch T).
HEURISTIC_SOURCES = ("dnr-g-heuristic", "dnr-b-heuristic", "dnr-g", "dnr-b", "dnr-bl")
LEARNED_SOURCES = ("dnr-b", "dnr-g", "dnr-bl")
PNG_DPI = 150


# ------------------------------------------------------------------------------------------------
# reading records


def _ok_records(root: Path) -> list[dict[str, Any]]:
    """Finished (status ok) records under ``root/runs`` (none when the folder does not exist)."""
    return [r for r in store.all_records(root) if r.get("status") == "ok"]


def _ordered(datasets) -> list[str]:
    present = set(datasets)
    return [d for d in DATASET_ORDER if d in present] + sorted(present - set(DATASET_ORDER))


def _names():
    from benchmark.tables import dataset_name, method_name  # the report's display names

    return dataset_name, method_name


def _family(method: str) -> str:
    try:
        return registry.get(method).family
    except UserInputError:  # a record of a method no longer registered
        return "other"


def sweep_roots(results_dir: Path) -> list[tuple[str, str, Any, Path]]:
    """Every sweep point under ``results_dir/sweeps``: (key, setting name, value, its results root).

    A point's folder is named ``<KEY>=<V>`` (``benchmark.cli.sweep_value_name``), which is itself a
    ``--set`` item, so it is parsed exactly as ``--set`` parses; folders that are not are ignored."""
    base = Path(results_dir) / SWEEP_DIR
    out = []
    for folder in sorted(base.iterdir()) if base.is_dir() else []:
        if not folder.is_dir():
            continue
        try:
            parsed = parse_set_options([folder.name])
        except ConfigError:
            continue
        (section, values), = parsed.items()
        (name, value), = values.items()
        out.append((f"{section}.{name}", name, value, folder))
    return out


def _context(config: dict[str, Any], key: str) -> str:
    """A short hash of a run's configuration without the swept setting: runs of one line must share
    it (else the line would mix, e.g., points run with and without some other ``--set``)."""
    section, name = key.split(".", 1)
    rest = copy.deepcopy(config)
    rest.get(section if section in ("data", "train") else "model", {}).pop(name, None)
    return hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:8]


SENSITIVITY_COLUMNS = ["key", "name", "value", "dataset", "method", "seed", "profile", "context", METRIC]


def sensitivity_frame(results_dir: Path, datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per finished run of every sweep point: key, setting name, value, dataset, method,
    seed, profile, ``context`` (``_context``: the configuration apart from the swept key) and the
    test N@6 (a fraction, as stored)."""
    rows = []
    for key, name, value, root in sweep_roots(results_dir):
        for r in _ok_records(root):
            if datasets is not None and r["dataset"] not in datasets:
                continue
            rows.append({"key": key, "name": name, "value": value, "dataset": r["dataset"], "method": r["method"],
                         "seed": r["seed"], "profile": r["config"]["profile"], "context": _context(r["config"], key),
                         METRIC: r["metrics"]["test"][METRIC]})
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)


def _value_order(value: Any) -> tuple:
    """Numbers by size, then anything else by its text (a key's values are one kind in practice)."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, float(value), "") if numeric else (1, 0.0, str(value))


LINE = ["key", "dataset", "method", "profile", "context"]


def sensitivity_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per line (key, dataset, method, profile, context) and value: mean, min, max and std
    (ddof 1; NaN for one seed) of the test N@6 over seeds, and the seed count ``n``; sorted by value
    within each line."""
    rows = []
    for line_key, line in frame.groupby(LINE, sort=True):
        by_value: dict[str, tuple[Any, list[float]]] = {}
        for value, metric in zip(line["value"], line[METRIC]):
            by_value.setdefault(repr(value), (value, []))[1].append(float(metric))
        for value, values in sorted(by_value.values(), key=lambda item: _value_order(item[0])):
            v = np.asarray(values)
            rows.append({**dict(zip(LINE, line_key)), "value": value, "mean": float(v.mean()),
                         "min": float(v.min()), "max": float(v.max()),
                         "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan, "n": len(v)})
    return pd.DataFrame(rows, columns=[*LINE, "value", "mean", "min", "max", "std", "n"])


def default_value(key: str, dataset: str, method: str, profile: str = "paper") -> Any:
    """The value of setting ``key`` (``data.X``, ``train.X``, ``model.X`` or ``<method>.X``) that a
    run of ``method`` on ``dataset`` uses without ``--set``; None if the method has no such setting
    or the configuration cannot be resolved."""
    section, name = key.split(".", 1)
    try:
        cfg = resolve_run_config(dataset, method, profile)
    except UserInputError:
        return None
    if section == "data":
        return cfg.data.to_dict().get(name)
    if section == "train":
        return cfg.train.to_dict().get(name)
    return cfg.model.get(name)


@dataclasses.dataclass(frozen=True)
class NoiseDensities:
    """The noise histograms one DNR record logged for one trained epoch, as densities on their range."""

    method: str
    seed: int
    epoch: int
    generator: str
    """"heuristic" or "learned": the generator of ε that epoch."""
    heuristic: str
    """The heuristic's description, e.g. "Beta(0.5, 0.5)" or "N(0, 1)"."""
    alpha: float
    edges: np.ndarray
    density: dict[str, np.ndarray]
    """Per histogram ("eps", "eps_real", "abs_gap"): count / (n · bin width), so Σ density · width = 1."""
    n: dict[str, int]


def _noise_entry(record: dict[str, Any], epoch: int) -> dict[str, Any] | None:
    for entry in record.get("history") or []:
        if entry.get("epoch") == epoch and "noise" in entry:
            return entry
    return None


def noise_densities(record: dict[str, Any], epoch: int | None = None) -> NoiseDensities:
    """The histograms logged at ``epoch`` (default: the record's selected ``best_epoch``) as
    densities. Raises UserInputError when that epoch logged no noise (not a DNR run)."""
    epoch = record.get("best_epoch") if epoch is None else epoch
    entry = _noise_entry(record, epoch)
    where = f"{record.get('dataset')}/{record.get('method')}/seed{record.get('seed')}"
    if entry is None:
        raise UserInputError(f"{where}: no noise histograms logged at epoch {epoch} (not a DNR run?)")
    noise = entry["noise"]
    lo, hi = noise.get("range", [0.0, 1.0])
    bins = int(noise["bins"])
    edges = np.linspace(lo, hi, bins + 1)
    width = (hi - lo) / bins
    density, counts = {}, {}
    for name, value in noise.items():
        if isinstance(value, dict) and "hist" in value:
            hist = np.asarray(value["hist"], dtype=float)
            if len(hist) != bins or hist.sum() <= 0:
                raise UserInputError(f"{where}: epoch {epoch} histogram {name!r} has {len(hist)} bins "
                                     f"(expected {bins}) or no samples")
            density[name] = hist / (hist.sum() * width)
            counts[name] = int(hist.sum())
    return NoiseDensities(method=record["method"], seed=int(record["seed"]), epoch=int(epoch),
                          generator=noise["generator"], heuristic=noise["heuristic"], alpha=float(noise["alpha"]),
                          edges=edges, density=density, n=counts)


def _epoch_with(record: dict[str, Any], generator: str) -> int | None:
    """The selected epoch if ``generator`` produced ε there, else the last epoch it did (None: never)."""
    used = [e["epoch"] for e in record.get("history") or [] if e.get("noise", {}).get("generator") == generator]
    if not used:
        return None
    return record["best_epoch"] if record.get("best_epoch") in used else used[-1]


@dataclasses.dataclass(frozen=True)
class NoiseCurve:
    label: str
    kind: str
    """"heuristic", "learned" or "real"."""
    source: NoiseDensities
    histogram: str
    """Which histogram of ``source`` is drawn: "eps" (generated) or "eps_real"."""

    @property
    def density(self) -> np.ndarray:
        return self.source.density[self.histogram]


def noise_curves(records: Sequence[dict[str, Any]]) -> list[NoiseCurve]:
    """Figure 5's curves from one dataset's finished DNR records: each distinct heuristic (N(0, 1),
    Beta(0.5, 0.5), Beta(2, 5)), the learned f_φ of DNR-B / DNR-G / DNR-BL, and the real noise ε_real
    (taken from the first learned curve's record and epoch, else the first heuristic's). Each
    method's lowest finished seed is used."""
    _, method_name = _names()
    first: dict[str, dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: (r["method"], r["seed"])):
        if any("noise" in e for e in r.get("history") or []):
            first.setdefault(r["method"], r)
    curves: list[NoiseCurve] = []
    seen: set[str] = set()
    for method in HEURISTIC_SOURCES:
        if method not in first or (epoch := _epoch_with(first[method], "heuristic")) is None:
            continue
        dens = noise_densities(first[method], epoch)
        if dens.heuristic in seen:
            continue
        seen.add(dens.heuristic)
        tails = " (tails in the edge bins)" if dens.heuristic.startswith("N(") else ""
        curves.append(NoiseCurve(f"{dens.heuristic} heuristic ε{tails} [{method_name(method)}, ep {epoch}]",
                                 "heuristic", dens, "eps"))
    for method in LEARNED_SOURCES:
        if method in first and (epoch := _epoch_with(first[method], "learned")) is not None:
            dens = noise_densities(first[method], epoch)
            curves.append(NoiseCurve(f"learned f_φ ε [{method_name(method)}, ep {epoch}]", "learned", dens, "eps"))
    if curves:
        ref = next((c for c in curves if c.kind == "learned"), curves[0]).source
        curves.append(NoiseCurve(f"real ε_real = (x − (1−α)z)/α, clipped, α = {ref.alpha:g} "
                                 f"[{method_name(ref.method)}, ep {ref.epoch}]", "real", ref, "eps_real"))
    return curves


def validation_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Validation N@6 per trained epoch of each method's lowest finished seed: method, family, seed,
    step (1, 2, ... over all stages), stage, epoch, val (fraction) and ``best`` (the epoch training
    selected: ``best_epoch`` of the final stage)."""
    rows = []
    chosen: dict[str, dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: (r["method"], r["seed"])):
        chosen.setdefault(r["method"], r)
    for method, r in chosen.items():
        history = r.get("history") or []
        last_stage = history[-1]["stage"] if history else None
        for step, entry in enumerate(history, 1):
            if "val" not in entry:  # an epoch the stage did not validate (Stage.eval_every)
                continue
            rows.append({"method": method, "family": _family(method), "seed": r["seed"], "step": step,
                         "stage": entry["stage"], "epoch": entry["epoch"], "val": entry["val"][METRIC],
                         "best": entry["stage"] == last_stage and entry["epoch"] == r.get("best_epoch")})
    return pd.DataFrame(rows, columns=["method", "family", "seed", "step", "stage", "epoch", "val", "best"])


def cost_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Per dataset and trained method: mean test N@6 and mean seconds per epoch over its finished
    seeds, the seed count, and how many distinct (host, device, torch threads) the timings came from."""
    rows = []
    for r in records:
        rows.append({"dataset": r["dataset"], "method": r["method"], "family": _family(r["method"]),
                     METRIC: r["metrics"]["test"][METRIC], "sec_per_epoch": epoch_seconds(r),
                     "machine": timing_setting(r)})
    frame = pd.DataFrame(rows, columns=["dataset", "method", "family", METRIC, "sec_per_epoch", "machine"])
    frame["sec_per_epoch"] = pd.to_numeric(frame["sec_per_epoch"])
    return frame.groupby(["dataset", "method", "family"], as_index=False).agg(
        **{METRIC: (METRIC, "mean"), "sec_per_epoch": ("sec_per_epoch", "mean"), "n": (METRIC, "size"),
           "machines": ("machine", "nunique")})


# ------------------------------------------------------------------------------------------------
# drawing


@dataclasses.dataclass
class _Plan:
    name: str
    draw: Callable[[], Figure] | None
    reason: str | None = None
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    """Panels left out of a drawn figure: panel name -> why."""


def _grid(n: int, ncols: int, width: float = 4.4, height: float = 3.4) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _title(fig: Figure, text: str) -> None:
    """A figure title wrapped to the figure's width (constrained layout clips what is wider)."""
    chars = int(fig.get_figwidth() * 11)
    fig.suptitle(textwrap.fill(text, chars), fontsize=10)


def _legend_below(ax) -> None:
    """The legend under the axes (one entry per line: the labels are long), out of the data's way."""
    ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)


def _references(ax, values: dict[str, float], method_name) -> None:
    """Untrained reference rows (retriever, random) as grey horizontal lines, one line style each."""
    for (method, value), style in zip(sorted(values.items()), ("--", ":", "-.", (0, (5, 1, 1, 1)))):
        ax.axhline(100 * value, color="grey", ls=style, lw=1.2, label=f"{method_name(method)} (no training)")


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _draw_sensitivity(summary: pd.DataFrame) -> Figure:
    dataset_name, method_name = _names()
    keys = list(dict.fromkeys(summary["key"]))
    fig, axes = _grid(len(keys), 3)
    for ax, key in zip(axes, keys):
        part = summary[summary["key"] == key]
        name = key.split(".", 1)[1]
        numeric = _numeric(part["value"])
        categories = sorted({repr(v): v for v in part["value"]}.values(), key=_value_order)
        known = [repr(c) for c in categories]
        position = (lambda v: v) if numeric else (lambda v: known.index(repr(v)))
        contexts = part.groupby(["dataset", "method"])["context"].nunique()
        for (dataset, method, profile, context), line in part.groupby(LINE[1:], sort=False):
            spread = line["n"].to_numpy() > 1
            err = np.where(spread, 100 * np.vstack([line["mean"] - line["min"], line["max"] - line["mean"]]), 0.0)
            seeds = sorted(set(line["n"]))
            label = (f"{dataset_name(dataset)} · {method_name(method)} (seeds: {seeds[0]}"
                     + (f"–{seeds[-1]}" if len(seeds) > 1 else "") + ")"
                     + (f" [{profile}]" if profile != "paper" else "")
                     + (f" [config {context}]" if contexts[(dataset, method)] > 1 else ""))
            drawn = ax.errorbar([position(v) for v in line["value"]], 100 * line["mean"].to_numpy(),
                                yerr=err if spread.any() else None, marker="o", ms=4, capsize=3, label=label)
            default = default_value(key, dataset, method, profile)
            if default is not None and (_numeric([default]) if numeric else repr(default) in known):
                ax.axvline(position(default), color=drawn.lines[0].get_color(), ls=":", lw=1.2)
        if not numeric:
            ax.set_xticks(range(len(categories)), [str(c) for c in categories])
        elif len(categories) <= 12:
            ax.set_xticks([float(c) for c in categories], [f"{c:g}" for c in categories])
        ax.set_xlabel(KEY_LABELS.get(name, name) + f"\n(--sweep {key})", fontsize=8)
        ax.set_ylabel("test N@6 (×100)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _title(fig, "Sensitivity (Figure 3): test N@6, mean over seeds, bars min–max over seeds; dotted: the value "
                "the main runs use")
    return fig


def _draw_noise(panels: dict[str, list[NoiseCurve]]) -> Figure:
    dataset_name, _ = _names()
    fig, axes = _grid(len(panels), 3, width=5.2, height=3.8)
    styles = {"heuristic": dict(ls="--", lw=1.3), "learned": dict(ls="-", lw=2.0), "real": dict(ls="-", lw=2.0,
                                                                                              color="black")}
    for ax, (dataset, curves) in zip(axes, panels.items()):
        for curve in curves:
            ax.stairs(curve.density, curve.source.edges, label=curve.label, **styles[curve.kind])
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"ε ({len(curves[0].source.edges) - 1} bins on [0, 1])")
        ax.set_ylabel("density (symlog)")
        ax.set_title(dataset_name(dataset), fontsize=10)
        ax.grid(alpha=0.3)
        _legend_below(ax)
    _title(fig, "Noise densities (Figure 5): the ε each generator fed into Eq. 4 and the real ε implied by the "
                "retriever scores, over all candidates of the training requests")
    return fig


PANEL_NAMES = {"dnr": "DNR (ours)", "dnr-ablations": "DNR ablations (Table 3)", "dnr-on-pier": "DNR on PIER",
               "large": "Larger backbone (Table 10)"}


def _panel(method: str) -> str:
    """Small-multiple panel of a method: its family's display name; DNR methods split by registry
    group (main rows, ablations, PIER backbone, large), so no panel holds a dozen lines."""
    from benchmark.tables import FAMILY_NAMES

    family = _family(method)
    if family == "dnr":
        groups = registry.get(method).groups
        return PANEL_NAMES.get(groups[0] if groups else "dnr", "DNR (ours)")
    return FAMILY_NAMES.get(family, family)


def _panel_order(method: str) -> tuple:
    family = _family(method)
    return (FAMILIES.index(family) if family in FAMILIES else len(FAMILIES), _panel(method), method)


def _draw_validation(dataset: str, frame: pd.DataFrame, references: dict[str, float]) -> Figure:
    dataset_name, method_name = _names()
    panels = list(dict.fromkeys(_panel(m) for m in sorted(set(frame["method"]), key=_panel_order)))
    fig, axes = _grid(len(panels), 3)
    for ax, panel in zip(axes, panels):
        part = frame[[_panel(m) == panel for m in frame["method"]]]
        for method, line in part.groupby("method", sort=False):
            drawn, = ax.plot(line["step"], 100 * line["val"], lw=1.3, label=f"{method_name(method)} (seed "
                                                                              f"{line['seed'].iloc[0]})")
            best = line[line["best"]]
            ax.plot(best["step"], 100 * best["val"], marker="*", ms=11, ls="none", color=drawn.get_color())
            changes = line["step"][line["stage"].ne(line["stage"].shift()) & (line["step"] > 1)]
            for step in changes:
                ax.axvline(step - 0.5, color=drawn.get_color(), ls=":", lw=1)
        _references(ax, references, method_name)
        ax.set_title(panel, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trained epoch (all stages)")
        ax.set_ylabel("validation N@6 (×100)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _title(fig, f"{dataset_name(dataset)}: validation N@6 per trained epoch (each method's lowest finished seed); "
                "★ the epoch training selected; dotted: a stage change")
    return fig


def _draw_cost(panels: dict[str, pd.DataFrame], references: dict[str, dict[str, float]],
               machines: dict[str, int]) -> Figure:
    from benchmark.tables import FAMILY_NAMES

    dataset_name, method_name = _names()
    fig, axes = _grid(len(panels), 3, width=5.0, height=4.6)
    labels: list[tuple[Any, list, pd.DataFrame]] = []
    for ax, (dataset, part) in zip(axes, panels.items()):
        for family, group in part.groupby("family", sort=False):
            color = f"C{FAMILIES.index(family) % 10}" if family in FAMILIES else "black"  # same in every panel
            ax.scatter(group["sec_per_epoch"], 100 * group[METRIC], s=22, color=color,
                       label=FAMILY_NAMES.get(family, family))
        texts = [ax.text(row["sec_per_epoch"], 100 * row[METRIC], method_name(row["method"]), fontsize=6)
                 for _, row in part.iterrows()]
        labels.append((ax, texts, part))
        _references(ax, references.get(dataset, {}), method_name)
        ax.set_xscale("log")
        ax.margins(x=0.12, y=0.08)  # room at the edges for the labels moved off a crowded cluster
        for axis_set in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis_set(LogFormatter())  # plain numbers (56.5, 100), not 5.65×10¹
        ax.set_xlabel("training seconds per epoch (log)")
        ax.set_ylabel("test N@6 (×100, mean over seeds)")
        warn = (f"\n(timings from {machines[dataset]} host/device/thread settings: not comparable)"
                if machines.get(dataset, 1) > 1 else "")
        ax.set_title(dataset_name(dataset) + warn, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        _legend_below(ax)
    _title(fig, "Quality against training cost: test N@6 and training seconds per epoch (each run's median "
                "epoch), means over seeds")
    # Methods cluster at similar costs: a library that moves labels apart (and draws a leader line
    # to each moved one) keeps every name readable; it needs the final layout, hence the draw first.
    fig.canvas.draw()
    for ax, texts, part in labels:
        adjust_text(texts, x=part["sec_per_epoch"].to_numpy(), y=100 * part[METRIC].to_numpy(), ax=ax,
                    expand=(1.4, 1.9), force_text=(0.4, 0.8), max_move=(20, 20), iter_lim=3000,
                    arrowprops={"arrowstyle": "-", "color": "0.45", "lw": 0.5})
    return fig


def _plans(results_dir: Path, datasets: Sequence[str] | None) -> list[_Plan]:
    results_dir = Path(results_dir)
    records = _ok_records(results_dir)
    sweep = sensitivity_frame(results_dir, datasets)
    if datasets is None:
        datasets = _ordered({r["dataset"] for r in records} | set(sweep["dataset"]))
    datasets = list(datasets)
    records = [r for r in records if r["dataset"] in datasets]
    by_dataset = {d: [r for r in records if r["dataset"] == d] for d in datasets}
    plans: list[_Plan] = []

    # Figure 3
    if sweep.empty:
        plans.append(_Plan("fig3_sensitivity", None, f"no finished sweep runs under {results_dir / SWEEP_DIR} for "
                                                     f"{', '.join(datasets) or 'any dataset'} (run python -m "
                                                     "benchmark --sweep KEY=V1,V2,...)"))
    else:
        summary = sensitivity_summary(sweep)
        plans.append(_Plan("fig3_sensitivity", lambda: _draw_sensitivity(summary)))

    # Figure 5
    panels, notes = {}, {}
    for d in datasets:
        curves = noise_curves(by_dataset[d])
        if any(c.kind != "real" for c in curves):
            panels[d] = curves
        else:
            notes[f"fig5_noise/{d}"] = "no finished DNR run with logged noise histograms"
    plans.append(_Plan("fig5_noise", (lambda: _draw_noise(panels)) if panels else None,
                       None if panels else f"no finished DNR run with noise histograms on {', '.join(datasets)}",
                       notes if panels else {}))

    # validation curves, one figure per dataset
    for d in datasets:
        frame = validation_frame(by_dataset[d])
        refs: dict[str, float] = {}  # untrained reference rows: their validation N@6 (lowest seed)
        for r in sorted(by_dataset[d], key=lambda r: (r["method"], r["seed"])):
            if not r.get("history") and _family(r["method"]) == "reference":
                refs.setdefault(r["method"], r["metrics"]["val"][METRIC])
        if frame.empty:
            plans.append(_Plan(f"validation_{d}", None, f"no finished run with a training history on {d}"))
        else:
            plans.append(_Plan(f"validation_{d}", lambda d=d, frame=frame, refs=refs: _draw_validation(d, frame,
                                                                                                       refs)))

    # quality against cost
    cost = cost_frame(records)
    panels_c, notes_c, refs_c, machines = {}, {}, {}, {}
    for d in datasets:
        part = cost[cost["dataset"] == d]
        timed = part[part["sec_per_epoch"] > 0]
        refs_c[d] = dict(zip(part.loc[part["sec_per_epoch"].isna(), "method"], part.loc[part["sec_per_epoch"].isna(),
                                                                                       METRIC]))
        machines[d] = len({timing_setting(r) for r in by_dataset[d] if r.get("seconds_per_epoch")})
        if timed.empty:
            notes_c[f"cost_quality/{d}"] = "no finished trained run with seconds_per_epoch"
        else:
            panels_c[d] = timed
    plans.append(_Plan("cost_quality", (lambda: _draw_cost(panels_c, refs_c, machines)) if panels_c else None,
                       None if panels_c else f"no finished trained run on {', '.join(datasets) or 'any dataset'}",
                       notes_c if panels_c else {}))
    return plans


def _save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """PNG and PDF without timestamps (same figure, same bytes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png, pdf = out_dir / f"{name}.png", out_dir / f"{name}.pdf"
    fig.savefig(png, dpi=PNG_DPI)
    fig.savefig(pdf, metadata={"CreationDate": None})
    return [png, pdf]


def render_all(results_dir: Path, out_dir: Path, datasets: Sequence[str] | None = None) -> list[Path]:
    """Draw every figure whose inputs exist under ``results_dir`` into ``out_dir``; return the files
    written (PNG and PDF of each). ``datasets``: which datasets (default: all with records)."""
    files: list[Path] = []
    for plan in _plans(results_dir, datasets):
        if plan.draw is not None:
            files += _save(plan.draw(), Path(out_dir), plan.name)
    return files


def skipped(results_dir: Path, datasets: Sequence[str] | None = None) -> dict[str, str]:
    """Figure (or ``figure/panel``) name -> why it is not drawn, for the same inputs as ``render_all``."""
    out: dict[str, str] = {}
    for plan in _plans(results_dir, datasets):
        if plan.draw is None:
            out[plan.name] = plan.reason or "no inputs"
        out.update(plan.notes)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.figures", description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--out-dir", type=Path, help="default: <results-dir>/figures")
    p.add_argument("--datasets", help="comma-separated (default: every dataset with records)")
    args = p.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
    files = render_all(args.results_dir, args.out_dir or args.results_dir / "figures", datasets)
    for f in files:
        print(f)
    for name, why in skipped(args.results_dir, datasets).items():
        print(f"not drawn: {name}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
