"""DistributionalPPO (`tradingrl_nb.ppo`): rollouts, sequences, return normalization, losses, gradient order,
non-finite updates, entropy schedule, logging, parameters, VecNormalize freezing, options."""
import warnings

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import VecEnvWrapper, VecNormalize

from tradingrl_nb.rollout import SequenceRolloutBuffer, gae
from tradingrl_nb.adaptive_upgd import AdaptiveUPGD
from tradingrl_nb.testing import tiny_env, tiny_market, tiny_ppo

DF = tiny_market()


def env(n=4, seed=0, **kw):
    return tiny_env(n, seed, **kw)


def make(e=None, **kw):
    return tiny_ppo(e, **kw)


class Capture(KVWriter):
    def __init__(self): self.rows = []
    def write(self, key_values, key_excluded, step=0): self.rows.append(dict(key_values))
    def close(self): pass
    def keys(self): return set().union(*self.rows)
    def values(self, k): return [r[k] for r in self.rows if k in r]


def captured(model):
    cap = Capture()
    model.set_logger(Logger(folder=None, output_formats=[cap]))
    return cap


def rollout(model):
    _, cb = model._setup_learn(model.n_steps * model.n_envs, None)
    assert model.collect_rollouts(model.env, cb, model.rollout_buffer, model.n_steps)


def params(model):
    return [p.detach().clone() for p in model.policy.parameters()]


# ---- defaults, options ------------------------------------------------------------------------------
def test_defaults_adaptive_upgd_vgs_auto_device():
    m = make()
    assert isinstance(m.policy.optimizer, AdaptiveUPGD)
    assert all(g.get("adaptive_noise", True) for g in m.policy.optimizer.param_groups)
    assert m.vgs is not None and m.device.type == ("cuda" if th.cuda.is_available() else "cpu")
    assert m.policy.n_quantiles == 32 or m.policy_kwargs.get("n_quantiles")
    assert make(device="auto").device.type == ("cuda" if th.cuda.is_available() else "cpu")


def test_adam_selectable_and_vgs_optional():
    m = make(policy_kwargs=dict(lstm_hidden_size=16, optimizer_class=th.optim.Adam), use_vgs=False)
    before = params(m)
    m.learn(32 * 4 * 2)
    assert type(m.policy.optimizer) is th.optim.Adam and m.vgs is None
    assert any(not th.equal(a, b) for a, b in zip(before, params(m)))


@pytest.mark.parametrize("kw", [dict(batch_size=0), dict(cvar_alpha=0.0), dict(cvar_alpha=1.5), dict(ent_coef=0.01, ent_coef_min=0.1),
                                dict(micro_batches=0), dict(clip_range_vf=0.0), dict(sequence_length=0),
                                dict(learning_rate=-1e-3), dict(learning_rate=0.0), dict(learning_rate=float("nan")),
                                dict(clip_range=-0.2), dict(clip_range=0.0), dict(vf_coef=-0.5)])
def test_bad_hyperparameters(kw):
    with pytest.raises(ValueError, match="|".join(kw)):
        make(**kw)


@pytest.mark.parametrize("lr", [-1e-3, 0.0, float("inf"), "fast"])
def test_set_hparams_refuses_a_bad_rate_and_keeps_the_live_one(lr):
    m = make()
    with pytest.raises(ValueError, match="learning_rate"): m.set_hparams(learning_rate=lr)
    assert m.learning_rate == 3e-4 and m.policy.optimizer.param_groups[0]["lr"] == 3e-4


# ---- rollout and sequences -----------------------------------------------------------------------------
def test_sequences_partition_the_rollout():
    m = make(n_steps=64, sequence_length=16)
    rollout(m)
    buf = m.rollout_buffer
    idx = buf.seq_index if hasattr(buf, "seq_index") else None
    mb = buf.gather(np.arange(buf.n_sequences))
    mask = mb["mask"]
    assert int(mask.sum()) == 64 * 4                  # every step exactly once
    assert mask.shape[0] <= 16 and bool((mask.int().diff(dim=0) <= 0).all())   # padding only at the tail
    assert buf.seq_lengths.max() <= 16
    # no sequence crosses an episode start (except at its first step)
    T, E = buf.n_steps, buf.n_envs
    obs_all = buf.obs.reshape(T * E, -1)
    assert th.allclose(mb["obs"][mask].sum(0), obs_all.sum(0), atol=1e-3)
    del idx


