"""DistributionalPPO's training details: GAE over truncations, the reward statistics, target_kl before the optimizer step, RNG states in checkpoints, where the VGS factor acts."""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import VecEnvWrapper

from tradingrl_nb.distributional import cvar_from_quantiles
from tradingrl_nb.ppo import DistributionalPPO
from tradingrl_nb.testing import tiny_env, tiny_market, tiny_ppo

DF = tiny_market()


def env(n=4, seed=0, episode_length=60):
    return tiny_env(n, seed, episode_length)


def make(e=None, **kw):
    return tiny_ppo(e, **kw)


def rollout(model):
    _, cb = model._setup_learn(model.n_steps * model.n_envs, None)
    assert model.collect_rollouts(model.env, cb, model.rollout_buffer, model.n_steps)


class Recorder(VecEnvWrapper):
    "Keeps what the env itself returned: rewards, dones, infos."
    def __init__(self, venv):
        super().__init__(venv)
        self.rewards, self.dones, self.infos = [], [], []
    def reset(self): return self.venv.reset()
    def step_wait(self):
        obs, r, d, infos = self.venv.step_wait()
        self.rewards.append(np.array(r, dtype=np.float64))
        self.dones.append(np.array(d))
        self.infos.append(infos)
        return obs, r, d, infos


class Capture(KVWriter):
    def __init__(self): self.rows = []
    def write(self, key_values, key_excluded, step=0): self.rows.append(dict(key_values))
    def close(self): pass
    def values(self, k): return [r[k] for r in self.rows if k in r]


# ---- items 2 and 3: raw rewards in the buffer; CVaR advantages bootstrap with CVaR at truncations ------------
def _reference_gae(r, v, starts, boot, v_last, d_last, gamma, lam):
    T, E = r.shape
    adv = np.zeros((T, E))
    for e in range(E):
        a = 0.0
        for t in reversed(range(T)):
            nt = 1.0 - (d_last[e] if t == T - 1 else starts[t + 1, e])
            nv = v_last[e] if t == T - 1 else v[t + 1, e]
            delta = r[t, e] + gamma * boot[t, e] + gamma * nv * nt - v[t, e]
            a = delta + gamma * lam * nt * a
            adv[t, e] = a
    return adv, adv + v


@pytest.mark.parametrize("alpha", [1.0, 0.1])
def test_gae_passes_bootstrap_truncations_with_their_own_value(alpha):
    rec = Recorder(env(n=3, episode_length=9))                # several time-limit truncations inside the rollout
    m = make(rec, n_steps=40, cvar_alpha=alpha, gamma=0.9, gae_lambda=0.8)
    rollout(m)
    m.train()  # the second rollout has a fitted snapshot (mu, sigma)
    rec.rewards, rec.dones, rec.infos = [], [], []
    calls, pq = [], m.policy.predict_quantiles
    def spy(*a, **k):                                         # every critic evaluation outside the rollout step
        out = pq(*a, **k)
        calls.append(out.clone() * m.return_scale.snapshot[1] + m.return_scale.snapshot[0])   # raw units at call time
        return out
    m.policy.predict_quantiles = spy
    rollout(m)
    del m.policy.predict_quantiles
    buf = m.rollout_buffer
    r = np.stack(rec.rewards)
    assert np.array_equal(buf.rewards, r.astype(np.float32))   # the env's own rewards, nothing added
    sel = lambda q: m.twin_quantiles(q)
    V = lambda q: sel(q).mean(-1).double().numpy()
    C = lambda q: cvar_from_quantiles(sel(q), alpha).double().numpy()
    boot_v, boot_c = np.zeros_like(r), np.zeros_like(r)
    n_trunc = 0
    for t, infos in enumerate(rec.infos):
        idx = [i for i, info in enumerate(infos) if rec.dones[t][i] and info.get("TimeLimit.truncated")
               and info.get("terminal_observation") is not None]
        if idx:
            q = calls.pop(0)
            boot_v[t, idx], boot_c[t, idx] = V(q), C(q)
            n_trunc += len(idx)
    assert n_trunc >= 6 and len(calls) == 1                 # the last call is the bootstrap of the rollout's end
    q_last = calls.pop(0)
    d_last = rec.dones[-1]
    with th.no_grad():
        v = m._values(buf.quantiles).double().numpy()
        c = m._values(buf.quantiles, risk=True).double().numpy()
    adv_v, ret = _reference_gae(r, v, buf.episode_starts, boot_v, V(q_last), d_last, m.gamma, m.gae_lambda)
    adv_c, _ = _reference_gae(r, c, buf.episode_starts, boot_c, C(q_last), d_last, m.gamma, m.gae_lambda)
    assert np.allclose(buf.returns.numpy(), ret, atol=1e-4)
    assert np.allclose(buf.advantages.numpy(), adv_c if alpha < 1 else adv_v, atol=1e-4)
    if alpha < 1: assert not np.allclose(adv_c, adv_v, atol=1e-3)


