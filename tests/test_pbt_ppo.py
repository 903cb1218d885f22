"""PBT with the real DistributionalPPO: exploit copies weights, return normalizer, VGS and optimizer state per strategy,
new hyperparameters are live (over the checkpoint, through SB3's schedules), LSTM states reset on the PBT path, and a
small population runs end to end. (The seed-001 LSTM list for the model itself is in tests/test_lstm_state_reset.py.)"""
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch as th

from tradingrl_nb.data import synthetic_market
from tradingrl_nb.pbt import CLOCK, PBTScheduler, PPO_MUTATIONS, flatten_state, load_checkpoint, load_exploit
from tradingrl_nb.pbt_ppo import PPOMember, PPOMemberFactory
from tradingrl_nb.pbt_runner import run_population

DF = synthetic_market(900, seed=5)
TRAIN, VAL = DF.iloc[:600], DF.iloc[600:]
PPO_KW = dict(n_steps=32, batch_size=64, n_epochs=1, sequence_length=16, device="cpu", policy_kwargs=dict(lstm_hidden_size=16))
ENV_KW = dict(window=1, episode_length=60)


def weight_norm(model) -> float:
    "A cheap deterministic fitness for tests that are not about the backtest."
    return -float(sum(p.detach().abs().sum() for p in model.policy.parameters()))


def factory(**kw):
    return PPOMemberFactory(TRAIN, VAL, n_envs=2, env_kwargs=ENV_KW, ppo_kwargs=PPO_KW, fitness_fn=kw.pop("fitness_fn", weight_norm), **kw)


def donor_and_target(donor_hp, target_hp):
    f = factory()
    donor, target = f(1), f(0)
    donor.apply_hyperparams(donor_hp)
    target.apply_hyperparams(target_hp)
    donor.train(128)
    target.train(64)
    return donor, target


HP_A = dict(learning_rate=5e-4, ent_coef=0.01, clip_range=0.3, vgs_alpha=0.5, upgd_sigma=3e-3, cvar_alpha=0.2)
HP_B = dict(learning_rate=1e-4, ent_coef=0.001, clip_range=0.1, vgs_alpha=0.05, upgd_sigma=1e-3, cvar_alpha=0.4)


def tensors_equal(a, b):
    if isinstance(a, th.Tensor): return th.equal(a, b)
    if isinstance(a, dict): return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("strategy", ["copy", "reset"])
def test_exploit_copies_weights_normalizer_vgs_and_optimizer_per_strategy(strategy):
    donor, target = donor_and_target(HP_A, HP_B)
    s = PBTScheduler(PPO_MUTATIONS, seed=0, optimizer_exploit_strategy=strategy)
    for i, m in enumerate([target, donor]):
        s.add_member(i, HP_B if i == 0 else HP_A)
        s.report(i, float(i), 1, m.get_parameters())
    params, hp, fmt = s.exploit_and_explore(0)
    assert params is not None and ("policy.optimizer" in params) == (strategy == "copy")
    load_exploit(target, params, hp, reset_optimizer=strategy == "reset")
    d, t = donor.model, target.model
    assert tensors_equal(d.policy.state_dict(), t.policy.state_dict())
    assert tensors_equal(d.get_parameters()["return_normalizer"], t.get_parameters()["return_normalizer"])
    assert t.return_scale.snapshot == d.return_scale.snapshot
    assert tensors_equal(flatten_state(d.vgs.state_dict())[0], flatten_state(t.vgs.state_dict())[0])   # statistics
    assert t.vgs.alpha == pytest.approx(hp["vgs_alpha"])                                                 # its alpha: the new one
    live = [p for p in t.policy.parameters() if p.requires_grad]
    assert [id(p) for g in t.policy.optimizer.param_groups for p in g["params"]] == [id(p) for p in live]
    t_state, d_state = t.policy.optimizer.state_dict()["state"], d.policy.optimizer.state_dict()["state"]
    if strategy == "copy": assert tensors_equal(t_state, d_state) and len(t_state) > 0
    else: assert t_state == {}
    before = [p.detach().clone() for p in live]
    target.train(64)                                            # the live parameters are the ones that train
    assert any(not th.equal(a, b) for a, b in zip(before, live))


