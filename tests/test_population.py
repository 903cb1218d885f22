"""tradingrl_nb.population: K members in one process behave as K standalone DistributionalPPO runs."""
import numpy as np
import pytest
import torch as th

from tradingrl_nb.population import MemberRNG, Population, stack_minibatches, stacked_sequences
from tradingrl_nb.ppo import DistributionalPPO
from tradingrl_nb.record import TrainingLog
from tradingrl_nb.testing import tiny_env, tiny_ppo

SEEDS = (1, 2, 3)
# float32 rounding: a batched matmul may order its reductions differently from an unbatched one; after one or two
# updates the members' parameters stay within a few ulps of 1 (measured 1e-7 to 5e-8); the bound leaves 100x room
TOL = 1e-5


def make(seed: int, **kw) -> DistributionalPPO:
    return tiny_ppo(tiny_env(seed=seed), seed=seed, n_steps=32, batch_size=64, **kw)


def max_gap(a: DistributionalPPO, b: DistributionalPPO) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a.policy.state_dict().values(), b.policy.state_dict().values()))


@pytest.mark.parametrize("batch_updates", [False, True])
def test_members_match_standalone_models(batch_updates):
    """Each member's own update: parameters within float32 rounding (TOL). The stacked update computes the LSTM's
    gradient with other kernels than nn.LSTM (differences of 1e-7 relative); the optimizer's normalized step
    (m / sqrt(v)) turns a rounding-level difference in an element whose gradient is near zero into a step of up to
    the learning rate, so there the bound is the learning rate (measured 1.1e-4 at lr 3e-4 on one element)."""
    pop = Population.build(make, SEEDS)
    pop.batch_updates = batch_updates
    tol = pop[0].learning_rate if batch_updates else TOL
    pop.learn(128)
    first = [m.rollout_buffer.actions.clone() for m in pop.members]
    pop.learn(128, reset_num_timesteps=False)
    for k, s in enumerate(SEEDS):
        solo = make(s)
        solo.learn(128)
        assert float((solo.rollout_buffer.actions - first[k]).abs().max()) < TOL, "the first rollout's actions"
        solo.learn(128, reset_num_timesteps=False)
        assert solo.num_timesteps == pop[k].num_timesteps == 256
        assert max_gap(solo, pop[k]) < tol
        assert solo._n_updates == pop[k]._n_updates


def test_members_are_independent_of_each_other():
    "Member 0 trains the same whether or not other members train beside it (no shared random stream or state)."
    alone = Population.build(make, SEEDS[:1])
    alone.learn(256)
    crowd = Population.build(make, SEEDS)
    crowd.learn(256)
    assert max_gap(alone[0], crowd[0]) < TOL
    assert max_gap(crowd[0], crowd[1]) > 1e-3, "different seeds, different members"


def test_stacked_sequences_match_each_policys_evaluate_actions():
    pop = Population.build(make, SEEDS)
    pop.learn(128)
    mbs = [m.minibatch(np.arange(min(3, m.rollout_buffer.n_sequences))) for m in pop.members]
    mb = stack_minibatches(mbs)
    logp, ent, q = stacked_sequences([m.policy for m in pop.members], mb["obs"], mb["actions"], mb["h0"], mb["c0"])
    for k, (m, one) in enumerate(zip(pop.members, mbs)):
        ref = m.policy.evaluate_actions(one["obs"], one["actions"], one["states"])
        T, B = one["mask"].shape
        for got, want in zip((logp[k, :T, :B], ent[k, :T, :B], q[k, :T, :B]), ref):
            assert float((got - want).abs().max().detach()) < 1e-4


