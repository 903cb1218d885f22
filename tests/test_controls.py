"""Planted-signal markets, the oracle through the env, the behaviour measures, the positive-control verdict, the
training-health rule, and (opt-in, minutes) the full-size positive control of the library-default agent."""
import math, os

import numpy as np
import pandas as pd
import pytest

from tradingrl_nb import controls
from tradingrl_nb.data import PLANTED_MARKETS, planted_market
from tradingrl_nb.health import MIN_UPDATE_RATIO, training_health


@pytest.mark.parametrize("name", ["regime", "regime_slow", "signal", "signal_fast", "signal_slow"])
def test_the_planted_edge_predicts_the_held_day(name):
    "The edge of a decision at t is the expected return from the close of t+1 to t+2 (next-close fills): slope ~1."
    m = planted_market(name, 100_000, seed=7)
    held = np.log(m.prices["close"]).diff().shift(-2)
    ok = held.notna()
    slope = np.polyfit(m.edge[ok], held[ok], 1)[0]
    assert 0.85 < slope < 1.15, slope                                       # 100k days: slope se about 0.03-0.05
    lagged = np.polyfit(m.edge[ok].shift(2).fillna(0), held[ok], 1)[0]       # the edge, two days late, predicts less
    assert abs(lagged) < abs(slope)


def test_null_market_has_no_edge_and_its_oracle_is_buy_and_hold():
    m = planted_market("null", 3000, seed=1)
    assert m.edge.nunique() == 1 and (m.oracle_positions() == 1.0).all() and m.features is None


def test_unknown_market_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match="regime"): planted_market("trend")
    assert set(PLANTED_MARKETS) == {"regime", "regime_slow", "signal", "signal_fast", "signal_slow", "null"}


def test_the_oracle_holds_its_positions_through_the_env_and_beats_buy_and_hold():
    m = planted_market("regime", 1500, seed=200)
    res, met = controls.evaluate_on_market(controls.OraclePolicy(m.oracle_positions()), m)
    held = res.equity["position"].dropna()
    assert np.allclose(held.to_numpy(), m.oracle_positions().reindex(held.index).to_numpy())
    assert met["sharpe"] > met["bh_sharpe"] and met["gap"] > 1.0


def test_behaviour_gap_and_absolute_position():
    idx = pd.bdate_range("2001-01-01", periods=6)
    m = planted_market("regime", 10, seed=0)
    m = type(m)("t", m.prices.iloc[:6].set_axis(idx), pd.Series([1, 1, -1, -1, 1, -1.0], idx), pd.Series(1.0, idx))
    eq = pd.DataFrame({"position": [0.8, 0.6, -0.2, 0.0, 1.0, np.nan]}, index=idx)
    b = controls.behaviour(controls.BacktestResult(eq, {}), m)
    assert b["gap"] == pytest.approx((0.8 + 0.6 + 1.0) / 3 - (-0.2 + 0.0) / 2)
    assert b["abs_position"] == pytest.approx((0.8 + 0.6 + 0.2 + 0.0 + 1.0) / 5)


def test_positive_control_verdict_needs_every_seed_and_the_median():
    rows = pd.DataFrame([dict(market="m", agent="a", seed=s, gap=g, abs_position=p, sharpe_fraction=f, oracle_sharpe=1.0, bh_sharpe=0.1)
                         for s, g, p, f in [(0, 0.5, 0.8, 0.6), (1, 0.4, 0.5, 0.31), (2, 0.9, 0.9, 0.1)]])
    assert controls.positive_control_verdict(rows)["passed"].iloc[0]
    for col, bad in (("gap", 0.29), ("abs_position", 0.39)):
        worse = rows.copy()
        worse.loc[1, col] = bad
        assert not controls.positive_control_verdict(worse)["passed"].iloc[0]
    low = rows.assign(sharpe_fraction=[0.6, 0.29, 0.1])                         # median 0.29
    assert not controls.positive_control_verdict(low)["passed"].iloc[0]


def test_health_rule_flags_a_braked_run_and_keeps_a_training_one():
    n = 40
    curves = lambda r: pd.DataFrame({"health/actor_update_ratio": np.full(n, r), "health/vgs_k_mean": np.ones(n)})
    assert training_health(curves(10 * MIN_UPDATE_RATIO))["moved"] is True
    assert training_health(curves(0.3 * MIN_UPDATE_RATIO))["moved"] is False
    assert math.isnan(training_health(pd.DataFrame())["actor_update_ratio"])


def test_a_tiny_default_agent_logs_its_training_health():
    row = controls.train_and_test("signal", 0, total_timesteps=1024, train_path=(500, 1), test_path=(300, 2), n_envs=2,
                                  n_steps=64, batch_size=64, n_epochs=1, policy_kwargs=dict(lstm_hidden_size=8, n_quantiles=8))
    assert row["health_updates"] >= 1 and row["health_actor_update_ratio"] > 0 and row["health_moved"] in (True, False)
    assert row["oracle_sharpe"] > 0 and -1 <= row["abs_position"] <= 1


@pytest.mark.skipif(not os.environ.get("TRADINGRL_FULL_CONTROLS"),
                    reason="the full-size positive control takes about 10 CPU-minutes: TRADINGRL_FULL_CONTROLS=1 to run it "
                           "(benchmarks/bench_learning.py runs it with the peers; nbs/09a_controls shows its stored result)")
@pytest.mark.slow
@pytest.mark.parametrize("market", ["regime", "regime_slow", "signal_fast"])
def test_library_default_agent_finds_the_planted_edge(market):
    """The default market and two others pass at the control's size (seeds 0-2). `signal` and `signal_slow` are measured
    in the benchmark as well and do not pass yet (nbs/09a_controls.ipynb says by how much); with gamma=0.99 (the old
    default) regime_slow failed here (seed 2's gap 0.17)."""
    rows = pd.DataFrame([controls.train_and_test(market, s) for s in range(3)])
    v = controls.positive_control_verdict(rows).iloc[0]
    assert v["passed"], v.to_dict()