def test_dones_shape_is_validated():
    class BadDones(VecEnvWrapper):
        def reset(self): return self.venv.reset()
        def step_wait(self):
            o, r, d, i = self.venv.step_wait()
            return o, r, d[:, None], i

    m = make(BadDones(env()))
    with pytest.raises(ValueError, match=r"dones of shape \(4, 1\), expected \(4,\)"):
        m.learn(32 * 4)


def test_gae_matches_reference():
    rng = np.random.default_rng(0)
    T, E = 7, 3
    r, v = rng.normal(size=(T, E)), rng.normal(size=(T, E))
    starts = rng.random((T, E)) < 0.3
    last_v, last_d = rng.normal(size=E), rng.random(E) < 0.5
    adv, ret = gae(r, v, starts, last_v, last_d, 0.9, 0.8)
    for e in range(E):
        a = 0.0
        for t in reversed(range(T)):
            nt = 1.0 - (last_d[e] if t == T - 1 else starts[t + 1, e])
            nv = last_v[e] if t == T - 1 else v[t + 1, e]
            a = r[t, e] + 0.9 * nv * nt - v[t, e] + 0.9 * 0.8 * nt * a
            assert np.isclose(adv[t, e], a)
    assert np.allclose(ret, adv + v)


# ---- return normalization (seed 002 #3) -------------------------------------------------------------
def test_return_snapshot_refreshed_after_rollout_before_gae():
    m = make(n_steps=64)
    rollout(m)
    m.train()
    before = m.return_scale.snapshot
    raw_at_rollout = []

    step = m.policy._rollout_step
    def spy(*a, **k):                                   # the critics' raw outputs during the rollout, in the old units
        out = step(*a, **k)
        raw_at_rollout.append(out[2].clone() * before[1] + before[0])
        return out
    m.policy._rollout_step = spy
    count0 = m.return_scale.rms.count
    rollout(m)
    del m.policy._rollout_step
    after = m.return_scale.snapshot
    # refreshed: the running statistics now include this rollout, and the snapshot is taken from them
    assert m.return_scale.rms.count == pytest.approx(count0 + 64 * 4)
    assert after != before
    assert after == pytest.approx((float(m.return_scale.rms.mean), float(np.sqrt(m.return_scale.rms.var))))
    # GAE used values in the refreshed units, and they are exactly what the critics predicted (outputs preserved)
    buf = m.rollout_buffer
    raw = th.stack(raw_at_rollout)                      # [T, E, 2, N], predictions made during the rollout
    assert raw.shape[:2] == (64, 4)
    expect = m._values(((raw - after[0]) / after[1]))
    assert np.allclose(buf.values, expect.numpy(), atol=1e-4)
    mb = buf.gather(np.arange(buf.n_sequences))
    with th.no_grad():
        q = m.policy.evaluate_actions(mb["obs"], mb["actions"], mb["states"])[2]
    assert th.allclose(q[mb["mask"]], mb["old_quantiles"][mb["mask"]], atol=1e-4)


def test_value_targets_are_normalized_with_the_snapshot():
    m = make(n_steps=64, clip_range_vf=None)
    rollout(m)
    mu, sigma = m.return_scale.snapshot
    seqs = np.arange(m.rollout_buffer.n_sequences)
    mb = m.rollout_buffer.gather(seqs)
    mask = mb["mask"]
    z = (mb["returns"][mask] - mu) / sigma
    assert abs(float(z.mean())) < 3 and 0.05 < float(z.std()) < 20   # normalized scale, not raw


# ---- CVaR ------------------------------------------------------------------------------------------------
def test_cvar_alpha_makes_advantages_risk_aware():
    ms = {}
    for a in (1.0, 0.1):                                # same seed, same rollout
        ms[a] = make(n_steps=64, cvar_alpha=a)
        rollout(ms[a])
    b1, b2 = ms[1.0].rollout_buffer, ms[0.1].rollout_buffer
    assert np.allclose(b1.values, b2.values) and th.allclose(b1.returns, b2.returns)   # same rollout, same critic targets
    assert not th.allclose(b1.advantages, b2.advantages)
    assert ms[0.1]._rollout_cvar < ms[1.0]._rollout_cvar                                 # lower tail below the mean