def test_stacked_backward_gives_each_member_its_own_gradient():
    pop = Population.build(make, SEEDS)
    pop.batch_updates = True
    pop.learn(128)
    ms = pop.members
    seqs = [np.arange(min(4, m.rollout_buffer.n_sequences)) for m in ms]
    trs = {k: m.train_begin() for k, m in enumerate(ms)}
    own = []
    for m, s in zip(ms, seqs):
        m.policy.optimizer.zero_grad(set_to_none=True)
        loss, _ = m._loss(m.minibatch(s), trs[0].clip_range, trs[0].clip_vf, trs[0].ent_coef)
        loss.backward()
        own.append([p.grad.clone() for p in m.policy.parameters()])
    for m in ms:
        m.policy.optimizer.zero_grad(set_to_none=True)
        m.apply_update = lambda stats, mb: stats                   # stop before the step: only the gradients
    pop._batched_update([0, 1, 2], seqs, trs)
    for m, g in zip(ms, own):
        scale = max(float(x.abs().max()) for x in g)
        assert max(float((p.grad - x).abs().max()) for p, x in zip(m.policy.parameters(), g)) < 1e-4 * scale


def test_freeze_stops_a_member_and_unfreeze_resumes_it():
    pop = Population.build(make, SEEDS)
    pop.freeze(1)
    pop.learn(128)
    assert [m.num_timesteps for m in pop.members] == [128, 0, 128]
    assert pop.active == [0, 2]
    pop.unfreeze(1)
    pop.learn(128, reset_num_timesteps=False)
    assert [m.num_timesteps for m in pop.members] == [256, 128, 256]
    with pytest.raises(IndexError, match="no member 5"): pop.freeze(5)


def test_exploit_copies_weights_optimizer_and_clock_and_resets_lstm_state():
    pop = Population.build(make, SEEDS)
    pop.set_hparams(0, learning_rate=2e-3)
    pop.learn(128)
    assert pop[2].rollout_state.lstm.pi[0].abs().sum() > 0
    pop.exploit(0, 2)
    assert max_gap(pop[0], pop[2]) == 0
    assert pop[2].num_timesteps == pop[0].num_timesteps
    assert pop[2].policy.optimizer.param_groups[0]["lr"] == 2e-3
    assert pop[2].rollout_state.lstm.pi[0].abs().sum() == 0 and pop[2].rollout_state.lstm.vf[1].abs().sum() == 0


def test_hyperparameters_are_per_member_and_checked():
    pop = Population.build(make, SEEDS)
    pop.set_hparams(1, learning_rate=1e-3)
    lrs = [m.policy.optimizer.param_groups[0]["lr"] for m in pop.members]
    assert lrs[1] == 1e-3 and lrs[0] == lrs[2] != 1e-3
    with pytest.raises(ValueError, match="learning_rate"): pop.set_hparams(0, learning_rate=-1.0)
    assert pop[0].policy.optimizer.param_groups[0]["lr"] == lrs[0]


def test_save_load_and_one_member_alone(tmp_path):
    pop = Population.build(make, SEEDS)
    pop.learn(128)
    pop.freeze(2)
    d = pop.save(tmp_path / "pop")
    back = Population.load(d, [tiny_env(seed=s) for s in SEEDS], device="cpu")
    assert back.frozen == {2} and len(back) == 3
    for a, b in zip(pop.members, back.members): assert max_gap(a, b) == 0
    for a, b in zip(pop.rngs, back.rngs): assert th.equal(a.cpu_state, b.cpu_state)
    solo = DistributionalPPO.load(d / "member1", env=tiny_env(seed=2), device="cpu")
    assert max_gap(solo, pop[1]) == 0
    with pytest.raises(ValueError, match="3 members, got 2 envs"):
        Population.load(d, [tiny_env(seed=s) for s in SEEDS[:2]], device="cpu")


def test_members_must_share_the_rollout_shape():
    a, b = make(1), tiny_ppo(tiny_env(seed=2, n_envs=2), seed=2, n_steps=32, batch_size=64)
    with pytest.raises(ValueError, match="member 1 has n_envs=2"): Population([a, b])
    with pytest.raises(ValueError, match="at least one member"): Population([])