def test_reward_mean_and_plateau_detector_read_the_env_rewards():
    rec = Recorder(env(n=3, episode_length=9))
    m = make(rec, n_steps=40, ent_plateau_patience=2, ent_coef=0.01)
    cap = Capture()
    m.set_logger(Logger(folder=None, output_formats=[cap]))
    seen, upd = [], m._update_ent_plateau
    m._update_ent_plateau = lambda metric: (seen.append(metric), upd(metric))[1]
    m.learn(40 * 3 * 2)
    r = np.stack(rec.rewards)
    per_rollout = [float(r[i * 40:(i + 1) * 40].astype(np.float32).mean()) for i in range(2)]
    assert np.allclose(seen, per_rollout, rtol=1e-5)
    assert np.allclose(cap.values("rollout/reward_mean"), per_rollout, rtol=1e-5)


# ---- item 7: target_kl stops before the optimizer step -----------------------------------------------------
@pytest.mark.parametrize("target_kl,expect", [(None, "all"), (1e-9, 1)])
def test_target_kl_breaks_before_the_optimizer_step(target_kl, expect):
    m = make(n_steps=64, target_kl=target_kl, n_epochs=3, learning_rate=1e-3)
    rollout(m)
    steps = []
    m.policy.optimizer.register_step_post_hook(lambda *a: steps.append(1))
    m.train()
    n_mb = len(m.rollout_buffer.minibatches(m.batch_size, np.random.default_rng(0)))
    assert n_mb >= 2
    # the first minibatch has approx_kl ~ 0 and is applied; the second one exceeds 1.5 * target_kl and is not
    assert len(steps) == (m.n_epochs * n_mb if expect == "all" else expect)


# ---- item 11: CUDA RNG states in checkpoints -----------------------------------------------------------------
@pytest.mark.skipif(not th.cuda.is_available(), reason="needs CUDA")
def test_checkpoint_restores_cuda_rng_states(tmp_path):
    m = make(device="cuda")
    m.learn(32 * 4)
    m.save(tmp_path / "ck")
    expect = th.randn(5, device="cuda")                       # what the run draws next on the GPU
    th.randn(100, device="cuda")                              # move the generator on
    DistributionalPPO.load(tmp_path / "ck", env=env(), device="cuda")
    assert th.equal(th.randn(5, device="cuda"), expect)