# ---- gradient order and micro-batches (seed 003 1.1) ---------------------------------------------
def test_gradient_order(monkeypatch):
    m = make(micro_batches=3, n_epochs=1)
    rollout(m)
    calls = []
    opt, vgs = m.policy.optimizer, m.vgs
    def wrap(obj, name, tag):
        f = getattr(obj, name)
        def g(*a, **k):
            calls.append(tag)
            return f(*a, **k)
        monkeypatch.setattr(obj, name, g)
    wrap(opt, "zero_grad", "zero_grad")
    wrap(opt, "step", "step")
    wrap(vgs, "scale_gradients", "vgs_scale")
    wrap(vgs, "step", "vgs_step")
    wrap(th.nn.utils, "clip_grad_norm_", "clip")
    real_backward = th.autograd.backward
    monkeypatch.setattr(th.autograd, "backward", lambda *a, **k: (calls.append("backward"), real_backward(*a, **k))[1])
    m.train()
    n_mb = len(m.rollout_buffer.minibatches(m.batch_size, np.random.default_rng(0)))
    # the default vgs_mode="step" scales the step, not the gradient (the other order: test_ppo_training_details.py)
    one = ["zero_grad", "backward", "backward", "backward", "clip", "step", "vgs_step"]
    assert calls == one * n_mb


def test_micro_batch_weights_sum_to_one():
    "The accumulated gradient over weighted micro-batches equals the minibatch gradient."
    grads = {}
    for k in (1, 3):
        m = make(micro_batches=k, use_vgs=False, policy_kwargs=dict(lstm_hidden_size=16, optimizer_class=th.optim.SGD))
        rollout(m)
        seqs = np.arange(m.rollout_buffer.n_sequences)
        m.policy.optimizer.step = lambda *a, **kw: None
        m.max_grad_norm = 1e9
        m._update(seqs, 0.2, 1.0, 0.01)
        grads[k] = th.cat([p.grad.reshape(-1) for p in m.policy.parameters() if p.grad is not None])
    assert th.allclose(grads[1], grads[3], atol=1e-6, rtol=1e-4)


# ---- non-finite updates --------------------------------------------------------------------------------
def test_nonfinite_loss_is_skipped_and_counted(monkeypatch):
    m = make(n_epochs=1)
    cap = captured(m)
    rollout(m)
    real, n = m._loss, {"calls": 0}
    def first_nan(*a, **k):
        loss, st = real(*a, **k)
        n["calls"] += 1
        return (loss * float("nan"), st) if n["calls"] == 1 else (loss, st)
    monkeypatch.setattr(m, "_loss", first_nan)
    before = params(m)
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        m.train()
    assert m.nonfinite.total == 1 and m.nonfinite.streak == 0
    assert any(not th.equal(a, b) for a, b in zip(before, params(m)))    # the later updates were applied
    m.logger.dump(0)
    assert cap.values("warn/nonfinite_updates") == [1]


def test_nonfinite_gradient_is_skipped_without_touching_parameters():
    m = make(n_epochs=1, batch_size=10_000)             # one minibatch: one update
    rollout(m)
    h = m.policy.log_std.register_hook(lambda g: g * float("nan"))
    before = params(m)
    with pytest.warns(RuntimeWarning, match="non-finite gradient"):
        m.train()
    h.remove()
    assert m.nonfinite.total == 1
    assert all(th.equal(a, b) for a, b in zip(before, params(m)))


def test_nonfinite_updates_in_a_row_raise_with_diagnostic():
    m = make(n_epochs=3, max_nonfinite_updates=3)
    rollout(m)
    with th.no_grad(): m.policy.action_net.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"3 non-finite updates in a row.*non-finite parameters: \['action_net.weight'\]"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            m.train()


# ---- entropy schedule (seed 002 #5) --------------------------------------------------------------------
def test_entropy_never_below_floor_with_decay_and_plateau():
    m = make(ent_coef=0.05, ent_coef_final=0.0, ent_coef_min=0.01, ent_plateau_patience=1, ent_plateau_factor=0.1)
    cap = captured(m)
    m.learn(32 * 4 * 6)
    coefs = cap.values("train/ent_coef")
    assert len(coefs) >= 4 and min(coefs) >= 0.01 and coefs[-1] == pytest.approx(0.01)
    assert m.current_ent_coef() >= 0.01


