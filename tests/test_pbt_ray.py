"""PBT on Ray Tune (optional extra `ray`): a small local run completes with an exploit and live hyperparameters."""
import functools, time

import pytest

ray = pytest.importorskip("ray", reason="ray[tune] is not installed (optional extra: pip install 'tradingrl_nb[ray]')")
pytest.importorskip("ray.tune", reason="ray is installed without the tune extra (pip install 'ray[tune]')")

from tradingrl_nb.pbt import Hyperparam, load_checkpoint  # noqa: E402
from tradingrl_nb.testing import ToyMember  # noqa: E402
from tradingrl_nb.pbt_ray import run_ray_tune  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_tune_pbt_run_completes_with_an_exploit(local_ray, tmp_path):
    mutations = {"learning_rate": Hyperparam(1e-4, 3e-2, log=True), "vgs_alpha": Hyperparam(0.0, 1.0)}
    t0 = time.time()
    flag = tmp_path / "member_failed_once"        # trial 1 raises once at step 50; FailureConfig restarts it
    factory = functools.partial(ToyMember, fail_at_step=50, fail_flag=str(flag))
    run = run_ray_tune(factory, mutations, n_members=2, n_iterations=8,
                       steps_per_iteration=10, perturbation_interval=2, max_failures=1, storage_path=tmp_path,
                       name="pbt_test", seed=1, synch=True)
    elapsed = time.time() - t0
    print(f"Ray Tune PBT run: {elapsed:.1f} s")
    assert not run.results.errors and flag.exists()
    assert sum(t.num_failures for t in run.results._experiment_analysis.trials) >= 1   # it failed and was restarted
    assert len(run.results) == 2 and all(r.metrics["training_iteration"] == 8 for r in run.results)
    assert run.scheduler._num_perturbations >= 1 and len(run.history) >= 1          # at least one exploit
    assert set(run.history.member_id) | set(run.history.source_id) <= {t for t in run.history.member_id} | set(run.history.source_id)
    assert max(r.metrics["exploits"] for r in run.results) >= 1                      # a trial restored another's checkpoint
    for r in run.results:                                                          # the config was re-applied after every load
        df = r.metrics_dataframe
        assert (df["live_learning_rate"] - df["config/learning_rate"]).abs().max() < 1e-12
        assert (df["live_vgs_alpha"] - df["config/vgs_alpha"]).abs().max() < 1e-12
        assert df["config/learning_rate"].between(1e-4, 3e-2).all()                 # explore clipped to the range
    exploited = [r for r in run.results if r.metrics["exploits"] >= 1]
    lrs = exploited[0].metrics_dataframe["config/learning_rate"]
    assert lrs.nunique() >= 2                                                       # its hyperparameters changed
    ckpt = run.results[0].checkpoint
    assert ckpt is not None
    params, meta = load_checkpoint(f"{ckpt.path}/member.safetensors")               # pickle-free member checkpoint
    assert "policy" in params and "trial_id" in meta


@pytest.mark.parametrize("strategy", ["copy", "reset"])
def test_trainable_load_checkpoint_resets_lstm_and_reapplies_config(tmp_path, strategy):
    "The Trainable's restore path without a cluster: exploit (another trial's checkpoint) vs restart (its own)."
    import torch
    from tradingrl_nb.pbt_ray import make_tune_trainable
    torch.set_num_threads(1)
    T = make_tune_trainable(ToyMember, ["learning_rate", "vgs_alpha"], 5, optimizer_exploit_strategy=strategy)
    a = T(config={"member_id": 0, "learning_rate": 1e-3, "vgs_alpha": 0.1})
    b = T(config={"member_id": 1, "learning_rate": 2e-2, "vgs_alpha": 0.7})
    a.train()
    b.train()
    b.train()
    assert a.member.lstm_states is not None and float(a.member.lstm_states[0].abs().sum()) > 0
    b.save_checkpoint(str(tmp_path / "b"))
    a.load_checkpoint(str(tmp_path / "b"))                                         # exploit: b's weights, a's config
    assert all(torch.equal(x, y) for x, y in zip(a.member.net.state_dict().values(), b.member.net.state_dict().values()))
    assert a.member.live_hyperparams() == {"learning_rate": 1e-3, "vgs_alpha": 0.1}
    assert all(float(s.abs().sum()) == 0 for s in a.member.lstm_states)
    assert (a.exploits, a.restores) == (1, 0)
    assert (a.member.optimizer.state_dict()["state"] == {}) == (strategy == "reset")
    r = a.train()
    assert r["exploits"] == 1 and r["live_learning_rate"] == 1e-3
    a.save_checkpoint(str(tmp_path / "a"))
    a.train()
    a.load_checkpoint(str(tmp_path / "a"))                                         # a restart from its own checkpoint
    assert (a.exploits, a.restores) == (1, 1) and a.member.optimizer.state_dict()["state"] != {}
    assert a.reset_config({"member_id": 0, "learning_rate": 4e-3, "vgs_alpha": 0.3})   # reuse_actors: same member, new config
    assert a.member.live_hyperparams() == {"learning_rate": 4e-3, "vgs_alpha": 0.3}


def test_recipients_of_one_donor_keep_their_own_seeds(monkeypatch):
    """Ray's explore deep-copies the donor's config (member_id included): run_ray_tune's scheduler must keep each
    trial's own identity, so that two recipients of one donor are rebuilt with their own env and torch seeds."""
    import types
    import torch
    from ray import tune
    from tradingrl_nb.data import synthetic_market
    from tradingrl_nb.pbt_ppo import PPOMemberFactory
    torch.set_num_threads(1)
    captured = {}
    class Captured(Exception): pass
    def fake_tuner(trainable, param_space=None, run_config=None, tune_config=None):
        captured.update(trainable=trainable, scheduler=tune_config.scheduler)
        raise Captured()
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(tune, "Tuner", fake_tuner)
    df = synthetic_market(400, seed=1)
    f = PPOMemberFactory(df, None, n_envs=2, env_kwargs=dict(window=1, episode_length=60),
                         ppo_kwargs=dict(n_steps=16, batch_size=32, device="cpu", policy_kwargs=dict(lstm_hidden_size=8)),
                         fitness_fn=lambda m: 0.0, seed=3)
    mutations = {"learning_rate": Hyperparam(1e-4, 1e-2, log=True)}
    with pytest.raises(Captured):
        run_ray_tune(f, mutations, n_members=3, n_iterations=4, steps_per_iteration=16, seed=0)
    sched, T = captured["scheduler"], captured["trainable"]
    trial = lambda mid, lr: types.SimpleNamespace(config={"member_id": mid, "learning_rate": lr}, trial_id=f"t{mid}")
    donor = trial(0, 1e-3)
    new = [sched._get_new_config(trial(mid, 5e-3), donor)[0] for mid in (1, 2)]
    seeds = []
    for mid, cfg in zip((1, 2), new):
        t = T(config=cfg)                                              # the recipient's actor rebuilt with the new config
        m = t.member.model
        seeds.append((m.seed, tuple(m.env._seeds)))
        assert m.seed == f(mid).model.seed                             # its own seeds, not the donor's
    assert seeds[0] != seeds[1]
    running = T(config={"member_id": 1, "learning_rate": 5e-3})
    before = running.member
    assert running.reset_config(new[0]) and running.member is before   # reuse_actors: the same trial keeps its member
