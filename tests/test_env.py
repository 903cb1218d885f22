"Tests of tradingrl_nb.env, vec_env and baselines: timing (no look-ahead), accounting, costs, actions, checkers, the batched VecEnv and the baseline policies."
import math
import warnings

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from tradingrl_nb.data import synthetic_market, load_market_data
from tradingrl_nb.baselines import BuyAndHold, Flat, Momentum, RandomPolicy, make_baseline
from tradingrl_nb.env import ENV_ID, TradingEnv
from tradingrl_nb.vec_env import TradingVecEnv
from tradingrl_nb.market import prepare_market

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL = dict(window=8, windows=(5, 21))


@pytest.fixture(scope="module")
def mkt():
    return synthetic_market(400, seed=3)


@pytest.fixture(scope="module")
def spx():
    return load_market_data("sp500")


def flat_market(n=200, price=100.0):
    idx = pd.bdate_range("2001-01-01", periods=n, name="date")
    return pd.DataFrame(dict(open=price, high=price, low=price, close=price, volume=1e6), index=idx)


def run(env, actions=None, policy=None, seed=0):
    "Run one episode; returns observations, rewards and infos (the reset info first)."
    obs, info = env.reset(seed=seed)
    O, R, I = [obs], [], [info]
    i, done = 0, False
    while not done:
        a = policy(obs) if policy is not None else actions[i % len(actions)]
        obs, r, term, trunc, info = env.step(a)
        O.append(obs)
        R.append(r)
        I.append(info)
        done, i = term or trunc, i + 1
    return np.array(O), np.array(R), I


# ---------------------------------------------------------------- timing: no look-ahead
@HYP
@given(cut=st.integers(40, 380), noise_seed=st.integers(0, 10_000), scale=st.floats(0.5, 2.0))
def test_no_look_ahead(mkt, cut, noise_seed, scale):
    "Perturb every bar after `cut`: observations up to `cut` and rewards earned up to `cut` are unchanged."
    rng = np.random.default_rng(noise_seed)
    pert = mkt.copy()
    f = np.exp(rng.normal(0, 0.05, size=len(mkt) - cut - 1)) * scale
    for c in ("open", "high", "low", "close"):
        pert.iloc[cut + 1:, pert.columns.get_loc(c)] *= f
    pert.iloc[cut + 1:, pert.columns.get_loc("volume")] *= rng.uniform(0.1, 10, size=len(mkt) - cut - 1)
    kw = dict(SMALL, cost_bps=5, borrow_rate=0.05)
    e1, e2 = TradingEnv(mkt, **kw), TradingEnv(pert, **kw)
    # a policy that reads the observation: the same observations must give the same actions
    w = np.random.default_rng(1).normal(size=e1.observation_space.shape[0])
    pol = lambda o: np.array([np.tanh(o @ w)], np.float32)
    O1, R1, I1 = run(e1, policy=pol)
    O2, R2, I2 = run(e2, policy=pol)
    t0 = e1.market.t_lo
    k = cut - t0  # observation index k is bar t0 + k; reward k is earned from bar t0 + k to t0 + k + 1
    if k < 0:
        return
    assert np.array_equal(O1[:k + 1], O2[:k + 1])
    assert np.array_equal(R1[:k], R2[:k])
    assert [i["portfolio_value"] for i in I1[:k + 1]] == [i["portfolio_value"] for i in I2[:k + 1]]
    # and the perturbation is visible right after the cut (the test can fail)
    assert not np.array_equal(O1[k + 1], O2[k + 1]) or scale == 1.0


def test_decision_date_and_return_timing_next_close(mkt):
    "Default: the position chosen at bar t is filled at close[t+1] and earns close[t+1] -> close[t+2]."
    env = TradingEnv(mkt, cost_bps=0, borrow_rate=0, **SMALL)
    obs, info = env.reset(seed=0)
    t = env.market.t_lo
    _, r, _, _, info = env.step(np.array([1.0]))
    assert info["date"] == mkt.index[t] and r == 0.0 and info["price"] == mkt.close.iloc[t + 1]
    _, r, _, _, info = env.step(np.array([1.0]))
    assert info["date"] == mkt.index[t + 1]
    assert r == pytest.approx(math.log(mkt.close.iloc[t + 2] / mkt.close.iloc[t + 1]), rel=1e-12)