def test_training_logs_and_a_callback_that_stops_one_member():
    from stable_baselines3.common.callbacks import BaseCallback

    class StopAt(BaseCallback):
        def __init__(self, n):
            super().__init__()
            self.n = n
        def _on_step(self) -> bool: return self.model.num_timesteps < self.n

    pop = Population.build(make, SEEDS[:2])
    log = TrainingLog(pop[0])
    seen = []
    pop.learn(256, callbacks=[log.callback, StopAt(64)], progress=lambda done, total: seen.append((done, total)))
    assert pop[0].num_timesteps == 256 and pop[1].num_timesteps == 64
    assert len(log.frame()) == 2 and "train/value_loss" in log.frame()
    assert seen[-1][1] == 512 and seen[0][0] >= 128


def test_sappo_members_fall_back_to_their_own_update():
    from tradingrl_nb.sappo import SAPPOConfig
    mk = lambda s: make(s, sappo=SAPPOConfig(eps=0.05, kappa=0.1))
    pop = Population.build(mk, SEEDS[:2])
    pop.batch_updates = True
    assert not pop._batchable_update([0, 1])
    pop.learn(128)
    solo = mk(SEEDS[1])
    solo.learn(128)
    assert max_gap(solo, pop[1]) < TOL


def test_member_rng_continues_where_it_was_taken():
    th.manual_seed(7)
    g = MemberRNG()
    expected = th.randn(5)
    th.randn(3)
    with g.active(): got = th.randn(5)
    assert th.equal(got, expected)
    outside = th.get_rng_state()
    with g.active(): th.randn(2)
    assert th.equal(th.get_rng_state(), outside), "the process's own stream is left where it was"


def test_stacked_updates_are_the_default_on_cuda_only():
    pop = Population.build(make, SEEDS[:2])
    assert pop.batch_updates is False, "on the CPU each member's own update is faster (benchmarks/bench_population.py)"


@pytest.mark.cuda
@pytest.mark.skipif(not th.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_population_matches_standalone_models_and_batches_updates():
    mk = lambda s: tiny_ppo(tiny_env(seed=s), seed=s, n_steps=32, batch_size=64, device="cuda")
    pop = Population.build(mk, SEEDS)
    assert pop.batch_updates is True and pop[0].device.type == "cuda"
    pop.learn(128)
    for k, s in enumerate(SEEDS):
        solo = mk(s)
        solo.learn(128)
        assert max_gap(solo, pop[k]) < pop[0].learning_rate        # stacked update: see test_members_match_standalone_models


def test_train_together_trains_every_key_as_its_standalone_run(tmp_path):
    "One (model, log) per key, in populations of at most max_members; each as its standalone run; own callbacks."
    from stable_baselines3.common.callbacks import BaseCallback
    from tradingrl_nb.population import train_together

    class Count(BaseCallback):
        def __init__(self):
            super().__init__()
            self.steps = 0
        def _on_step(self) -> bool:
            self.steps += 1
            return True
    counts = {}
    def count(key):
        counts[key] = Count()
        return counts[key]
    keys = [("on", 1), ("off", 1), ("on", 2)]
    runs = train_together(lambda k: make(k[1], ent_coef=0.01 if k[0] == "on" else 0.0), keys, 256, callback=count,
                          max_members=2, name=lambda k: f"{k[0]}-seed{k[1]}")
    assert list(runs) == keys
    for k, (m, log) in runs.items():
        assert m.num_timesteps == 256 and len(log.frame()) == 2 and log.name == f"{k[0]}-seed{k[1]}"
        assert counts[k].steps == 256 // m.n_envs                                    # its own callback saw its steps
        solo = make(k[1], ent_coef=0.01 if k[0] == "on" else 0.0)
        solo.learn(256)
        assert max_gap(solo, m) < TOL, k
    with pytest.raises(ValueError, match="distinct"): train_together(make, [1, 1], 128)
    with pytest.raises(ValueError, match="max_members"): train_together(make, [1], 128, max_members=0)