def test_checkpoint_cuda_rng_plumbing_without_a_gpu(tmp_path, monkeypatch):
    "A stand-in for torch.cuda's RNG functions: one state per GPU goes into the file and back to its device."
    states = [th.arange(16, dtype=th.uint8), th.arange(16, dtype=th.uint8) + 7]
    m = make()
    monkeypatch.setattr(th.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(th.cuda, "get_rng_state_all", lambda: states)
    m.save(tmp_path / "ck")
    monkeypatch.undo()
    loaded = DistributionalPPO.load(tmp_path / "ck", env=env())          # CPU-only: the CUDA states are ignored
    from tradingrl_nb.checkpoint import read_checkpoint
    stored = read_checkpoint(tmp_path / "ck.safetensors")["state"]
    restored = {}
    monkeypatch.setattr(th.cuda, "is_available", lambda: True)
    monkeypatch.setattr(th.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(th.cuda, "set_rng_state", lambda st, i: restored.__setitem__(i, st.clone()))
    loaded._restore_state(stored)
    assert sorted(restored) == [0, 1] and all(th.equal(restored[i], states[i]) for i in (0, 1))


def test_checkpoint_rng_states_on_cpu(tmp_path):
    "On CPU nothing changes: the CPU generator is restored, no CUDA state is needed to load."
    m = make()
    m.learn(32 * 4)
    m.save(tmp_path / "ck")
    expect = th.randn(5)
    th.randn(100)
    DistributionalPPO.load(tmp_path / "ck", env=env())
    assert th.equal(th.randn(5), expect)


# ---- issue 14.1: where VGS acts -----------------------------------------------------------------------------
def test_vgs_mode_option_and_checkpoint(tmp_path):
    assert make().vgs_mode == "step"
    with pytest.raises(ValueError, match="vgs_mode"):
        make(vgs_mode="gradients")
    m = make(vgs_mode="gradient")
    m.save(tmp_path / "ck")
    assert DistributionalPPO.load(tmp_path / "ck").vgs_mode == "gradient"


@pytest.mark.parametrize("mode", ["step", "gradient"])
def test_vgs_order_of_operations(monkeypatch, mode):
    m = make(micro_batches=2, n_epochs=1, vgs_mode=mode)
    rollout(m)
    calls = []
    def wrap(obj, name, tag):
        f = getattr(obj, name)
        monkeypatch.setattr(obj, name, lambda *a, **k: (calls.append(tag), f(*a, **k))[1])
    wrap(m.policy.optimizer, "zero_grad", "zero_grad")
    wrap(m.policy.optimizer, "step", "step")
    wrap(m.vgs, "scale_gradients", "vgs_scale")
    wrap(m.vgs, "step", "vgs_step")
    if mode == "step": wrap(m.vgs, "get_scaling_factor", "vgs_factor")
    wrap(th.nn.utils, "clip_grad_norm_", "clip")
    real_backward = th.autograd.backward
    monkeypatch.setattr(th.autograd, "backward", lambda *a, **k: (calls.append("backward"), real_backward(*a, **k))[1])
    m.train()
    n_mb = len(m.rollout_buffer.minibatches(m.batch_size, np.random.default_rng(0)))
    if mode == "step":    # k is read (gradients untouched), clip, the step scaled by k, statistics of the raw gradient
        one = ["zero_grad", "backward", "backward", "vgs_factor", "clip", "step", "vgs_step"]
    else:                 # the seeds' placement, clipped first so the clip does not undo the scaling
        one = ["zero_grad", "backward", "backward", "clip", "vgs_scale", "step", "vgs_step"]
    assert calls == one * n_mb


def _applied_update(mode, k, optimizer_class):
    "Norm of the parameter change of one update with the VGS factor forced to `k`, gradient clipping active."
    lr = 0.1 if optimizer_class is th.optim.SGD else 1e-3     # updates well above float32 resolution
    m = make(vgs_mode=mode, max_grad_norm=0.1, learning_rate=lr,
             policy_kwargs=dict(lstm_hidden_size=16, optimizer_class=optimizer_class))
    rollout(m)
    m.vgs.get_scaling_factor = lambda: k
    before = th.nn.utils.parameters_to_vector(m.policy.parameters()).clone()
    st = m._update(np.arange(m.rollout_buffer.n_sequences), 0.2, None, 0.0)
    assert st is not None and float(st[m._STATS.index("grad_norm")]) > 0.2       # the clip was active
    assert float(st[m._STATS.index("vgs_scale")]) == pytest.approx(k)             # the factor is logged
    assert m.policy.optimizer.param_groups[0]["lr"] == lr                         # the learning rate is restored
    return float((th.nn.utils.parameters_to_vector(m.policy.parameters()) - before).norm())


@pytest.mark.parametrize("optimizer_class", [th.optim.SGD, th.optim.Adam])
def test_step_mode_update_norm_scales_with_k_under_clipping(optimizer_class):
    full = _applied_update("step", 1.0, optimizer_class)
    for k in (0.5, 0.1):
        assert _applied_update("step", k, optimizer_class) == pytest.approx(k * full, rel=1e-3)


def test_gradient_mode_is_normalised_away_by_adam():
    "The measurement behind the default: scaling the gradient barely changes an Adam step."
    full = _applied_update("gradient", 1.0, th.optim.Adam)
    assert _applied_update("gradient", 0.1, th.optim.Adam) == pytest.approx(full, rel=0.05)
    sgd = _applied_update("gradient", 1.0, th.optim.SGD)     # plain SGD: clipped, then scaled, so it does scale
    assert _applied_update("gradient", 0.1, th.optim.SGD) == pytest.approx(0.1 * sgd, rel=1e-3)
