"""Tests of tradingrl_nb.stats: PSR, DSR and MinTRL against the published formulas and the paper's worked example,
bootstrap Sharpe intervals against Lo's (2002) analytic width, and the multi-seed interval."""
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings, strategies as st

from tradingrl_nb.stats import (deflated_sharpe_ratio, expected_max_sharpe, lo_sharpe_se, min_track_record_length,
                                multi_seed_sharpe_ci, probabilistic_sharpe_ratio, psr_from_moments, sharpe_ci,
                                sharpe_difference_ci, sharpe_ratio, verdict)


def mertens_psr(r, sr_star):
    "Second implementation: Mertens' (2002) standard error with EXCESS kurtosis, written independently of the module."
    r = np.asarray(r)
    n = len(r)
    sr = r.mean() / r.std(ddof=1)
    z = (r - r.mean()) / r.std(ddof=0)
    g3, excess = (z ** 3).mean(), (z ** 4).mean() - 3.0
    se = math.sqrt((1 + 0.5 * sr ** 2 - g3 * sr + excess / 4 * sr ** 2) / (n - 1))
    return 0.5 * math.erfc(-((sr - sr_star) / se) / math.sqrt(2))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(30, 2000), mu=st.floats(-0.002, 0.003), df=st.floats(2.5, 30),
       sr_star=st.floats(-0.1, 0.1))
def test_psr_matches_a_second_implementation(seed, n, mu, df, sr_star):
    r = mu + 0.01 * np.random.default_rng(seed).standard_t(df, n)
    assert probabilistic_sharpe_ratio(r, sr_star) == pytest.approx(mertens_psr(r, sr_star), rel=1e-9, abs=1e-12)


def test_dsr_matches_the_papers_worked_example():
    "Bailey & Lopez de Prado (2014), section 4: SR 2.5 annualized, T = 1250 days, N = 100, V = 0.5, skew -3, kurtosis 10."
    sr0 = expected_max_sharpe(0.5 / 250, 100)
    assert sr0 == pytest.approx(0.1132, abs=2e-4)
    assert psr_from_moments(2.5 / math.sqrt(250), 1250, -3.0, 10.0, sr0) == pytest.approx(0.9004, abs=5e-4)


def test_dsr_from_returns_and_trials():
    rng = np.random.default_rng(0)
    r = 0.0005 + 0.01 * rng.standard_normal(1000)
    trials = rng.normal(0.0, 0.03, 50)
    sr0 = expected_max_sharpe(trials.var(ddof=1), 50)
    assert deflated_sharpe_ratio(r, trials) == pytest.approx(probabilistic_sharpe_ratio(r, sr0), rel=1e-12)
    assert deflated_sharpe_ratio(r, trials) < probabilistic_sharpe_ratio(r, 0.0)  # more trials, less credit
    assert deflated_sharpe_ratio(r, [sharpe_ratio(r)]) == pytest.approx(probabilistic_sharpe_ratio(r), rel=1e-12)
    more = np.r_[trials, rng.normal(0.0, 0.03, 450)]
    assert deflated_sharpe_ratio(r, more) < deflated_sharpe_ratio(r, trials)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), mu=st.floats(0.0005, 0.003), conf=st.floats(0.6, 0.99))
def test_min_track_record_length_reaches_the_confidence(seed, mu, conf):
    "At n = MinTRL returns with the same moments, PSR equals the confidence (the definition, inverted)."
    r = mu + 0.01 * np.random.default_rng(seed).standard_normal(500)
    sr = r.mean() / r.std(ddof=1)
    g3, g4 = scipy.stats.skew(r), scipy.stats.kurtosis(r, fisher=False)
    n = min_track_record_length(r, 0.0, conf)
    if sr <= 0:  # an unlucky sample: no track record is long enough
        assert n == math.inf
        return
    assert psr_from_moments(sr, n, g3, g4, 0.0) == pytest.approx(conf, abs=1e-9)
    assert min_track_record_length(-r, 0.0, conf) == math.inf


def test_lo_standard_error_is_the_iid_sampling_error():
    "Monte Carlo: the spread of Sharpe ratios of iid normal samples matches Lo's formula."
    rng = np.random.default_rng(1)
    srs = [sharpe_ratio(0.05 + rng.standard_normal(250)) for _ in range(3000)]
    assert np.std(srs) == pytest.approx(lo_sharpe_se(0.05, 250), rel=0.06)