def test_decision_date_and_return_timing_same_close(mkt):
    "same_close: the position chosen at bar t earns close[t] -> close[t+1]."
    env = TradingEnv(mkt, cost_bps=0, borrow_rate=0, execution="same_close", **SMALL)
    obs, info = env.reset(seed=0)
    t = env.market.t_lo
    assert info["date"] == mkt.index[t]
    _, r, _, _, info = env.step(np.array([1.0]))
    assert info["date"] == mkt.index[t]
    assert r == pytest.approx(math.log(mkt.close.iloc[t + 1] / mkt.close.iloc[t]), rel=1e-12)
    _, r, _, _, info = env.step(np.array([-0.5]))
    assert info["date"] == mkt.index[t + 1]
    assert info["price"] == mkt.close.iloc[t + 2]


def test_regime_column_is_ignored(mkt):
    other = mkt.copy()
    other["regime"] = 1 - other["regime"]
    o1, r1, _ = run(TradingEnv(mkt, **SMALL), actions=[np.array([0.3])])
    o2, r2, _ = run(TradingEnv(other, **SMALL), actions=[np.array([0.3])])
    assert np.array_equal(o1, o2) and np.array_equal(r1, r2)


# ---------------------------------------------------------------- accounting and costs
@HYP
@given(acts=st.lists(st.floats(-1.5, 1.5), min_size=1, max_size=30), cost=st.floats(0, 50),
       slip=st.floats(0, 20), borrow=st.floats(0, 0.5), scale=st.floats(0.1, 100),
       execution=st.sampled_from(["next_close", "same_close"]), rates=st.tuples(st.floats(-0.02, 0.1), st.floats(0, 0.05)))
def test_accounting_identity_and_costs(mkt, acts, cost, slip, borrow, scale, execution, rates):
    env = TradingEnv(mkt, cost_bps=cost, slippage_bps=slip, borrow_rate=borrow, reward_scale=scale,
                     episode_length=60, execution=execution, cash_rate=rates[0], dividend_yield=rates[1], **SMALL)
    O, R, I = run(env, actions=[np.array([a]) for a in acts], seed=1)
    V = [i["portfolio_value"] for i in I]
    for i in I:
        assert i["portfolio_value"] == pytest.approx(i["cash"] + i["shares"] * i["price"], rel=1e-12, abs=1e-15)
        assert i["cost"] >= 0 and np.isfinite(i["cost"])
        assert -1.0 <= i["position"] <= 1.0
    # the reward is the log growth after costs, so rewards sum to the log growth of the episode
    assert R.sum() == pytest.approx(scale * math.log(V[-1] / V[0]), rel=1e-9, abs=1e-12)
    assert np.isfinite(O).all() and np.isfinite(R).all()
    assert (np.abs(O) <= env.obs_clip).all()
    # value changes by exactly the held position's P&L plus carry minus costs; the fill moves shares, not value
    for a, b in zip(I[:-1], I[1:]):
        held = b["shares"] if execution == "same_close" else a["shares"]
        pnl = held * (b["price"] - a["price"])
        assert b["portfolio_value"] == pytest.approx(a["portfolio_value"] + pnl + b["carry"] - b["cost"], rel=1e-10, abs=1e-13)


def test_costs_charged_in_reward(mkt):
    "The same trades with and without costs: the costly run earns less reward by exactly the costs."
    acts = [np.array([a]) for a in (1, -1, 0.5, 0, -0.3, 1)]
    _, r0, i0 = run(TradingEnv(mkt, cost_bps=0, borrow_rate=0, episode_length=30, **SMALL), actions=acts)
    _, r1, i1 = run(TradingEnv(mkt, cost_bps=10, borrow_rate=0, episode_length=30, **SMALL), actions=acts)
    assert r1.sum() < r0.sum()
    assert sum(i["cost"] for i in i1) > 0 and all(i["cost"] == 0 for i in i0)
    # the first step's cost: buying 1 of value 1 at k = 10 bps costs k / (1 + k)
    k = 10e-4
    assert i1[1]["cost"] == pytest.approx(k / (1 + k), rel=1e-12)


