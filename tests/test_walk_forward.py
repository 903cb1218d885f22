"""The honest main job: train_agent's early stopping, trial count and recorded returns, bit-identical metrics for a seed,
and the statistics of recorded runs (tiny parameters)."""
import numpy as np
import pandas as pd
import pytest

from tradingrl_nb import experiments as ex
from tradingrl_nb.stats import run_statistics

TINY = dict(total_timesteps=1024, eval_every=256, n_envs=2, n_steps=32, batch_size=64, n_epochs=1, episode_length=64,
            window=8, lstm_hidden_size=8, n_quantiles=8, sequence_length=8, bootstrap_reps=200, baselines=[])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = [ex.run_experiment("train_agent", dict(TINY, seed=3, patience=1, test_end="2016-12-31"), device="cpu",
                              output_dir=root / f"r{i}", progress=False, report=False, raise_on_failure=False)
            for i in range(2)]
    return root, runs


@pytest.mark.slow
def test_same_seed_gives_bit_identical_metrics(two_runs):
    _, (a, b) = two_runs
    assert a.ok and b.ok, (a.error, b.error)
    assert (a.output_dir / "metrics.json").read_bytes() == (b.output_dir / "metrics.json").read_bytes()
    assert (a.output_dir / "returns.csv").read_bytes() == (b.output_dir / "returns.csv").read_bytes()


@pytest.mark.slow
def test_early_stopping_trials_and_returns(two_runs):
    _, (a, _) = two_runs
    assert a.ok, a.error
    tr = a.metrics["training"]
    assert tr["trials"] == tr["n_evals"] == len(tr["val_daily_sharpes"]) >= 1
    best = int(np.argmax(tr["val_daily_sharpes"]))  # the selection metric is the Sharpe ratio: same order
    if tr["stopped_early"]:  # patience 1: stopped at the first check without a new best, the one after the best
        assert tr["timesteps"] < 1024 and tr["n_evals"] == best + 2 and tr["best_step"] == tr["timesteps"] - 256
    else:
        # ran to the end: every check but the last was a new best (a last check without one is the end, not an early stop)
        assert tr["timesteps"] == 1024 and all(np.diff(tr["val_daily_sharpes"][:-1]) > 0)
    r = pd.read_csv(a.output_dir / "returns.csv", index_col="date", parse_dates=True)
    assert list(r.columns) == ["agent", "buy_and_hold", "agent_position"]     # the position: the tearsheet's exposure
    assert r["agent_position"].between(-1, 1).all()       # held on each day: no gap at either end
    assert r.index[0] > pd.Timestamp("2014-12-31") and r.index[-1] == pd.Timestamp("2016-12-30")
    growth = (1 + r["agent"]).prod() - 1
    assert growth == pytest.approx(a.metrics["test"]["agent"]["total_return"], rel=1e-9, abs=1e-12)
    assert a.metrics["window"]["execution"] == "next_close" and a.metrics["window"]["burn_in"] == 64


@pytest.mark.slow
def test_run_statistics_counts_the_family(two_runs):
    root, (a, _) = two_runs
    assert a.ok, a.error
    t = run_statistics(root, reps=200)
    assert len(t) == 2 and set(t["n_trials"]) == {2} and set(t["experiment"]) == {"train_agent"}
    row = t.iloc[0]
    assert row["sharpe_low"] <= row["sharpe"] <= row["sharpe_high"]
    assert row["diff_low"] <= row["sharpe_diff"] <= row["diff_high"]
    assert row["sharpe"] == pytest.approx(a.metrics["test_stats"]["sharpe"], rel=1e-9)
    assert 0 <= row["dsr"] <= 1 and 0 <= row["psr"] <= 1
    assert row["verdict"] in {"skill", "worse than buy-and-hold", "inconclusive"}


@pytest.mark.slow
def test_a_window_population_trains_as_train_agent_runs(two_runs, tmp_path):
    """walk_forward's window population (tradingrl_nb.walkforward.train_window) runs train_agent's loop: a seed in a
    two-seed window reaches the same checks, early stop, best step and test metrics as that seed's train_agent run
    (to float32 rounding of the batched rollout step: 1e-6 on the test Sharpe ratio)."""
    from tradingrl_nb.data import load_market_data
    from tradingrl_nb.walkforward import agent_kwargs, train_window
    _, (a, _) = two_runs
    assert a.ok, a.error
    span = dict(train_start=None, train_end="2012-12-31", val_start="2013-01-01", val_end="2014-12-31",
                test_start="2015-01-01", test_end="2016-12-31")
    runs = train_window(load_market_data("sp500"), span, [3, 4], total_timesteps=1024, eval_every=256, patience=1, n_envs=2,
                        episode_length=64, env_kwargs=dict(window=8, cost_bps=2.0, execution="next_close"),
                        ppo_kwargs=agent_kwargs(n_steps=32, batch_size=64, n_epochs=1, sequence_length=8, lstm_hidden_size=8,
                                                n_quantiles=8), bootstrap_reps=200, output_dirs={3: tmp_path / "s3", 4: tmp_path / "s4"})
    ours, theirs = runs[3].metrics, a.metrics
    for k in ("timesteps", "best_step", "trials", "stopped_early"): assert ours["training"][k] == theirs["training"][k], k
    for k in ("sharpe", "total_return", "max_drawdown"):
        assert ours["test"]["agent"][k] == pytest.approx(theirs["test"]["agent"][k], abs=1e-6), k
    assert ours["test"]["buy_and_hold"] == theirs["test"]["buy_and_hold"]
    r = pd.read_csv(tmp_path / "s3" / "returns.csv", index_col="date", parse_dates=True)
    theirs_r = pd.read_csv(a.output_dir / "returns.csv", index_col="date", parse_dates=True)
    assert list(r.columns) == list(theirs_r.columns) and r.index.equals(theirs_r.index)
    assert runs[4].metrics["training"]["timesteps"] >= 256 and (tmp_path / "s4" / "metrics.json").exists()