def test_bootstrap_width_close_to_lo_on_iid_and_wider_on_autocorrelated():
    rng = np.random.default_rng(2)
    n = 1000
    iid = 0.0004 + 0.01 * rng.standard_normal(n)
    ci = sharpe_ci(iid, reps=1000)
    lo_width = 2 * 1.96 * lo_sharpe_se(sharpe_ratio(iid), n) * math.sqrt(252)
    assert ci.high - ci.low == pytest.approx(lo_width, rel=0.15)
    assert ci.low < ci.estimate < ci.high and ci.estimate == pytest.approx(sharpe_ratio(iid, 252), rel=1e-12)
    # AR(1) returns with phi = 0.5: the Sharpe ratio's variance is about (1 + phi) / (1 - phi) = 3 times the iid one
    e = 0.01 * rng.standard_normal(n)
    ar = np.empty(n)
    ar[0] = e[0]
    for t in range(1, n): ar[t] = 0.5 * ar[t - 1] + e[t]
    ar += 0.0004
    ci_ar = sharpe_ci(ar, reps=1000)
    lo_ar = 2 * 1.96 * lo_sharpe_se(sharpe_ratio(ar), n) * math.sqrt(252)
    assert ci_ar.block_length > 2 and ci_ar.high - ci_ar.low > 1.3 * lo_ar


def test_intervals_are_seeded():
    r = 0.0003 + 0.01 * np.random.default_rng(3).standard_normal(500)
    assert sharpe_ci(r, seed=4, reps=300) == sharpe_ci(r, seed=4, reps=300)
    assert sharpe_ci(r, seed=4, reps=300) != sharpe_ci(r, seed=5, reps=300)


def test_sharpe_difference():
    rng = np.random.default_rng(4)
    b = 0.0003 + 0.01 * rng.standard_normal(800)
    same = sharpe_difference_ci(b, b, reps=300)
    assert same.estimate == 0 and same.low == 0 and same.high == 0
    a = b + 0.001 + 0.001 * rng.standard_normal(800)  # the same market plus a steady edge
    d = sharpe_difference_ci(a, b, reps=500)
    assert d.estimate == pytest.approx(sharpe_ratio(a, 252) - sharpe_ratio(b, 252), rel=1e-12)
    assert d.low > 0 and d.verdict() == "skill"
    # pairing the days matters: the difference of two highly correlated series is far tighter than either interval
    assert d.high - d.low < 0.5 * (sharpe_ci(a, reps=300).high - sharpe_ci(a, reps=300).low)
    with pytest.raises(ValueError, match="same days"):
        sharpe_difference_ci(a[:-1], b)


def test_multi_seed_interval_holds_seed_and_market_luck():
    rng = np.random.default_rng(5)
    market = 0.0003 + 0.01 * rng.standard_normal(750)
    same = np.tile(market, (5, 1))
    one = sharpe_ci(market, reps=1000)
    m = multi_seed_sharpe_ci(same, reps=1000)
    assert m.estimate == pytest.approx(one.estimate, rel=1e-12)
    assert m.high - m.low == pytest.approx(one.high - one.low, rel=0.2)  # identical seeds: market luck only
    spread = market + rng.normal(0, 0.002, size=(5, 1)) + 0.003 * rng.standard_normal((5, 750))
    wide = multi_seed_sharpe_ci(spread, reps=1000)
    assert wide.high - wide.low > 1.2 * (m.high - m.low)
    # against a benchmark: the excess of the mean Sharpe over the benchmark's
    ex = multi_seed_sharpe_ci(same, benchmark=market, reps=300)
    assert ex.estimate == pytest.approx(0.0, abs=1e-12) and ex.low <= 0 <= ex.high


def test_verdicts():
    assert verdict(0.1, 0.5) == "skill" and verdict(-0.5, -0.1) == "no skill" and verdict(-0.1, 0.2) == "inconclusive"