def test_plateau_decay_stops_at_the_floor():
    m = make(ent_coef=0.1, ent_coef_min=0.02, ent_plateau_patience=2, ent_plateau_factor=0.5)
    m._update_ent_plateau(1.0)                          # best so far
    seen = []
    for _ in range(40):                                 # a long plateau
        m._update_ent_plateau(0.5)
        seen.append((m.entropy_plateau.scale, m.current_ent_coef()))
    assert all(c >= 0.02 for _, c in seen)
    scales = [s for s, _ in seen]
    assert scales[-1] == scales[-10] and 0.1 * scales[-1] <= 0.02      # decay stopped once the floor was reached
    assert m.current_ent_coef() == pytest.approx(0.02)
    m._update_ent_plateau(2.0)                          # improvement resets the patience, not the floor
    assert m.current_ent_coef() >= 0.02


# ---- logging ------------------------------------------------------------------------------------------------
def test_logged_diagnostics():
    m = make(policy_kwargs=dict(lstm_hidden_size=16, n_lstm_layers=2))
    cap = captured(m)
    m.learn(32 * 4 * 3)
    keys = cap.keys()
    need = {"train/policy_gradient_loss", "train/value_loss", "train/entropy_loss", "train/approx_kl", "train/clip_fraction",
            "train/explained_variance", "train/learning_rate", "train/std", "train/cvar", "train/value_dist_var",
            "train/ent_coef", "vgs/scaling_factor", "upgd/noise_to_signal", "critics/q1_grad_norm", "critics/q2_grad_norm",
            "warn/empty_epoch", "warn/nonfinite_updates"}
    need |= {f"lstm/h_{s}_layer{i}" for s in ("mean", "std", "norm") for i in (0, 1)}
    assert need <= keys, need - keys
    assert all(v > 0 for v in cap.values("critics/q1_grad_norm") + cap.values("critics/q2_grad_norm"))
    assert all(v >= 0 for v in cap.values("train/value_dist_var"))


def test_warns_when_a_critic_gradient_vanishes():
    m = make(n_epochs=1)
    rollout(m)
    mask = th.ones(2, 1, 1)
    mask[1] = 0
    hooks = [p.register_hook(lambda g: g * mask) for p in m.policy.q_net.parameters()]
    with pytest.warns(RuntimeWarning, match="critic 2 receives no gradient"):
        m.train()
    for h in hooks: h.remove()


def test_empty_epoch_is_counted(monkeypatch):
    m = make(n_epochs=2)
    cap = captured(m)
    rollout(m)
    monkeypatch.setattr(m, "_update", lambda *a, **k: None)     # every update skipped
    m.train()
    m.logger.dump(0)
    assert cap.values("warn/empty_epoch") == [2]


def test_learn_with_progress_bar():
    m = make()
    m.learn(32 * 4 * 2, progress_bar=True)
    assert m.num_timesteps == 32 * 4 * 2


# ---- parameters: VGS state, optimizer, relinking (seed 003 1.2, 1.3) -----------------------------
def test_get_parameters_contents():
    m = make()
    m.learn(32 * 4 * 2)
    p = m.get_parameters()
    assert {"policy", "vgs", "return_normalizer"} <= set(p) and "policy.optimizer" not in p
    assert "policy.optimizer" in m.get_parameters(include_optimizer=True)


def test_set_parameters_relinks_optimizer_and_vgs_and_keeps_lr():
    a, b = make(seed=0), make(seed=1, learning_rate=1e-3)
    a.learn(32 * 4 * 2)
    b.learn(32 * 4 * 2)
    b.set_parameters(a.get_parameters(include_optimizer=True))
    live = {id(p) for p in b.policy.parameters()}
    assert {id(p) for g in b.policy.optimizer.param_groups for p in g["params"]} == live
    assert {id(p) for p in b.vgs._params} <= live if hasattr(b.vgs, "_params") else True
    assert all(g["lr"] == pytest.approx(1e-3) for g in b.policy.optimizer.param_groups)   # b's config wins (ray #62173)
    for x, y in zip(a.policy.parameters(), b.policy.parameters()): assert th.equal(x, y)
    # replacing the policy's parameters altogether: the optimizer is rebuilt on the live ones
    b.policy.action_net.weight = th.nn.Parameter(b.policy.action_net.weight.detach().clone())
    b._relink()
    assert any(p is b.policy.action_net.weight for g in b.policy.optimizer.param_groups for p in g["params"])
    b.learn(32 * 4)