def test_new_hyperparameters_are_live_after_exploit_and_survive_training():
    donor, target = donor_and_target(HP_A, HP_B)
    # the checkpoint carries the donor's values: loading it alone leaves UPGD's sigma at the donor's value
    plain = factory()(2)
    plain.apply_hyperparams(HP_B)
    plain.model.set_parameters({k: v for k, v in donor.get_parameters(include_optimizer=True).items() if k != CLOCK})
    assert plain.model.policy.optimizer.param_groups[0]["sigma"] == HP_A["upgd_sigma"] != HP_B["upgd_sigma"]

    s = PBTScheduler(PPO_MUTATIONS, seed=4, resample_probability=0.0)
    for i, (m, hp) in enumerate([(target, HP_B), (donor, HP_A)]):
        s.add_member(i, hp)
        s.report(i, float(i), 1, m.get_parameters())
    params, hp, _ = s.exploit_and_explore(0)
    for k in HP_A:   # explored from the donor's values by x0.8 / x1.2 (then clipped to the range)
        assert any(math.isclose(hp[k], PPO_MUTATIONS[k].clip(HP_A[k] * f)) for f in (0.8, 1.2)), k
    load_exploit(target, params, hp)
    live = target.live_hyperparams()
    assert live["learning_rate"] == live["lr_schedule"] == hp["learning_rate"] != HP_A["learning_rate"]
    for k in ("clip_range", "ent_coef", "vgs_alpha", "upgd_sigma", "cvar_alpha"): assert live[k] == pytest.approx(hp[k]), k
    seen, update = [], target.model._update
    def spy(seqs, clip_range, clip_vf, ent_coef):                # what train() really uses in its updates
        seen.append((clip_range, ent_coef, target.model.policy.optimizer.param_groups[0]["lr"], target.model.cvar_alpha))
        return update(seqs, clip_range, clip_vf, ent_coef)
    target.model._update = spy
    target.train(64)                                            # train() re-applies lr_schedule: still the new lr
    assert seen and all(c == pytest.approx(hp["clip_range"]) and e == pytest.approx(hp["ent_coef"]) and
                        lr == pytest.approx(hp["learning_rate"]) and a == pytest.approx(hp["cvar_alpha"]) for c, e, lr, a in seen)
    live = target.live_hyperparams()
    assert live["learning_rate"] == hp["learning_rate"] and live["upgd_sigma"] == pytest.approx(hp["upgd_sigma"])


def _first_step_quantiles(model, obs):
    "What the next rollout step would predict from the model's carried-over LSTM states."
    with th.no_grad():
        return model.policy(th.as_tensor(obs), model.rollout_state.lstm, deterministic=True)[2]


@pytest.mark.parametrize("strategy", ["copy", "reset"])
def test_lstm_states_reset_on_the_pbt_path(strategy):
    "PBT exploit (scheduler + load_exploit): the next prediction is the donor's fresh prediction, not a stale-state one."
    donor, target = donor_and_target(HP_A, HP_B)
    m = target.model
    stale = m.rollout_state.lstm
    n = stale.pi[0].shape[1]
    assert any(float(x.abs().sum()) > 0 for x in (*stale.pi, *stale.vf))
    obs = np.random.default_rng(0).normal(size=(n, m.observation_space.shape[0])).astype(np.float32)
    with th.no_grad():
        fresh = donor.model.policy(th.as_tensor(obs), donor.model.policy.initial_state(n), deterministic=True)[2]
    s = PBTScheduler(PPO_MUTATIONS, seed=0, optimizer_exploit_strategy=strategy)
    for i, (mm, hp) in enumerate([(target, HP_B), (donor, HP_A)]):
        s.add_member(i, hp)
        s.report(i, float(i), 1, mm.get_parameters())
    params, hp, _ = s.exploit_and_explore(0)
    load_exploit(target, params, hp, reset_optimizer=strategy == "reset")
    states = m.rollout_state.lstm
    assert all(float(x.abs().sum()) == 0 for x in (*states.pi, *states.vf)) and states.pi[0].shape[1] == n
    assert th.allclose(_first_step_quantiles(m, obs), fresh, atol=1e-6)
    m.rollout_state.lstm = stale                                  # the same weights with the stale states disagree
    assert not th.allclose(_first_step_quantiles(m, obs), fresh, atol=1e-3)