@pytest.mark.parametrize("target", [0.0, 1.0])
def test_holding_costs_nothing(mkt, target):
    env = TradingEnv(mkt, cost_bps=7, slippage_bps=3, borrow_rate=0.1, **SMALL)
    _, _, I = run(env, actions=[np.array([target])])
    assert all(i["cost"] == 0 for i in I[2:])  # only the first step trades
    assert I[1]["cost"] == (0 if target == 0 else pytest.approx(1e-3 / (1 + 1e-3)))


@HYP
@given(first=st.floats(-1, 1), moves=st.lists(st.floats(-1, 1), min_size=1, max_size=10))
def test_zero_cost_when_position_unchanged(mkt, first, moves):
    "An action equal to the current (drifted) exposure trades nothing and costs nothing."
    env = TradingEnv(mkt, cost_bps=10, slippage_bps=5, borrow_rate=0, episode_length=40, execution="same_close", **SMALL)
    env.reset(seed=0)
    env.step(np.array([first]))
    for m in moves:
        held = env.exposure
        _, _, _, _, info = env.step(np.array([held]))
        if abs(held) <= 1.0:  # a short drifted beyond -1 is outside the action space: clipped, so it trades
            assert info["cost"] == 0.0 and info["trade"] == 0.0
        _, _, _, _, info = env.step(np.array([m]))
        assert info["cost"] >= 0


@pytest.mark.parametrize("execution", ["next_close", "same_close"])
def test_constant_long_without_cost_is_buy_and_hold(spx, execution):
    env = TradingEnv(spx, cost_bps=0, slippage_bps=0, borrow_rate=0, start="2015-01-01", execution=execution)
    _, R, I = run(env, actions=[np.array([1.0], np.float32)])
    p = spx.close.to_numpy()
    t0, t1 = env.market.t_lo, env.market.t_hi
    assert I[0]["date"] == pd.Timestamp("2015-01-02")
    growth = np.array([i["portfolio_value"] for i in I])
    tf = t0 + (execution == "next_close")  # bought at the close of the fill bar
    assert np.allclose(growth, np.r_[np.ones(tf - t0), p[tf:t1 + 1] / p[tf]], rtol=1e-12, atol=0)
    assert np.allclose(growth[1:], [i["benchmark"] for i in I[1:]], rtol=1e-12, atol=0)
    assert np.allclose(R[tf - t0:], np.diff(np.log(p[tf:t1 + 1])), rtol=1e-9, atol=1e-15)


def test_flat_keeps_value_constant(mkt):
    env = TradingEnv(mkt, cost_bps=25, slippage_bps=10, borrow_rate=0.3, initial_value=1000.0, **SMALL)
    _, R, I = run(env, actions=[np.array([0.0])])
    assert all(i["portfolio_value"] == 1000.0 and i["cost"] == 0 for i in I)
    assert (R == 0).all()


def test_short_pays_borrow():
    "On a constant price a short book loses exactly the borrow charge each bar (and one entry cost)."
    env = TradingEnv(flat_market(), cost_bps=0, borrow_rate=0.252, execution="same_close", **SMALL)
    _, R, I = run(env, actions=[np.array([-1.0])])
    costs = np.array([i["cost"] for i in I[1:]])
    V = np.array([i["portfolio_value"] for i in I])
    assert np.allclose(costs, 0.001 * V[:-1], rtol=1e-12)  # 25.2% a year / 252 = 0.1% a bar of the short notional
    assert np.allclose(R, math.log(1 - 0.001), rtol=1e-9)
    # filled at the next close: the first night is flat, then the same charge
    env = TradingEnv(flat_market(), cost_bps=0, borrow_rate=0.252, **SMALL)
    _, R, I = run(env, actions=[np.array([-1.0])])
    assert R[0] == 0.0 and np.allclose(R[1:], math.log(1 - 0.001), rtol=1e-9)