def test_bad_input():
    with pytest.raises(ValueError, match="finite"):
        probabilistic_sharpe_ratio([0.01, np.nan, 0.02, 0.0])
    with pytest.raises(ValueError, match="constant"):
        sharpe_ci(np.zeros(100))
    with pytest.raises(ValueError, match="n_trials"):
        expected_max_sharpe(0.1, 0)
    with pytest.raises(ValueError, match="confidence"):
        min_track_record_length(np.random.default_rng(0).standard_normal(50), confidence=1.5)


# --- intervals of a finding: two arms over seeds ---
from hypothesis import given, settings, strategies as st
from tradingrl_nb.stats import mean_ci, ratio_ci, paired_sharpe_difference_ci
from tradingrl_nb import stats

@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=12))
def test_mean_ci_brackets_the_mean(xs):
    ci = mean_ci(xs)
    assert ci.low <= ci.estimate <= ci.high
    assert ci.estimate == pytest.approx(np.mean(xs), abs=1e-9)

@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=10), st.floats(0.1, 10))
def test_ratio_ci_of_a_constant_factor_is_that_factor(b, factor):
    a = [x * factor for x in b]
    ci = ratio_ci(a, b)
    assert ci.estimate == pytest.approx(factor, rel=1e-9)
    assert ci.low == pytest.approx(factor, rel=1e-6) and ci.high == pytest.approx(factor, rel=1e-6)