def test_unknown_or_invalid_hyperparameters_are_rejected():
    m = factory()(0)
    with pytest.raises(ValueError, match="unknown hyperparameter"): m.apply_hyperparams({"gamma": 0.9})
    with pytest.raises(ValueError, match="cvar_alpha"): m.apply_hyperparams({"cvar_alpha": 1.5})



@pytest.mark.parametrize("bad, named", [(dict(learning_rate=-1e-3), "learning_rate=-0.001"), (dict(learning_rate=0.0), "learning_rate=0.0"),
                                        (dict(clip_range=-0.2), "clip_range=-0.2"), (dict(clip_range=0.0), "clip_range=0.0"),
                                        (dict(vgs_alpha=-0.5), "vgs_alpha=-0.5"), (dict(upgd_sigma=-1.0), "upgd_sigma=-1.0"),
                                        (dict(ent_coef=-0.01), "ent_coef=-0.01"), (dict(cvar_alpha=0.0), "cvar_alpha=0.0"),
                                        (dict(cvar_alpha=1.5), "cvar_alpha=1.5"), (dict(learning_rate=float("inf")), "learning_rate=inf"),
                                        (dict(learning_rate="fast"), "learning_rate='fast' is not a number"),
                                        (dict(learning_rate=1e-4, clip_range=0.1, upgd_sigma=-1.0), "upgd_sigma=-1.0")])
def test_out_of_range_hyperparameters_are_refused_and_nothing_changes(bad, named):
    "A refused call names the value and changes nothing, not even the valid values given beside it."
    m = factory()(0)
    m.apply_hyperparams(HP_A)
    before = m.live_hyperparams()
    kw = dict(m.model.vgs_kwargs), dict(m.model.policy.optimizer_kwargs), m.model.learning_rate, m.model.clip_range
    with pytest.raises(ValueError, match=re.escape(named)):
        m.apply_hyperparams(bad)
    assert m.live_hyperparams() == before
    assert (dict(m.model.vgs_kwargs), dict(m.model.policy.optimizer_kwargs), m.model.learning_rate, m.model.clip_range) == kw


@pytest.mark.parametrize("bad, named", [(dict(learning_rate=1e-4, vgs_alpha=0.5), "vgs_alpha=0.5 given but the model has no VGS"),
                                        (dict(learning_rate=1e-4, upgd_sigma=1e-3), "upgd_sigma=0.001 given but Adam has no sigma")])
def test_a_hyperparameter_the_model_lacks_is_refused_before_anything_is_applied(bad, named):
    f = PPOMemberFactory(TRAIN, VAL, n_envs=2, env_kwargs=ENV_KW, fitness_fn=weight_norm,
                         ppo_kwargs=dict(PPO_KW, use_vgs=False, policy_kwargs=dict(lstm_hidden_size=16, optimizer_class=th.optim.Adam)))
    m = f(0)
    before = m.live_hyperparams()
    with pytest.raises(ValueError, match=re.escape(named)):
        m.apply_hyperparams(bad)
    assert m.live_hyperparams() == before and before["learning_rate"] != 1e-4


def test_the_edges_of_the_ranges_are_accepted_and_ent_coef_keeps_its_floor():
    "0 turns VGS, UPGD's noise and the entropy bonus off, cvar_alpha=1 is risk-neutral: all valid; ent_coef never below the floor."
    m = factory()(0)
    m.apply_hyperparams(dict(vgs_alpha=0.0, upgd_sigma=0.0, ent_coef=0.0, cvar_alpha=1.0, learning_rate=1e-4, clip_range=0.05))
    assert m.live_hyperparams() == dict(learning_rate=1e-4, lr_schedule=1e-4, clip_range=0.05, ent_coef=0.0, cvar_alpha=1.0,
                                        vgs_alpha=0.0, upgd_sigma=0.0)
    floor = PPOMemberFactory(TRAIN, VAL, n_envs=2, env_kwargs=ENV_KW, fitness_fn=weight_norm,
                             ppo_kwargs=dict(PPO_KW, ent_coef=0.02, ent_coef_min=0.01))(0)
    floor.apply_hyperparams(dict(ent_coef=0.001))
    assert floor.live_hyperparams()["ent_coef"] == 0.01