def test_set_hparams_learning_rate_is_what_train_applies():
    m = make()
    m.set_hparams(learning_rate=1e-5)
    m.learn(32 * 4)
    assert all(g["lr"] == pytest.approx(1e-5) for g in m.policy.optimizer.param_groups)


def test_set_parameters_rejects_unknown_groups():
    m = make()
    with pytest.raises(ValueError, match="unknown parameter group"):
        m.set_parameters({"policy": m.policy.state_dict(), "bogus": {}})


# ---- VecNormalize freezing (seed 002 #4) -----------------------------------------------------------
@pytest.mark.parametrize("freeze", [True, False])
def test_vecnormalize_obs_stats_frozen_during_rollout(freeze):
    venv = VecNormalize(env(), norm_obs=True, norm_reward=False)
    m = make(venv, freeze_vecnormalize_obs=freeze)
    seen = []
    from stable_baselines3.common.callbacks import BaseCallback
    class Watch(BaseCallback):
        def _on_step(self):
            seen.append(venv.obs_rms.mean.copy())
            return True
    m.learn(32 * 4, callback=Watch())
    changed_during = not all(np.array_equal(seen[0], s) for s in seen)
    assert changed_during == (not freeze)
    assert venv.training                                  # unfrozen after the rollout
    if freeze:                                             # the rollout's observations were folded in afterwards
        assert not np.array_equal(seen[-1], venv.obs_rms.mean)
        assert venv.obs_rms.count == pytest.approx(1e-4 + 4 + 32 * 4)


def test_critic_adjustment_option():
    m = make(critic_adjustment=True)
    m.learn(32 * 4 * 2)
    assert all(a.omega is not None and a.n_updates > 0 for a in m._critic_adjuster)
    assert "critic_adjuster" in m.get_parameters()


def test_rollout_buffer_memory_is_linear():
    sizes = []
    for T in (64, 128):
        buf = SequenceRolloutBuffer(T, 8, (12,), 1, 32, (1, 64), 32, th.device("cpu"))
        sizes.append(sum(x.numel() * x.element_size() for x in (buf.obs, buf.actions, buf.log_probs, buf.quantiles, buf.chunk_states)))
    assert sizes[1] == 2 * sizes[0]