def test_seed_intervals_refuse_bad_input_with_the_position():
    with pytest.raises(ValueError, match="non-finite value at position 2"): mean_ci([1.0, 2.0, np.nan])
    with pytest.raises(ValueError, match="at least 2 seeds"): mean_ci([1.0])
    with pytest.raises(ValueError, match="positive for a ratio, got -1.0 at position 1"): ratio_ci([1.0, -1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="paired by seed"): ratio_ci([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="reduce must be"): paired_sharpe_difference_ci(np.ones((2, 5)), np.ones((2, 5)), reduce="max")
    with pytest.raises(ValueError, match="one shape"): paired_sharpe_difference_ci(np.ones((2, 5)), np.ones((3, 5)))

def test_paired_sharpe_difference_sees_an_edge_and_keeps_pairs():
    rng = np.random.default_rng(0)
    market = 0.0003 + 0.01 * rng.standard_normal(500)
    b = market + 0.004 * rng.standard_normal((5, 500))
    a = b + 0.001 + 0.0005 * rng.standard_normal((5, 500))
    assert paired_sharpe_difference_ci(a, b, reps=300).low > 0
    assert paired_sharpe_difference_ci(b, a, reps=300, reduce="median").high < 0
    same = paired_sharpe_difference_ci(b, b, reps=100)
    assert same.estimate == 0 and same.low == 0 and same.high == 0   # pairs stay pairs in every draw


@pytest.mark.parametrize("confidence, tails", [(0.95, (0.025, 0.975)), (0.8, (0.1, 0.9))])
def test_seed_and_market_interval_tails_are_the_replications_quantiles(confidence, tails):
    """With a stub statistic that records what it returns, the interval's ends are the (1 -+ confidence) / 2 quantiles of
    the replications (up to the rounding of 1 - confidence: 0.025 is 0.025000000000000022 there)."""
    from tradingrl_nb.stats import _seeds_and_blocks
    X = np.random.default_rng(1).standard_normal((120, 4))
    seen = []
    def stat(days, seeds=None):
        if seeds is None: return float(days.mean())                # the point estimate on the data itself
        v = float(days[:, seeds].sum() + 0.1 * seeds.sum())
        seen.append(v)
        return v
    ci = _seeds_and_blocks(X, 4, stat, confidence, seed=3, reps=400, block=5.0, method="percentile")
    assert len(seen) == 400 and len(set(seen)) > 300
    lo, hi = np.quantile(seen, tails)
    assert ci.low == pytest.approx(lo, rel=1e-12) and ci.high == pytest.approx(hi, rel=1e-12)
    assert ci.estimate == float(X.mean()) and ci.confidence == confidence


def test_t_method_joins_the_seed_part_and_the_market_part_as_a_mover_interval():
    """The 't' interval: half-width sqrt(t(k-1)^2 v_seeds + z^2 v_market), v_seeds the per-seed values' variance / k,
    v_market the day bootstrap's variance of the mean less each seed's own day noise / k (from the draws' covariance)."""
    from tradingrl_nb.stats import _seeds_and_blocks
    X = np.random.default_rng(2).standard_normal((150, 5)) + np.random.default_rng(3).standard_normal((150, 1))
    draws = []
    def per_seed(x):
        v = x.mean(axis=0)
        if x is not X: draws.append(v)
        return v
    stat = lambda x, seeds=slice(None): float(per_seed(x)[seeds].mean())
    ci = _seeds_and_blocks(X, 5, stat, 0.95, seed=4, reps=300, block=5.0, method="t", per_seed=per_seed)
    D = np.array(draws)
    C = np.cov(D, rowvar=False)
    own = np.trace(C) / 5 - (C.sum() - np.trace(C)) / 20
    v_seeds, v_market = X.mean(axis=0).var(ddof=1) / 5, max(D.mean(axis=1).var(ddof=1) - own / 5, 0.0)
    h = math.sqrt(scipy.stats.t.ppf(0.975, 4) ** 2 * v_seeds + scipy.stats.norm.ppf(0.975) ** 2 * v_market)
    assert len(D) == 300 and v_market > 0 and ci.estimate == pytest.approx(X.mean(), rel=1e-12)
    assert ci.high - ci.estimate == pytest.approx(h, rel=1e-9) and ci.estimate - ci.low == pytest.approx(h, rel=1e-9)


def test_t_method_counts_a_seeds_own_day_noise_once():
    """Twelve seeds whose returns share no market (independent columns): their spread is all day noise, already in the
    seeds' part, so the interval is the plain t interval of the per-seed Sharpe ratios (within the bootstrap's noise);
    counting that noise again through the day bootstrap made it about 1.3 times wider."""
    R = np.random.default_rng(5).normal(0.0004, 0.01, size=(12, 1000))
    iv = stats.multi_seed_sharpe_ci(R, reps=400, seed=1)
    sr = np.array([stats.sharpe_ratio(r, 252) for r in R])
    t_half = scipy.stats.t.ppf(0.975, 11) * sr.std(ddof=1) / math.sqrt(12)
    assert iv.high - iv.estimate == pytest.approx(t_half, rel=0.1)


# ---- the seed x market interval's coverage (findings v2, item 5) ---------------------------------------------------
def test_t_interval_covers_where_the_seed_percentile_interval_falls_short():
    "With seeds that differ (tau 0.0006: Sharpe ratios about 1.5 sd apart), resampling 5 seeds under-covers; 't' does not."
    t = stats.interval_coverage("t", 5, 0.0006, reps=80, boot=200)
    pct = stats.interval_coverage("percentile", 5, 0.0006, reps=80, boot=200)
    assert t >= 0.9 and t > pct, (t, pct)


def test_t_interval_covers_at_three_seeds_where_seed_luck_dominates():
    "3 seeds (the main job's), Sharpe ratios about 1.5 sd apart: Welch-Satterthwaite degrees of freedom fell short here."
    cov = stats.interval_coverage("t", 3, 0.0006, reps=400, boot=200)
    assert 0.95 <= cov <= 0.975, cov


def test_interval_method_is_checked():
    R = np.random.default_rng(0).normal(0.0005, 0.01, size=(3, 300))
    with pytest.raises(ValueError, match="method must be 't' or 'percentile'"):
        stats.multi_seed_sharpe_ci(R, reps=50, method="bca")
    with pytest.raises(ValueError, match="median agent has no t-interval"):
        stats.paired_sharpe_difference_ci(R, R[::-1], reduce="median", method="t", reps=50)
    iv = stats.paired_sharpe_difference_ci(R, R[::-1], reduce="median", reps=50)        # the median keeps the percentile method
    assert iv.low <= iv.estimate <= iv.high


def test_t_interval_is_the_estimate_plus_minus_a_t_quantile_of_both_variances():
    "One seed: no seed variance, the day bootstrap alone (infinite degrees of freedom: the normal quantile)."
    r = np.random.default_rng(1).normal(0.0005, 0.01, size=(1, 500))
    iv = stats.multi_seed_sharpe_ci(r, reps=300, seed=3)
    assert iv.estimate == pytest.approx(stats.sharpe_ratio(r[0], 252), rel=1e-12)
    assert (iv.high - iv.estimate) == pytest.approx(iv.estimate - iv.low, rel=1e-9)      # symmetric by construction