@pytest.mark.slow
def test_small_ppo_population_runs_end_to_end(tmp_path):
    s = PBTScheduler({k: PPO_MUTATIONS[k] for k in ("learning_rate", "clip_range", "cvar_alpha")}, seed=0,
                     perturbation_interval=64)
    f = factory()
    res = run_population(f, s, n_members=3, n_rounds=2, steps_per_round=64, run_dir=tmp_path, progress=False)
    assert len(res.log) == 6 and res.log.fitness.notna().all() and (res.history.kind == "exploit").sum() == 2
    for mid, m in res.members.items():                          # live hyperparameters are the scheduler's
        live = m.live_hyperparams()
        for k, v in s.records[mid].hyperparams.items(): assert live[k] == pytest.approx(v), (mid, k)
    params, meta = load_checkpoint(s.records[res.best_member_id].checkpoint)
    fresh = f(9)
    fresh.set_parameters(params)  # a checkpoint loads into a fresh model
    assert tensors_equal(fresh.model.policy.state_dict(), params["policy"])


def test_default_fitness_is_the_validation_backtest_sharpe():
    import tradingrl_nb.backtest as bt
    f = PPOMemberFactory(TRAIN, DF, n_envs=2, env_kwargs=ENV_KW, ppo_kwargs=PPO_KW,
                         backtest_kwargs=dict(start=VAL.index[0], window=1))
    m = f(0)
    m.train(64)
    expected = bt.backtest(m.model, DF, start=VAL.index[0], window=1).metrics["sharpe"]
    got = m.evaluate()
    assert math.isfinite(got) and got == pytest.approx(expected)
    res = bt.backtest(m.model, DF, start=VAL.index[0], window=1)
    assert res.equity.index[0] >= VAL.index[0]                   # the fitness is measured on the validation span only


@pytest.mark.slow
def test_ppo_population_in_worker_processes(tmp_path):
    "Members rebuilt from checkpoints in spawned workers: the factory pickles, steps keep counting, exploits happen."
    s = PBTScheduler({k: PPO_MUTATIONS[k] for k in ("learning_rate", "clip_range")}, seed=0, perturbation_interval=64,
                     optimizer_exploit_strategy="reset")
    res = run_population(factory(), s, n_members=3, n_rounds=3, steps_per_round=64, run_dir=tmp_path, n_workers=2,
                         progress=False)
    log = res.log
    for mid in range(3):
        assert list(log[log.member_id == mid].step) == [64, 128, 192]
    assert (res.history.kind == "exploit").sum() >= 1 and set(res.history.optimizer) == {"reset"}
    params, _ = load_checkpoint(s.records[res.best_member_id].checkpoint)
    assert "policy.optimizer" in params                            # a member's own checkpoint keeps its optimizer


# --- schedules over the whole run (issue 12.4) ---------------------------------------------------
SAPPO_KW = dict(PPO_KW, sappo=dict(eps=0.08, kappa=0.1, steps=1, ramp_fraction=1.0))


class EpsProbe(PPOMember):
    """Records SA-PPO's eps at every update of an interval and the model's step counter after it, however the member
    trains: on its own (`train`) or inside the sequential runner's population (which calls the model's `train`)."""
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen, orig = [], self.model.train
        def spy():
            orig()
            self.seen.append(float(self.model.sappo_eps))
        self.model.train = spy

    def train_info(self):
        out = {**super().train_info(), "eps": self.seen, "timesteps": int(self.model.num_timesteps)}
        self.seen = []
        return out


def eps_factory(member_id):
    base = PPOMemberFactory(TRAIN, VAL, n_envs=2, env_kwargs=ENV_KW, ppo_kwargs=SAPPO_KW, fitness_fn=weight_norm)(member_id)
    return EpsProbe(base.model, VAL, weight_norm, member_id=member_id)


def _eps_run(tmp_path, n_workers):
    s = PBTScheduler({"learning_rate": PPO_MUTATIONS["learning_rate"]}, seed=0, perturbation_interval=128)
    res = run_population(eps_factory, s, n_members=3, n_rounds=4, steps_per_round=128, run_dir=tmp_path, n_workers=n_workers,
                         progress=False)
    log = res.log.sort_values(["member_id", "round"])
    return res, {m: [e for es in d.train_eps for e in es] for m, d in log.groupby("member_id")}, \
        {m: list(d.train_timesteps) for m, d in log.groupby("member_id")}