def test_fixed_upgd_noise_with_vgs_warns():
    from tradingrl_nb.vgs import VGSNoiseWarning
    with pytest.warns(VGSNoiseWarning):
        make(policy_kwargs=dict(lstm_hidden_size=16, optimizer_kwargs=dict(adaptive_noise=False, sigma=0.01)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", VGSNoiseWarning)
        make()                                          # the default (adaptive noise) does not warn


def test_first_snapshot_replaces_the_prior_without_rescaling_heads():
    m = make()
    w = [t.detach().clone() for t in (m.policy.q_net.weights[-1], m.policy.q_net.biases[-1])]
    assert m.return_scale.snapshot == (0.0, 1.0)
    rollout(m)
    assert m.return_scale.snapshot != (0.0, 1.0)
    assert all(th.equal(a, b) for a, b in zip(w, (m.policy.q_net.weights[-1], m.policy.q_net.biases[-1])))
    m.train()
    rollout(m)  # later refreshes preserve outputs: the heads move
    assert not th.equal(w[0], m.policy.q_net.weights[-1])


def test_value_clipping_is_per_sample_max():
    "The loss equals mean over samples of max(unclipped, clipped), computed naively for comparison."
    from tradingrl_nb.distributional import quantile_huber_loss
    m = make(n_steps=64, clip_range_vf=0.05)
    rollout(m)
    m.train()
    rollout(m)  # old quantiles from the previous weights: some clip, some not
    mb = m.rollout_buffer.gather(np.arange(m.rollout_buffer.n_sequences))
    _, _, q = m.policy.evaluate_actions(mb["obs"], mb["actions"], mb["states"])
    with th.no_grad(): q.add_(0.1 * th.randn_like(q))   # move the atoms so that clipping happens
    mu, sigma = m.return_scale.snapshot
    target = (mb["returns"] - mu) / sigma
    got = m._critic_losses(q, mb["old_quantiles"], 0.05, target, mb["mask"])
    mask, old = mb["mask"], mb["old_quantiles"]
    for k in range(2):
        qk, ok = q[..., k, :][mask], old[..., k, :][mask]
        t = target[mask].unsqueeze(-1)
        ref = th.maximum(quantile_huber_loss(qk, t, reduction="none"),
                         quantile_huber_loss(ok + (qk - ok).clamp(-0.05, 0.05), t, reduction="none"))
        unclipped = quantile_huber_loss(qk, t, reduction="none")
        assert th.allclose(got[..., k][mask], ref, atol=1e-6)
        assert (ref > unclipped + 1e-6).any()           # clipping was active somewhere


# ---- the loss terms as formulas (issue 26: clipping, vf_coef, advantage normalization) -------------------
ACTOR = ("lstm_actor.", "pi_net.", "action_net.", "log_std")
CRITIC = ("lstm_critic.", "q_net.")


def _mb_with_ratios(m, ratio_of):
    "A full-rollout batch whose old log-probabilities make the new/old ratio `ratio_of(advantages)` on every step."
    rollout(m)
    mb = m.rollout_buffer.gather(np.arange(m.rollout_buffer.n_sequences))
    with th.no_grad(): logp, _, _ = m.policy.evaluate_actions(mb["obs"], mb["actions"], mb["states"])
    mb["old_log_prob"] = logp - th.log(ratio_of(mb["advantages"]))
    return mb, logp


def _grads(m, prefixes):
    return {n: (th.zeros_like(p) if p.grad is None else p.grad.clone()) for n, p in m.policy.named_parameters()
            if n.startswith(prefixes)}


def test_clipped_surrogate_equals_its_formula_outside_the_clip_range():
    m = make(vf_coef=0.0)
    g = th.Generator().manual_seed(0)
    choice = th.tensor([0.5, 0.9, 1.1, 1.5])                        # two inside the clip range 0.2, two outside
    mb, logp = _mb_with_ratios(m, lambda a: choice[th.randint(0, 4, a.shape, generator=g)])
    w = mb["mask"].float() / mb["mask"].float().sum()
    adv, r = mb["advantages"], th.exp(logp - mb["old_log_prob"])
    outside = ((r - 1).abs() > 0.2) & mb["mask"]
    assert outside.any() and (outside & (adv > 0) & (r > 1)).any() and (outside & (adv < 0) & (r < 1)).any()
    expected = -(th.min(adv * r, adv * r.clamp(0.8, 1.2)) * w).sum()
    unclipped = -(adv * r * w).sum()
    assert abs(float(expected - unclipped)) > 1e-3                  # the batch tells clipped from unclipped
    _, st = m._loss(mb, 0.2, None, 0.0)
    pg = st[m._STATS.index("policy_gradient_loss")]
    assert float(pg) == pytest.approx(float(expected), rel=1e-5, abs=1e-7)
    assert float(st[m._STATS.index("clip_fraction")]) == pytest.approx(float((outside.float() * w).sum()), rel=1e-5)


def test_clipped_steps_give_no_actor_gradient():
    "Every step where the ratio is past the clip range in the advantage's direction: the actor's gradient is exactly 0."
    m = make(vf_coef=0.5)
    mb, _ = _mb_with_ratios(m, lambda a: th.where(a > 0, th.tensor(1.5), th.tensor(0.5)))
    m.policy.optimizer.zero_grad(set_to_none=True)
    loss, _ = m._loss(mb, 0.2, None, 0.0)                          # ent_coef 0: the actor only sees the surrogate
    loss.backward()
    actor = _grads(m, ACTOR)
    assert actor and all(float(v.abs().max()) == 0.0 for v in actor.values()), {n: float(v.abs().max()) for n, v in actor.items()}
    assert any(float(v.abs().max()) > 0 for v in _grads(m, CRITIC).values())   # the critic still learns


def test_total_loss_weights_the_value_loss_by_vf_coef():
    m = make()
    rollout(m)
    mb = m.rollout_buffer.gather(np.arange(m.rollout_buffer.n_sequences))
    i = {k: m._STATS.index(k) for k in ("policy_gradient_loss", "value_loss", "entropy_loss", "loss")}
    critic = {}
    for vf in (0.0, 0.25, 1.0, 3.0):
        m.vf_coef = vf
        m.policy.optimizer.zero_grad(set_to_none=True)
        loss, st = m._loss(mb, 0.2, 1.0, 0.01)
        pg, vl, el = (float(st[i[k]]) for k in ("policy_gradient_loss", "value_loss", "entropy_loss"))
        assert vl > 1e-3
        assert float(loss.detach()) == pytest.approx(pg + vf * vl + 0.01 * el, rel=1e-5, abs=1e-6)
        assert float(st[i["loss"]]) == float(loss.detach())
        loss.backward()
        critic[vf] = th.cat([v.reshape(-1) for v in _grads(m, CRITIC).values()])
    assert float(critic[0.0].abs().max()) == 0.0
    for vf in (0.25, 3.0):                                          # the critic's gradient scales with vf_coef
        th.testing.assert_close(critic[vf], vf * critic[1.0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("normalize", [True, False])
def test_loss_receives_normalized_advantages(monkeypatch, normalize):
    m = make(normalize_advantage=normalize, micro_batches=1)
    rollout(m)
    seqs = m.rollout_buffer.minibatches(m.batch_size, np.random.default_rng(0))[0]
    buf = m.rollout_buffer.gather(seqs)
    mask = buf["mask"]
    a = buf["advantages"][mask].double()
    assert abs(float(a.mean())) > 1e-3 or abs(float(a.std()) - 1) > 1e-2   # the buffer's are not normalized already
    seen, real = [], m._loss
    monkeypatch.setattr(m, "_loss", lambda mb, *a, **k: (seen.append(mb["advantages"].clone()), real(mb, *a, **k))[1])
    m._update(seqs, 0.2, 1.0, 0.0)
    assert len(seen) == 1
    if normalize:
        got = seen[0][mask].double()
        assert float(got.mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(got.std(unbiased=True)) == pytest.approx(1.0, abs=1e-5)
    else:
        assert th.equal(seen[0], buf["advantages"])


def test_the_rollouts_position_has_one_owner_that_sb3s_names_read_and_write():
    "RolloutState holds the last observation, episode starts and LSTM states; SB3's attribute names are views of it."
    from tradingrl_nb.rollout import RolloutState
    m = make()
    assert isinstance(m.rollout_state, RolloutState) and m.rollout_state.obs is None
    rollout(m)
    rs = m.rollout_state
    assert m._last_obs is rs.obs and m._last_episode_starts is rs.episode_starts and m._last_lstm_states is rs.lstm
    assert rs.lstm.pi[0].abs().sum() > 0                                   # a rollout leaves non-zero states
    sd = rs.state_dict()
    rs.lstm.pi[0].add_(1.0)
    rs.obs[...] = 7.0  # the state dict is a copy
    assert not th.equal(sd["lstm"]["pi"][0], rs.lstm.pi[0]) and not np.array_equal(sd["last_obs"], rs.obs)
    other = make()
    other.rollout_state.load_state_dict(sd, other.device)
    assert np.array_equal(other._last_obs, sd["last_obs"])
    assert all(th.equal(a, b) for a, b in zip((*other._last_lstm_states.pi, *other._last_lstm_states.vf),
                                              (*sd["lstm"]["pi"], *sd["lstm"]["vf"])))
    m.reset_lstm_states_to_initial()
    assert m.rollout_state is rs and float(rs.lstm.pi[0].abs().sum()) == 0


def test_the_nonfinite_count_is_a_component_that_checkpoints_keep(tmp_path):
    from tradingrl_nb.ppo import DistributionalPPO, NonfiniteGuard
    g = NonfiniteGuard(2)
    assert g.dropped() is False and g.dropped() is True and (g.total, g.streak) == (2, 2)
    g.passed()
    assert (g.total, g.streak) == (2, 0)
    m = make()
    m.nonfinite.load_state_dict([5, 1])
    m.save(tmp_path / "m")
    loaded = DistributionalPPO.load(tmp_path / "m.safetensors", env=env(), device="cpu")
    assert isinstance(loaded.nonfinite, NonfiniteGuard) and loaded.nonfinite.state_dict() == [5, 1]
    assert loaded.nonfinite.limit == m.max_nonfinite_updates