def test_discrete_and_long_only_spaces(mkt):
    d = TradingEnv(mkt, discrete=True, **SMALL)
    assert d.action_space == gym.spaces.Discrete(3)
    d.reset(seed=0)
    assert [d.step(a)[4]["position"] for a in (0, 1, 2, np.int64(0))] == [-1.0, 0.0, 1.0, -1.0]
    lo = TradingEnv(mkt, long_only=True, **SMALL)
    assert lo.action_space.low[0] == 0 and lo.action_space.high[0] == 1
    lo.reset(seed=0)
    assert lo.step(np.array([-0.7]))[4]["position"] == 0.0  # documented clip
    dl = TradingEnv(mkt, long_only=True, discrete=True, **SMALL)
    assert dl.action_space == gym.spaces.Discrete(2)
    dl.reset(seed=0)
    assert [dl.step(a)[4]["position"] for a in (1, 0)] == [1.0, 0.0]


# ---------------------------------------------------------------- bad actions and bad input
@pytest.mark.parametrize("bad", [np.array([np.nan]), np.array([np.inf]), np.array([-np.inf]), float("nan"),
                                 np.array([0.1, 0.2]), np.zeros((1, 1)), np.zeros((2, 1)), "long", None])
def test_bad_box_actions_raise(mkt, bad):
    env = TradingEnv(mkt, **SMALL)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(bad)


@pytest.mark.parametrize("bad", [3, -1, 1.5, float("nan"), True, np.array([0, 1])])
def test_bad_discrete_actions_raise(mkt, bad):
    env = TradingEnv(mkt, discrete=True, **SMALL)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(bad)


@given(a=st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300))
@HYP
def test_out_of_range_is_clipped(mkt, a):
    env = TradingEnv(mkt, **SMALL)
    env.reset(seed=0)
    obs, r, _, _, info = env.step(np.array([a]))
    assert info["position"] == min(max(a, -1.0), 1.0)
    assert np.isfinite(obs).all() and np.isfinite(r)


def test_vec_bad_actions_raise(mkt):
    venv = TradingVecEnv(mkt, 4, seed=0, **SMALL)
    venv.reset()
    for bad in (np.full((4, 1), np.nan), np.zeros((3, 1)), np.zeros((4, 2)), np.array([[0.1], [np.inf], [0], [0]])):
        with pytest.raises(ValueError, match="actions"):
            venv.step(bad)
    dv = TradingVecEnv(mkt, 4, seed=0, discrete=True, **SMALL)
    dv.reset()
    for bad in (np.array([0, 1, 3, 0]), np.array([0.5, 1, 1, 1]), np.array([True] * 4)):
        with pytest.raises(ValueError, match="actions"):
            dv.step(bad)
    assert np.isfinite(venv.step(np.full((4, 1), 9.0))[0]).all()  # clipped


def test_step_before_reset_and_after_end(mkt):
    env = TradingEnv(mkt, episode_length=2, **SMALL)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0.0]))
    env.reset(seed=0)
    env.step(np.array([0.0]))
    assert env.step(np.array([0.0]))[3] is True
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0.0]))


def test_bad_input_frames(mkt):
    with pytest.raises(ValueError, match="close"):
        TradingEnv(mkt.drop(columns="close"))
    with pytest.raises(ValueError, match="too short"):
        TradingEnv(mkt.iloc[:25], **SMALL)
    with pytest.raises(ValueError, match="empty span"):
        TradingEnv(mkt, start="2030-01-01", **SMALL)
    with pytest.raises(ValueError, match="first possible decision date"):
        TradingEnv(mkt, start=mkt.index[5], **SMALL)
    with pytest.raises(ValueError, match="episode_length"):
        TradingEnv(mkt, episode_length=10_000, **SMALL)
    bad = mkt.copy()
    bad.iloc[100, bad.columns.get_loc("close")] = np.nan
    with pytest.raises(ValueError, match="row 100"):
        TradingEnv(bad, **SMALL)
    with pytest.raises(ValueError, match="increasing"):
        TradingEnv(mkt.iloc[::-1], **SMALL)
    with pytest.raises(ValueError, match="cost_bps"):
        TradingEnv(mkt, cost_bps=-1, **SMALL)


def test_span_uses_history_before_start(spx):
    "Features and window may come from before `start`, so trading begins on the first bar of the span."
    env = TradingEnv(spx, window=32, start="2015-01-01", end="2015-12-31")
    obs, info = env.reset(seed=0)
    assert info["date"] == pd.Timestamp("2015-01-02") and env.market.dates[env.market.t_hi] == pd.Timestamp("2015-12-31")
    _, _, I = run(env, actions=[np.array([0.0])])
    assert I[-1]["date"] == pd.Timestamp("2015-12-30") and len(I) - 1 == 251


