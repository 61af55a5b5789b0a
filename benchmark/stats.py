"""Paired significance tests, Holm correction and effect sizes for the report (reporting.md §3).

What is tested, on what unit:
    One method (the *treatment*, e.g. DNR-B) against one or more *controls* (baselines) on one
    per-request test metric of one dataset. The unit is the test request: every method reranks the
    same requests, so the two per-request vectors are paired (reporting.md §3.1 "Unit"). Each
    method's vector is first averaged over its seeds, request by request
    (``summary.seed_mean_vectors``), which removes initialisation noise without inflating n
    (§3.1 "Seeds", the ranx #6 suggestion).

Tests:
    ``"t"`` (default): two-sided paired Student's t-test, ``scipy.stats.ttest_rel``; the ranx and
    PyTerrier default, and Smucker et al. found it agrees with randomisation and bootstrap tests
    on IR data (§3.1 "Primary test"). ``"randomisation"``: paired sign-flip test on the mean
    difference, ``scipy.stats.permutation_test(permutation_type="samples")``, seeded; the robustness
    check for headline cells (§3.1 "Robustness test"). When n_resamples covers all 2^n distinct
    sign flips SciPy enumerates them (exact p). Otherwise each one-sided p is (count + 1) / (R + 1),
    never 0, so the p-values can sit beside a Holm step-down (§3.1). Two-sided p is SciPy's
    2 × the smaller one-sided p, capped at 1 (§2, scipy PR #4824). In the exact case this equals
    counting |Δ| ≥ |observed|, since the sign-flip null is symmetric. With resampling its floor is
    2 / (R + 1), not the 1 / (R + 1) of reporting.md's (count + 1) / (R + 1) formula.

Missing values: a pair is dropped when either side is NaN (per-request AUC is NaN for a request
without both a positive and a negative), and the number of pairs kept is reported as ``n``.
Fewer than two pairs give NaN p-values, never an exception. Identical vectors (every difference
exactly 0) give statistic 0 and p = 1: ``ttest_rel`` returns NaN there (0/0) and NaN would
otherwise drop out of a Holm family as if the comparison never happened. A constant non-zero
difference has zero spread and gives t = ±inf, p = 0 (every request moved by the same amount);
``seed_level`` gives no p there instead, because on 2–3 seeds that is a coincidence of counts.

Family and correction:
    ``compare`` corrects over the comparisons it makes: one treatment against the given controls,
    for one metric on one dataset, with Holm (``statsmodels ... multipletests(method="holm")``; the
    statsmodels default "hs" is Holm–Šidák, so "holm" is passed explicitly, §3.1 "Multiple
    comparisons"). The paper table's dagger family is different (DNR vs the strongest baseline of
    each of the 15 dataset × metric columns); build it with ``paired_test`` per column and ``holm``
    over the 15 p-values. NaN p-values are kept out of a family (PyTerrier PR #440's bug).

Effect sizes always sit next to p-values (§3.1 "Effect sizes"): the mean difference with its 95 %
confidence interval from the paired t distribution (``TtestResult.confidence_interval``), and
win/tie/loss counts of requests (ties: exactly equal values).
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from benchmark import store
from benchmark.errors import UserInputError
from benchmark.store import RunSpec
from benchmark.summary import seed_mean_vectors

TESTS = ("t", "randomisation")
CORRECTIONS = ("holm", "none")
# Elements per permutation_test batch (resamples × requests): caps memory near 40 MB of float64.
_BATCH_ELEMENTS = 5_000_000
# SciPy 1.15 renamed permutation_test's random_state to rng; accept either installed version.
_SEED_KEYWORD = "rng" if "rng" in inspect.signature(stats.permutation_test).parameters else "random_state"


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """One paired test. ``statistic`` is t for ``"t"`` and the mean difference for ``"randomisation"``."""

    statistic: float
    p_value: float
    n: int
    test: str


@dataclasses.dataclass(frozen=True)
class Effect:
    """Treatment − control over the kept pairs: mean, confidence interval, request wins/ties/losses."""

    mean_difference: float
    ci_low: float
    ci_high: float
    wins: int
    ties: int
    losses: int
    n: int


def _pairs(treatment, control) -> tuple[np.ndarray, np.ndarray]:
    """Both vectors as float arrays with every pair that has a NaN on either side removed."""
    a = np.asarray(treatment, dtype=float)
    b = np.asarray(control, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired vectors must be 1-D and of equal length, got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep]


@dataclasses.dataclass(frozen=True)
class SeedLevel:
    """Treatment against control over the seeds both finished, one test value per seed (the
    record's test metric, a mean over requests): seeds won / tied / lost, the mean per-seed
    difference and a two-sided paired t-test on the seed values (``ttest_rel``, via ``paired_test``).
    """

    n: int
    wins: int
    ties: int
    losses: int
    treatment_mean: float
    control_mean: float
    mean_difference: float
    p_value: float
    constant: bool = False
    """The per-seed differences are equal (non-zero) at every shared seed, so their spread is 0
    and the t statistic is undefined: ``p_value`` is NaN, not the ~0 that ``ttest_rel`` returns."""


def seed_level(treatment: Mapping[int, float], control: Mapping[int, float]) -> SeedLevel:
    """The seed-level appendix test of reporting.md §3.1 "Seeds": the count of seeds where the
    treatment beats the control and ``ttest_rel`` on the per-seed values (RecBole-style, but two
    sided). ``treatment`` and ``control`` map seed -> test value; only seeds in both are paired.

    This asks a different question from the per-request tests (``compare``): whether the gap
    survives re-training, not whether it holds across requests. With n seeds it has n − 1 degrees
    of freedom, so at 2–3 seeds only a gap far larger than the seed spread reaches p < 0.05; fewer
    than two shared seeds give p = NaN.

    Equal differences at every seed (``constant``) also give p = NaN. A seed's test value is a
    ratio of counts, so on 2–3 seeds two methods can differ by exactly the same amount at each seed
    by coincidence (it happened on Amazon H@6: −0.88 at both seeds). The spread of the differences
    is then 0 up to rounding, and ``ttest_rel`` returns a p of ~1e-15 computed from rounding noise
    (SciPy warns of catastrophic cancellation): one degree of freedom cannot carry that. R's
    ``t.test`` refuses the same case ("data are essentially constant"). Its threshold is relative to
    the mean difference, which is too tight here: the noise comes from subtracting values near
    0.2, so "equal" means a spread of the differences within 1e-12 of the values' magnitude (one
    request's change moves a mean over thousands of requests by far more than that).
    """
    shared = sorted(set(treatment) & set(control))
    a, b = _pairs([treatment[s] for s in shared], [control[s] for s in shared])
    diff = a - b
    mean = (lambda x: float(np.mean(x)) if len(x) else float("nan"))
    scale = max(np.max(np.abs(a)), np.max(np.abs(b))) if len(diff) else 0.0  # the values' magnitude
    constant = bool(len(diff) >= 2 and np.any(diff != 0) and np.ptp(diff) <= 1e-12 * scale)
    return SeedLevel(n=len(diff), wins=int(np.sum(diff > 0)), ties=int(np.sum(diff == 0)),
                     losses=int(np.sum(diff < 0)), treatment_mean=mean(a), control_mean=mean(b),
                     mean_difference=mean(diff),
                     p_value=float("nan") if constant else paired_test(a, b, test="t").p_value,
                     constant=constant)


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(x - y, axis=axis)


def paired_test(treatment, control, test: str = "t", n_resamples: int = 10_000, seed: int = 0) -> PairedTest:
    """Two-sided paired test of treatment vs control (per-request vectors, aligned by position)."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; choose one of {TESTS}")
    a, b = _pairs(treatment, control)
    n = len(a)
    if n < 2:
        return PairedTest(float("nan"), float("nan"), n, test)
    if np.all(a == b):  # ttest_rel gives 0/0 = NaN here; no difference at all is p = 1
        return PairedTest(0.0, 1.0, n, test)
    if test == "t":
        result = stats.ttest_rel(a, b, alternative="two-sided")
        return PairedTest(float(result.statistic), float(result.pvalue), n, test)
    result = stats.permutation_test(
        (a, b), _mean_difference, permutation_type="samples", vectorized=True, alternative="two-sided",
        n_resamples=n_resamples, batch=max(1, min(n_resamples, _BATCH_ELEMENTS // n)),
        **{_SEED_KEYWORD: np.random.default_rng(seed)})
    return PairedTest(float(result.statistic), float(result.pvalue), n, test)


def holm(p_values, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm-adjusted p-values and statsmodels' reject flags (adjusted p <= alpha) for one family.

    NaN entries are not part of the family: their adjusted p is NaN and their flag False.
    """
    p = np.asarray(p_values, dtype=float).reshape(-1)
    adjusted = np.full(p.shape, np.nan)
    reject = np.zeros(p.shape, dtype=bool)
    finite = ~np.isnan(p)
    if finite.any():
        flags, corrected, _, _ = multipletests(p[finite], alpha=alpha, method="holm")
        adjusted[finite] = corrected
        reject[finite] = flags
    return adjusted, reject


def effect(treatment, control, confidence: float = 0.95) -> Effect:
    """Mean difference (treatment − control) with its paired-t confidence interval and W/T/L counts."""
    a, b = _pairs(treatment, control)
    diff = a - b
    n = len(diff)
    wins, ties, losses = int(np.sum(diff > 0)), int(np.sum(diff == 0)), int(np.sum(diff < 0))
    mean = float(np.mean(diff)) if n else float("nan")
    if n < 2:
        return Effect(mean, float("nan"), float("nan"), wins, ties, losses, n)
    ci = stats.ttest_rel(a, b).confidence_interval(confidence)
    return Effect(mean, float(ci.low), float(ci.high), wins, ties, losses, n)


def _finished_seeds(results_dir: Path, dataset: str, method: str) -> list[int]:
    """Seeds of a method with an ok record and its per-request vectors, on one dataset."""
    folder = store.path_for(results_dir, RunSpec(dataset, method, 0)).parent
    seeds = []
    for path in folder.glob("seed*.json"):
        seed = int(path.stem.removeprefix("seed"))
        spec = RunSpec(dataset, method, seed)
        record = store.read_record(results_dir, spec)
        if record and record.get("status") == "ok" and store.path_for(results_dir, spec, ".npz").exists():
            seeds.append(seed)
    if not seeds:
        raise UserInputError(f"no finished runs with per-request vectors for method {method!r} on dataset "
                             f"{dataset!r} under {folder}")
    return sorted(seeds)


def _request_ids(results_dir: Path, dataset: str, method: str, seeds: Sequence[int]) -> np.ndarray:
    """The sorted request ids of a method's runs; every seed must have scored the same requests."""
    ids = None
    for seed in seeds:
        with np.load(store.path_for(results_dir, RunSpec(dataset, method, seed), ".npz")) as npz:
            these = np.sort(npz["request_id"])
        if ids is not None and not np.array_equal(ids, these):
            raise ValueError(f"{dataset}/{method}: seed {seed} scored other test requests than seed {seeds[0]}")
        ids = these
    return ids


def _seed_mean(results_dir: Path, dataset: str, method: str, seeds: list[int], metric: str) -> np.ndarray:
    try:
        return seed_mean_vectors(results_dir, dataset, method, seeds, metric)
    except KeyError:
        raise UserInputError(f"metric {metric!r} is not stored for {dataset}/{method}") from None


def compare(results_dir: Path, dataset: str, metric: str, treatment: str, controls: Sequence[str],
            seeds: Sequence[int] | None = None, test: str = "t", alpha: float = 0.05,
            correction: str = "holm") -> pd.DataFrame:
    """Treatment against each control on one dataset and metric: one row per control.

    Vectors are per-request values averaged over ``seeds`` (default: the seeds both methods have,
    per control). Means and the difference are over the requests where neither side is NaN. The
    family for ``correction="holm"`` is these controls for this metric and dataset;
    ``significant`` means adjusted p < alpha and a positive difference (treatment better, for a
    higher-is-better metric).
    """
    if test not in TESTS:
        raise UserInputError(f"unknown test {test!r}; choose one of {TESTS}")
    if correction not in CORRECTIONS:
        raise UserInputError(f"unknown correction {correction!r}; choose one of {CORRECTIONS}")
    controls = [controls] if isinstance(controls, str) else list(controls)
    if not controls:
        raise UserInputError("compare needs at least one control method")
    if treatment in controls:
        raise UserInputError(f"the treatment {treatment!r} is also listed as a control")

    treatment_seeds = _finished_seeds(results_dir, dataset, treatment)
    rows = []
    for control in controls:
        control_seeds = _finished_seeds(results_dir, dataset, control)
        shared = sorted(set(treatment_seeds) & set(control_seeds))
        if seeds is not None:
            missing = {m: sorted(set(seeds) - set(have)) for m, have in
                       ((treatment, treatment_seeds), (control, control_seeds))}
            missing = {m: s for m, s in missing.items() if s}
            if missing:
                raise UserInputError(f"{dataset}: requested seeds not finished: "
                                     + "; ".join(f"{m} lacks {s}" for m, s in missing.items()))
            shared = sorted(set(seeds))
        if not shared:
            raise UserInputError(f"{dataset}: {treatment!r} (seeds {treatment_seeds}) and {control!r} "
                                 f"(seeds {control_seeds}) share no seed")
        ids_t = _request_ids(results_dir, dataset, treatment, shared)
        ids_c = _request_ids(results_dir, dataset, control, shared)
        if not np.array_equal(ids_t, ids_c):
            raise ValueError(f"{dataset}: {treatment} and {control} scored different test requests; "
                             "paired tests need the same requests")
        a, b = _pairs(_seed_mean(results_dir, dataset, treatment, shared, metric),
                      _seed_mean(results_dir, dataset, control, shared, metric))
        tested = paired_test(a, b, test=test)
        size = effect(a, b)
        rows.append({
            "dataset": dataset, "metric": metric, "treatment": treatment, "control": control,
            "seeds": len(shared), "n": tested.n,
            "mean_treatment": float(np.mean(a)) if len(a) else float("nan"),
            "mean_control": float(np.mean(b)) if len(b) else float("nan"),
            "difference": size.mean_difference, "ci_low": size.ci_low, "ci_high": size.ci_high,
            "wins": size.wins, "ties": size.ties, "losses": size.losses,
            "test": test, "p_value": tested.p_value,
        })
    table = pd.DataFrame(rows)
    p = table["p_value"].to_numpy()
    if correction == "holm":
        adjusted, _ = holm(p, alpha)
    else:
        adjusted = p.copy()
    table["p_adjusted"] = adjusted
    table["significant"] = (table["p_adjusted"] < alpha) & (table["difference"] > 0)
    return table
