"""Paired tests, Holm correction, effect sizes and the compare table, against hand-computed answers."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from benchmark import stats, store
from benchmark.errors import UserInputError
from benchmark.store import RunSpec

# d = a - b = [0.2, 0.1, 0.0, 0.4, 0.3]: mean 0.2, sample sd sqrt(0.025), t = 0.2 / (sd / sqrt 5) = 2 sqrt 2.
A = np.array([0.5, 0.7, 0.2, 0.9, 0.4])
B = np.array([0.3, 0.6, 0.2, 0.5, 0.1])


def test_t_statistic_and_p_value_match_the_formula():
    d = A - B
    n = len(d)
    sd = math.sqrt(sum((x - d.mean()) ** 2 for x in d) / (n - 1))
    t = d.mean() / (sd / math.sqrt(n))
    assert t == pytest.approx(2 * math.sqrt(2))
    result = stats.paired_test(A, B)
    assert result.test == "t" and result.n == 5
    assert result.statistic == pytest.approx(t, rel=1e-12)
    assert result.p_value == pytest.approx(2 * sps.t.sf(t, df=n - 1), rel=1e-10)
    assert stats.paired_test(B, A).statistic == pytest.approx(-t, rel=1e-12)  # sign follows treatment − control


def test_holm_on_a_known_vector():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    adjusted, reject = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    assert reject.tolist() == [True, False, False, True]


def test_holm_keeps_nan_out_of_the_family():
    adjusted, reject = stats.holm([0.01, float("nan"), 0.04, 0.03, 0.005])
    assert math.isnan(adjusted[1]) and not reject[1]
    np.testing.assert_allclose(adjusted[[0, 2, 3, 4]], [0.03, 0.06, 0.06, 0.02], rtol=1e-12)  # m = 4, not 5
    adjusted, reject = stats.holm([float("nan")] * 2)
    assert np.isnan(adjusted).all() and not reject.any()


def test_randomisation_exact_small_case_matches_hand_enumeration():
    x = np.array([1.0, 2.0, 3.0, 4.0, 0.0])
    y = np.array([0.0, 0.0, 0.0, 0.0, 1.0])  # d = [1, 2, 3, 4, -1]
    d = x - y
    flips = [np.mean(np.array(signs) * d) for signs in itertools.product((1, -1), repeat=5)]
    expected = sum(abs(f) >= abs(d.mean()) for f in flips) / 32
    assert expected == 6 / 32  # flipped |d| subsets with sum <= 1 or >= 10: 3 + 3
    result = stats.paired_test(x, y, test="randomisation")
    assert result.p_value == pytest.approx(expected, rel=1e-12)
    assert result.statistic == pytest.approx(d.mean()) and result.n == 5


def test_randomisation_is_seeded_and_agrees_with_t_on_clear_cases():
    rng = np.random.default_rng(1)
    a = rng.random(400)
    noisy = a - rng.normal(0.01, 0.2, size=400)  # a borderline case: p well inside (0, 1)
    first = stats.paired_test(a, noisy, test="randomisation", n_resamples=2000, seed=3)
    assert first == stats.paired_test(a, noisy, test="randomisation", n_resamples=2000, seed=3)
    assert 1 / 2001 < first.p_value < 1

    clear = a - rng.normal(0.1, 0.2, size=400)
    t, r = stats.paired_test(a, clear), stats.paired_test(a, clear, test="randomisation", n_resamples=2000)
    # no resample as extreme: SciPy's floor, 2 x the one-sided (0 + 1) / (R + 1)
    assert t.p_value < 1e-6 and r.p_value == pytest.approx(2 / 2001)

    z = rng.normal(0, 0.2, size=200)
    none = a + np.concatenate([z, -z])  # differences sum to zero: no effect at all
    t, r = stats.paired_test(a, none), stats.paired_test(a, none, test="randomisation", n_resamples=2000)
    assert t.p_value > 0.9 and r.p_value > 0.9


@pytest.mark.parametrize("test", stats.TESTS)
def test_identical_vectors_give_p_one(test):
    result = stats.paired_test(A, A.copy(), test=test)
    assert result.p_value == 1.0 and result.statistic == 0.0 and result.n == 5


@pytest.mark.parametrize("test", stats.TESTS)
def test_nan_pairs_are_dropped_and_counted(test):
    a = np.array([1.0, np.nan, 3.0, 4.0, 2.0, 0.5])
    b = np.array([0.5, 2.0, np.nan, 3.0, 1.0, 0.6])
    result = stats.paired_test(a, b, test=test)
    assert result.n == 4
    assert result == stats.paired_test([1.0, 4.0, 2.0, 0.5], [0.5, 3.0, 1.0, 0.6], test=test)
    for few in (([1.0, np.nan], [np.nan, 2.0]), ([1.0, np.nan], [0.0, 2.0])):  # 0 and 1 pair left
        short = stats.paired_test(*few, test=test)
        assert math.isnan(short.p_value) and short.n == sum(np.isfinite(few[0]) & np.isfinite(few[1]))


def test_unknown_test_and_mismatched_lengths_are_errors():
    with pytest.raises(ValueError, match="unknown test"):
        stats.paired_test(A, B, test="wilcoxon")
    with pytest.raises(ValueError, match="equal length"):
        stats.paired_test(A, B[:4])


def test_effect_ci_matches_the_t_formula():
    size = stats.effect(A, B)
    d = A - B
    half = sps.t.ppf(0.975, df=4) * d.std(ddof=1) / math.sqrt(5)
    assert size.mean_difference == pytest.approx(0.2)
    assert size.ci_low < size.mean_difference < size.ci_high
    assert (size.ci_low, size.ci_high) == pytest.approx((0.2 - half, 0.2 + half), rel=1e-10)
    wider = stats.effect(A, B, confidence=0.99)
    assert wider.ci_low < size.ci_low and wider.ci_high > size.ci_high


def test_effect_win_tie_loss_counts():
    size = stats.effect([1.0, 0.5, 0.2, 0.3, np.nan, 0.7], [0.5, 0.5, 0.4, 0.1, 1.0, 0.7])
    assert (size.wins, size.ties, size.losses, size.n) == (2, 2, 1, 5)
    single = stats.effect([1.0], [0.5])
    assert single.mean_difference == 0.5 and math.isnan(single.ci_low) and single.n == 1


def test_seed_level_pairs_shared_seeds_and_matches_a_known_t():
    # seed 7 has no partner and is left out; differences 1, 2, 2: mean 5/3, sd sqrt(1/3), t = 5 on 2 df
    result = stats.seed_level({0: 3.0, 1: 5.0, 2: 4.0}, {0: 2.0, 1: 3.0, 2: 2.0, 7: 9.0})
    assert (result.n, result.wins, result.ties, result.losses) == (3, 3, 0, 0)
    assert result.mean_difference == pytest.approx(5 / 3)
    assert (result.treatment_mean, result.control_mean) == pytest.approx((4.0, 7 / 3))  # seed 7 not in either
    assert result.p_value == pytest.approx(0.037749551350623724, rel=1e-9)  # 2 * t.sf(5, df=2)
    mixed = stats.seed_level({0: 0.2, 1: 0.1, 2: 0.3}, {0: 0.1, 1: 0.1, 2: 0.4})
    assert (mixed.wins, mixed.ties, mixed.losses) == (1, 1, 1) and mixed.mean_difference == pytest.approx(0.0)


def test_seed_level_with_fewer_than_two_shared_seeds_has_no_p():
    one = stats.seed_level({0: 0.3, 1: 0.2}, {1: 0.1})
    assert (one.n, one.wins) == (1, 1) and one.mean_difference == pytest.approx(0.1) and math.isnan(one.p_value)
    none = stats.seed_level({0: 0.3}, {1: 0.1})
    assert none.n == 0 and math.isnan(none.mean_difference) and math.isnan(none.p_value)
    same = stats.seed_level({0: 0.3, 1: 0.2}, {0: 0.3, 1: 0.2})
    assert same.ties == 2 and same.p_value == 1.0


def test_seed_level_gives_no_p_when_the_difference_is_equal_at_every_seed():
    # the Amazon H@6 case (DNR-B vs GRU4Rec, seeds 0 and 1): both differences are -0.0088247508...,
    # equal but for rounding, and ttest_rel would return p ~ 1e-15 from that rounding alone
    dnr, gru = {0: 0.20151578073089702, 1: 0.19999307862679952}, {0: 0.2103405315614618, 1: 0.20881782945736432}
    result = stats.seed_level(dnr, gru)
    assert result.constant and math.isnan(result.p_value)
    assert (result.n, result.losses) == (2, 2) and result.mean_difference == pytest.approx(-0.0088247508)
    # a spread of one request's worth (1 / 28,896 here) is a real, if tiny, spread: the test runs
    shifted = stats.seed_level({0: dnr[0], 1: dnr[1] + 1 / 28_896}, gru)
    assert not shifted.constant and 0 < shifted.p_value < 0.05
    assert not stats.seed_level({0: 0.3, 1: 0.2}, {0: 0.3, 1: 0.2}).constant  # all-zero differences: p = 1 above


# ------------------------------------------------------------------------------------------------
# compare(): synthetic records in a temporary results store

N_REQUESTS = 300


def _write_method(root, method: str, target: dict[str, np.ndarray], seeds=(0, 1), status="ok"):
    """Seed k holds target ± seed noise (mean over two seeds = target), rows shuffled per seed."""
    rng = np.random.default_rng(hash(method) % 2**32)
    ids = np.arange(1000, 1000 + N_REQUESTS)
    noise = {m: rng.normal(0, 0.05, N_REQUESTS) for m in target}
    for k, seed in enumerate(seeds):
        sign = 1 if k % 2 == 0 else -1
        order = rng.permutation(N_REQUESTS)
        vectors = {"request_id": ids[order], **{m: (v + sign * noise[m])[order] for m, v in target.items()}}
        store.write_record(root, RunSpec("toy", method, seed), {"status": status, "config_hash": "h"}, vectors)


@pytest.fixture
def toy_store(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, N_REQUESTS)
    auc = rng.uniform(0.3, 0.9, N_REQUESTS)
    auc[:10] = np.nan  # requests without both classes
    z = rng.normal(0, 0.1, N_REQUESTS // 2)
    targets = {
        "dnr-b": base,
        "weak": base - 0.08 + rng.normal(0, 0.1, N_REQUESTS),  # clearly worse than the treatment
        "same": base + np.concatenate([z, -z]),  # mean difference exactly 0
        "strong": base + 0.08 + rng.normal(0, 0.1, N_REQUESTS),  # clearly better: significant, wrong sign
    }
    for method, target in targets.items():
        _write_method(tmp_path, method, {"N@6": target, "AUC": auc + (target - base)},
                      seeds=(0, 1, 2, 3) if method == "dnr-b" else (0, 1))
    _write_method(tmp_path, "broken", {"N@6": base}, status="failed")
    return tmp_path, targets


def test_compare_table(toy_store):
    root, targets = toy_store
    table = stats.compare(root, "toy", "N@6", "dnr-b", ["weak", "same", "strong"])
    assert list(table.columns) == [
        "dataset", "metric", "treatment", "control", "seeds", "n", "mean_treatment", "mean_control",
        "difference", "ci_low", "ci_high", "wins", "ties", "losses", "test", "p_value", "p_adjusted",
        "significant"]
    assert table["control"].tolist() == ["weak", "same", "strong"]
    assert (table["seeds"] == 2).all() and (table["n"] == N_REQUESTS).all()  # seeds both have: 0, 1
    # seed 0/1 noise cancels in the seed mean, so the vectors are the targets (rows re-aligned by id)
    weak = table.iloc[0]
    assert weak["mean_control"] == pytest.approx(targets["weak"].mean(), rel=1e-9)
    assert weak["difference"] == pytest.approx((targets["dnr-b"] - targets["weak"]).mean(), rel=1e-9)
    assert weak["p_value"] == pytest.approx(sps.ttest_rel(targets["dnr-b"], targets["weak"]).pvalue, rel=1e-6)
    assert weak["wins"] + weak["ties"] + weak["losses"] == N_REQUESTS
    assert table.iloc[1]["difference"] == pytest.approx(0, abs=1e-12) and table.iloc[1]["p_value"] > 0.9
    np.testing.assert_allclose(table["p_adjusted"], multipletests(table["p_value"], method="holm")[1])
    assert table["significant"].tolist() == [True, False, False]  # "strong" wins, but against the treatment
    assert table.iloc[2]["p_adjusted"] < 0.05 and table.iloc[2]["difference"] < 0


def test_compare_auc_drops_nan_requests_and_randomisation_agrees(toy_store):
    root, _ = toy_store
    table = stats.compare(root, "toy", "AUC", "dnr-b", ["weak", "same"], test="randomisation")
    assert (table["n"] == N_REQUESTS - 10).all() and (table["test"] == "randomisation").all()
    assert table["significant"].tolist() == [True, False]


def test_compare_errors_name_the_problem(toy_store):
    root, _ = toy_store
    with pytest.raises(UserInputError, match="'nope'"):
        stats.compare(root, "toy", "N@6", "dnr-b", ["weak", "nope"])
    with pytest.raises(UserInputError, match="'broken'"):  # only a failed record
        stats.compare(root, "toy", "N@6", "dnr-b", ["broken"])
    with pytest.raises(UserInputError, match="'dnr-b'"):
        stats.compare(root, "other-dataset", "N@6", "dnr-b", ["weak"])
    with pytest.raises(UserInputError, match=r"weak lacks \[2\]"):
        stats.compare(root, "toy", "N@6", "dnr-b", ["weak"], seeds=[0, 2])
    with pytest.raises(UserInputError, match="'H@6'"):
        stats.compare(root, "toy", "H@6", "dnr-b", ["weak"])
    assert stats.compare(root, "toy", "N@6", "dnr-b", "weak", seeds=[1])["seeds"].tolist() == [1]