# ---------------------------------------------------------------- episodes and seeding
def test_random_starts_are_seeded_and_in_span(mkt):
    env = TradingEnv(mkt, episode_length=50, **SMALL)
    def starts(seed, n=20):
        out = [env.reset(seed=seed)[1]["date"]] + [env.reset()[1]["date"] for _ in range(n - 1)]
        return out
    a, b, c = starts(1), starts(1), starts(2)
    assert a == b and a != c and len(set(a)) > 5
    lo, hi = env.market.dates[env.market.t_lo], env.market.dates[env.market.t_hi - 50]
    assert all(lo <= d <= hi for d in a + c)
    _, R, _ = run(env, actions=[np.array([0.5])], seed=3)
    assert len(R) == 50


def test_checkers_and_registration(mkt):
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check
    for kw in (dict(), dict(discrete=True), dict(long_only=True), dict(discrete=True, long_only=True)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gym_check(TradingEnv(mkt, episode_length=30, **SMALL, **kw))
            sb3_check(TradingEnv(mkt, episode_length=30, **SMALL, **kw))
    env = gym.make(ENV_ID, df=mkt, render_mode="rgb_array", **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym_check(env.unwrapped)
    env.reset(seed=0)
    env.step(np.array([0.5], np.float32))
    img = env.render()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.std() > 0


def test_observation_layout(mkt):
    env = TradingEnv(mkt, **SMALL)
    obs, _ = env.reset(seed=0)
    assert len(env.obs_names) == obs.shape[0] == 8 * env.market.n_features + 3
    assert env.obs_names[-3:] == ["position", "unrealized_pnl", "drawdown"]
    i = env.obs_index("ret_21")
    t = env.market.t_lo
    r21 = np.log(mkt.close).diff().rolling(21).sum().iloc[t]
    assert obs[i] == pytest.approx(r21 / (0.01 * math.sqrt(21)), rel=1e-5)
    assert env.obs_index("ret_21", lag=7) == i - 7 * env.market.n_features
    with pytest.raises(ValueError, match="not in the observation"):
        env.obs_index("ret_21", lag=8)
    # the book: exposure and drawdown after a losing long
    obs, _, _, _, info = env.step(np.array([1.0]))
    assert obs[-3] == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------- TradingVecEnv
VEC_CASES = [
    dict(window=8, windows=(5, 21), episode_length=15, cost_bps=3, slippage_bps=1, borrow_rate=0.05),
    dict(window=4, windows=(5,), episode_length=7, discrete=True, cost_bps=10),
    dict(window=8, windows=(5, 21), episode_length=11, long_only=True, reward_scale=100.0),
    dict(window=8, windows=(5, 21), episode_length=None, cost_bps=1),  # whole-span episodes
]


def _close(a, b):
    if isinstance(a, np.ndarray): return np.allclose(a, b, atol=1e-6)
    if isinstance(a, float): return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@pytest.mark.parametrize("kw", VEC_CASES)
def test_vec_env_matches_dummy_vec_env(kw):
    df = synthetic_market(160 if kw["episode_length"] is None else 400, seed=5)
    n = 5
    dummy = DummyVecEnv([lambda: TradingEnv(df, **kw) for _ in range(n)])
    vec = TradingVecEnv(df, n, full_info=True, **kw)
    dummy.seed(11)
    vec.seed(11)
    assert np.array_equal(dummy.reset(), vec.reset())
    assert all(all(_close(a[k], b[k]) for k in a) and a.keys() == b.keys() for a, b in zip(dummy.reset_infos, vec.reset_infos))
    rng = np.random.default_rng(0)
    ends = 0
    for step in range(90):
        if kw.get("discrete"):
            a = rng.integers(0, 3, size=n)
        else:
            a = rng.uniform(-1.3, 1.3, size=(n, 1)).astype(np.float32)
            a[rng.random(n) < 0.3] = a[0]  # some repeated targets
        o1, r1, d1, i1 = dummy.step(a)
        o2, r2, d2, i2 = vec.step(a)
        assert o2.dtype == o1.dtype and r2.dtype == r1.dtype and d2.dtype == d1.dtype
        assert np.allclose(o1, o2, atol=1e-6, rtol=0), step
        assert np.allclose(r1, r2, rtol=1e-6, atol=1e-9), step
        assert np.array_equal(d1, d2), step
        for a_, b_ in zip(i1, i2):
            assert a_.keys() == b_.keys()
            assert all(_close(a_[k], b_[k]) for k in a_), (step, a_, b_)
        ends += d1.sum()
    assert ends >= n  # episode ends and auto-resets were exercised
    # the book as arrays matches the single envs
    assert np.allclose(vec.portfolio_value, [e.portfolio_value for e in dummy.envs], rtol=1e-9)


def test_vec_env_light_infos_and_reseeding(mkt):
    venv = TradingVecEnv(mkt, 6, seed=2, episode_length=5, **SMALL)
    o = venv.reset()
    for _ in range(5):
        o, r, d, infos = venv.step(np.zeros((6, 1), np.float32))
    assert d.all()
    for info, obs in zip(infos, o):
        assert set(info) == {"terminal_observation", "TimeLimit.truncated"} and info["TimeLimit.truncated"] is True
        assert info["terminal_observation"].shape == obs.shape
    o, r, d, infos = venv.step(np.zeros((6, 1), np.float32))
    assert not d.any() and all(i == {} for i in infos)
    # same seed, same start bars; seeds differ across agents
    a = TradingVecEnv(mkt, 6, seed=2, episode_length=5, **SMALL)
    a.reset()
    b = TradingVecEnv(mkt, 6, episode_length=5, **SMALL)
    b.seed(2)
    b.reset()
    assert (a.dates == b.dates).all() and len(set(a.dates)) > 1


def test_vec_env_under_vec_normalize_and_ppo(mkt):
    from stable_baselines3 import PPO
    venv = TradingVecEnv(mkt, 8, seed=0, episode_length=32, **SMALL)
    norm = VecNormalize(venv, gamma=0.99)
    obs = norm.reset()
    for _ in range(40):
        obs, r, d, infos = norm.step(np.random.default_rng(0).uniform(-1, 1, (8, 1)).astype(np.float32))
        assert np.isfinite(obs).all() and np.isfinite(r).all()
        for i in infos:
            if "terminal_observation" in i: assert np.isfinite(i["terminal_observation"]).all()
    raw = norm.get_original_obs()
    assert np.allclose(norm.normalize_obs(raw), obs) and not np.allclose(raw, obs)
    assert norm.obs_rms.count > 8
    model = PPO("MlpPolicy", norm, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(256)
    assert model.num_timesteps >= 256


def test_baselines(mkt):
    env = TradingEnv(mkt, **SMALL)
    obs, _ = env.reset(seed=0)
    assert BuyAndHold(env)(obs).tolist() == [1.0] and Flat(env)(obs).tolist() == [0.0]
    m = Momentum(env, feature="ret_21")
    batch = np.stack([obs, obs])
    batch[0, env.obs_index("ret_21")], batch[1, env.obs_index("ret_21")] = 0.5, -0.5
    assert m.predict(batch)[0][:, 0].tolist() == [1.0, 0.0]
    assert Momentum(env, feature="ret_21", allow_short=True).predict(batch)[0][:, 0].tolist() == [1.0, -1.0]
    r1, r2 = RandomPolicy(env, seed=4), RandomPolicy(env, seed=4)
    s1 = [float(r1(obs)[0]) for _ in range(5)]
    assert s1 == [float(r2(obs)[0]) for _ in range(5)] and len(set(s1)) == 5
    r1.bind(env)
    assert [float(r1(obs)[0]) for _ in range(5)] == s1  # rebinding restarts the generator
    d = TradingEnv(mkt, discrete=True, **SMALL)
    batch[0, env.obs_index("ret_5")], batch[1, env.obs_index("ret_5")] = 0.5, -0.5
    assert BuyAndHold(d)(obs) == 2 and Flat(d)(obs) == 1 and make_baseline("momentum", d, feature="ret_5").predict(batch)[0].tolist() == [2, 1]
    venv = TradingVecEnv(mkt, 3, seed=0, **SMALL)
    assert make_baseline("buy_and_hold", venv).predict(venv.reset())[0].shape == (3, 1)
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("oracle")
    with pytest.raises(RuntimeError, match="bind"):
        Flat().predict(obs)


def test_prepare_market_shares_one_matrix(mkt):
    m = prepare_market(mkt, window=8, windows=(5, 21))
    venv = TradingVecEnv(mkt, 64, seed=0, window=8, windows=(5, 21))
    assert venv.market.obs_rows.nbytes == m.obs_rows.nbytes  # one copy of the market, whatever n_envs
    assert m.obs_rows.dtype == np.float32 and m.obs_rows.flags.c_contiguous


def test_envs_can_share_market_arrays(mkt):
    first = TradingEnv(mkt, episode_length=20, cost_bps=4, **SMALL)
    second = TradingEnv(None, market=first.market, episode_length=20, cost_bps=4)
    assert second.market is first.market and second.observation_space == first.observation_space
    o1, r1, _ = run(first, actions=[np.array([0.7]), np.array([-0.2])], seed=9)
    o2, r2, _ = run(second, actions=[np.array([0.7]), np.array([-0.2])], seed=9)
    assert np.array_equal(o1, o2) and np.array_equal(r1, r2)


# ---------------------------------------------------------------- execution timing (issue 13)
def reversal(env):
    "1-day reversal: short after an up close, long after a down close, reading ret_1 of bar t."
    i = env.obs_index("ret_1")
    return lambda o: np.array([-np.sign(o[i])], np.float32)


def hand_equity(close, t0, t1, w, delay):
    "Value of a zero-cost book that holds w[t] (decided at bar t) from t + delay to t + delay + 1."
    r = close[t0 + 1:t1 + 1] / close[t0:t1] - 1.0
    held = np.r_[np.zeros(delay), w[:len(r) - delay]]
    return np.r_[1.0, np.cumprod(1.0 + held * r)]


def test_default_execution_fills_at_next_close(spx):
    "A rule that reads bar t's close cannot trade at it: by default its equity is the one-bar-delayed hand computation."
    env = TradingEnv(spx, cost_bps=0, borrow_rate=0, start="2015-01-01")
    assert env.execution == "next_close"
    O, R, I = run(env, policy=reversal(env))
    t0, t1 = env.market.t_lo, env.market.t_hi
    w = np.array([i["position"] for i in I[1:]])
    close = spx.close.to_numpy()
    value = np.array([i["portfolio_value"] for i in I])
    assert np.allclose(value, hand_equity(close, t0, t1, w, delay=1), rtol=1e-10)
    assert not np.allclose(value, hand_equity(close, t0, t1, w, delay=0), rtol=1e-3)


def test_same_close_is_opt_in_and_optimistic(spx):
    env = TradingEnv(spx, cost_bps=0, borrow_rate=0, start="2015-01-01", execution="same_close")
    O, R, I = run(env, policy=reversal(env))
    t0, t1 = env.market.t_lo, env.market.t_hi
    w = np.array([i["position"] for i in I[1:]])
    value = np.array([i["portfolio_value"] for i in I])
    assert np.allclose(value, hand_equity(spx.close.to_numpy(), t0, t1, w, delay=0), rtol=1e-10)


def test_next_open_refused_where_opens_are_stale(spx):
    with pytest.raises(ValueError, match="open.*previous close"):
        TradingEnv(spx, execution="next_open", end="2005-12-31")
    with pytest.raises(ValueError, match="open.*previous close"):
        TradingEnv(spx, execution="next_open")  # the whole bundled file: 39% stale
    with pytest.raises(ValueError, match="execution"):
        TradingEnv(spx, execution="tomorrow")


def test_next_open_fills_at_the_open(spx):
    "From 2014 the bundled opens are real: a long bought at the next open earns open -> close on its first bar."
    env = TradingEnv(spx, cost_bps=0, borrow_rate=0, start="2015-01-01", execution="next_open")
    env.reset(seed=0)
    t = env.market.t_lo
    _, r, _, _, info = env.step(np.array([1.0]))
    o, c = spx.open.to_numpy(), spx.close.to_numpy()
    assert r == pytest.approx(math.log(c[t + 1] / o[t + 1]), rel=1e-12)
    _, r, _, _, info = env.step(np.array([1.0]))
    assert r == pytest.approx(math.log(c[t + 2] / c[t + 1]), rel=1e-12)


@pytest.mark.parametrize("execution", ["next_close", "same_close"])
def test_vec_env_matches_env_for_each_execution(mkt, execution):
    kw = dict(SMALL, cost_bps=3, borrow_rate=0.05, episode_length=30, execution=execution, cash_rate=0.03, dividend_yield=0.02)
    venv = TradingVecEnv(mkt, n_envs=3, seed=5, full_info=True, **kw)
    envs = [TradingEnv(mkt, **kw) for _ in range(3)]
    obs = venv.reset()
    for i, e in enumerate(envs):
        o, _ = e.reset(seed=5 + i)
        assert np.array_equal(o, obs[i])
    rng = np.random.default_rng(0)
    for _ in range(70):
        a = rng.uniform(-1, 1, size=(3, 1)).astype(np.float32)
        obs, r, d, infos = venv.step(a)
        for i, e in enumerate(envs):
            o, ri, term, trunc, info = e.step(a[i])
            assert ri == pytest.approx(r[i], rel=1e-6, abs=1e-7)
            assert info["portfolio_value"] == pytest.approx(infos[i]["portfolio_value"], rel=1e-12)
            assert info["benchmark"] == pytest.approx(infos[i]["benchmark"], rel=1e-12)
            assert info["carry"] == pytest.approx(infos[i]["carry"], rel=1e-12, abs=1e-18)
            if term or trunc:
                e.reset()


# ---------------------------------------------------------------- total return: cash rate and dividends (issue 13)
@pytest.mark.parametrize("execution", ["next_close", "same_close"])
def test_cash_earns_the_cash_rate(execution):
    env = TradingEnv(flat_market(), cash_rate=0.0252, execution=execution, **SMALL)
    _, R, I = run(env, actions=[np.array([0.0])])
    V = np.array([i["portfolio_value"] for i in I])
    assert np.allclose(V, 1.0001 ** np.arange(len(V)), rtol=1e-12)
    assert np.allclose(R, math.log(1.0001), rtol=1e-9)


@pytest.mark.parametrize("execution", ["next_close", "same_close"])
def test_dividends_paid_to_longs_and_charged_to_shorts(execution):
    kw = dict(SMALL, cost_bps=0, borrow_rate=0, dividend_yield=0.0252, execution=execution)
    _, R, I = run(TradingEnv(flat_market(), **kw), actions=[np.array([1.0])])
    V = np.array([i["portfolio_value"] for i in I])
    lag = 1 if execution == "next_close" else 0  # the first bar is held flat when the fill is at the next close
    n = len(V) - 1 - lag  # bars held long; the dividends land in cash and the daily target 1.0 reinvests them
    assert V[-1] == pytest.approx(1.0001 ** n, rel=1e-9)
    bench = np.array([i["benchmark"] for i in I[1:]])
    assert np.allclose(bench, 1.0001 ** (np.arange(1, len(V)) - lag), rtol=1e-10)  # reinvested in the index
    _, R, I = run(TradingEnv(flat_market(), **kw), actions=[np.array([-1.0])])
    assert I[-1]["portfolio_value"] == pytest.approx(0.9999 ** n, rel=1e-9)


def test_rates_as_daily_series(mkt):
    cr = pd.Series(0.0, index=mkt.index)
    cr.iloc[200:] = 0.0504
    env = TradingEnv(mkt, cash_rate=cr, **SMALL)
    _, _, I = run(env, actions=[np.array([0.0])])
    V = np.array([i["portfolio_value"] for i in I])
    t = env.market.t_lo + np.arange(len(V) - 1)
    assert np.allclose(V[1:] / V[:-1], np.where(t >= 200, 1.0002, 1.0), rtol=1e-12)
    with pytest.raises(ValueError, match="cash_rate.*2001"):
        TradingEnv(mkt, cash_rate=cr.loc["2001-06-01":], **SMALL)
    with pytest.raises(ValueError, match="dividend_yield"):
        TradingEnv(mkt, dividend_yield=float("nan"), **SMALL)