@pytest.mark.slow
def test_sappo_eps_ramps_once_over_the_whole_population_run_in_both_runners(tmp_path):
    "4 rounds x 2 updates: eps follows one ramp over the 8 updates of the run, exploits or not, sequential or workers."
    whole_run = [0.08 * u / 8 for u in range(8)]
    runs = {}
    for n_workers in (0, 2):
        res, eps, steps = _eps_run(tmp_path / f"w{n_workers}", n_workers)
        assert (res.history.kind == "exploit").sum() >= 1, n_workers          # members were rebuilt/reloaded on the way
        for mid in range(3):
            assert eps[mid] == pytest.approx(whole_run), (n_workers, mid, eps[mid])
            assert all(b >= a for a, b in zip(eps[mid], eps[mid][1:]))
            assert steps[mid] == [128, 256, 384, 512], (n_workers, mid, steps[mid])  # the model's own counter goes on
        runs[n_workers] = eps
    assert runs[0] == runs[2]


def ppo_factory(member_id):
    return PPOMemberFactory(TRAIN, VAL, n_envs=2, env_kwargs=ENV_KW, ppo_kwargs=PPO_KW, fitness_fn=weight_norm)(member_id)


def test_sequential_runner_trains_ppo_members_as_one_population(tmp_path, monkeypatch):
    "One Population.learn per round for all alive members; the same run twice gives the same fitness log (CPU)."
    from tradingrl_nb import population
    calls = []
    real = population.Population.learn
    def counting(self, *a, **kw):
        calls.append(len(self))
        return real(self, *a, **kw)
    monkeypatch.setattr(population.Population, "learn", counting)
    logs = []
    for i in range(2):
        s = PBTScheduler({"learning_rate": PPO_MUTATIONS["learning_rate"]}, seed=0, perturbation_interval=128)
        res = run_population(ppo_factory, s, n_members=3, n_rounds=3, steps_per_round=128, run_dir=tmp_path / f"r{i}", progress=False)
        logs.append(res.log.sort_values(["member_id", "round"]).reset_index(drop=True))
    assert calls == [3, 3, 3] * 2
    assert (logs[0].train_num_timesteps.to_numpy() == np.tile([128, 256, 384], 3)).all()
    keep = ["round", "member_id", "step", "fitness", "train_num_timesteps", "train_lr"]
    pd.testing.assert_frame_equal(logs[0][keep], logs[1][keep])
    s = PBTScheduler({"learning_rate": PPO_MUTATIONS["learning_rate"]}, seed=0, perturbation_interval=128)
    calls.clear()
    run_population(ppo_factory, s, n_members=3, n_rounds=1, steps_per_round=128, run_dir=tmp_path / "alone", progress=False,
                   together=False)
    assert calls == [], "together=False: each member trains on its own"


@pytest.mark.parametrize("together", [True, False])
def test_every_member_keeps_its_training_curves_and_health_through_the_run(tmp_path, together):
    """Whether the round's members train as one Population or each on its own, each member records one row per update
    it made (through exploits: the weights move, its record stays), and `health()` can judge it (moved is not None):
    a finding about PBT needs the same evidence of training as any other."""
    s = PBTScheduler({"learning_rate": PPO_MUTATIONS["learning_rate"]}, seed=0, perturbation_interval=128)
    res = run_population(ppo_factory, s, n_members=3, n_rounds=3, steps_per_round=128, run_dir=tmp_path / "r",
                         progress=False, together=together)
    assert (res.history.kind == "exploit").sum() >= 1
    for mid, m in res.members.items():
        c = m.curves()
        assert len(c) == 3 * 128 // (2 * 32), (mid, len(c))                  # 2 rollouts of 2 envs x 32 steps per round
        assert list(c.index) == sorted(c.index) and c.index[-1] == m.num_timesteps == 384
        assert {"health/actor_update_ratio", "train/approx_kl", "train/explained_variance"} <= set(c.columns)
        h = m.health()
        assert h["updates"] == len(c) and h["moved"] is not None, h
        assert h["actor_update_ratio"] > 0
