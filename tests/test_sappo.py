"""SA-PPO: observation attacks (ball, gradient isolation, strength), the epsilon ramp, the robust KL regularizer,
SA-PPO training (`DistributionalPPO(sappo=...)`) and checkpoints, and `AttackedPolicy` in backtests."""
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from hypothesis import example, given, settings, strategies as st
from stable_baselines3.common.logger import configure

from tradingrl_nb.policy import RecurrentQuantilePolicy
from tradingrl_nb.ppo import DistributionalPPO
from tradingrl_nb.sappo import (METHODS, AttackedPolicy, EpsSchedule, RobustKLRegularizer, SAPPOConfig,
                                actor_mean, gaussian_kl, perturb_observations, total_updates)

D = 6

def make_policy(seed=0, hidden=16, ortho_init=False, obs_dim=D):
    th.manual_seed(seed)
    box = spaces.Box(-10, 10, (obs_dim,), np.float32)
    return RecurrentQuantilePolicy(box, spaces.Box(-1, 1, (1,), np.float32), lambda _: 1e-3, lstm_hidden_size=hidden,
                                   n_quantiles=4, ortho_init=ortho_init)

POLICY = make_policy()

def kl_between(pol, obs, x, states=None):
    with th.no_grad():
        return float(gaussian_kl(actor_mean(pol, obs, states)[0], actor_mean(pol, x, states)[0], pol.log_std).mean())

# ---- attacks -------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(method=st.sampled_from(METHODS), eps=st.floats(0.0, 2.0), T=st.integers(1, 6), B=st.integers(1, 3),
       steps=st.integers(1, 4), scale=st.floats(0.01, 8.0), seed=st.integers(0, 2**16), pad=st.integers(0, 3))
@example(method="sgld", eps=5e-324, T=1, B=1, steps=2, scale=1.0, seed=0, pad=0)    # hypothesis' find: eps / steps == 0
@example(method="sgld", eps=5e-324, T=3, B=2, steps=1, scale=1.0, seed=0, pad=1)    # eps / steps > 0, 1 / that overflows
@example(method="pgd", eps=5e-324, T=2, B=1, steps=3, scale=1.0, seed=0, pad=0)
@example(method="mad", eps=5e-324, T=2, B=2, steps=2, scale=1.0, seed=0, pad=0)
@example(method="sgld", eps=1e-300, T=2, B=2, steps=4, scale=1.0, seed=0, pad=0)
def test_attack_never_leaves_the_ball(method, eps, T, B, steps, scale, seed, pad):
    g = th.Generator().manual_seed(seed)
    obs = th.randn(T, B, D, generator=g) * scale
    mask = th.ones(T, B, dtype=th.bool)
    mask[T - min(pad, T - 1):, 0] = False if pad else True          # padding at the end of sequence 0
    th.manual_seed(seed)
    x = perturb_observations(POLICY, obs, eps, method=method, steps=steps, mask=mask)
    assert x.shape == obs.shape and th.isfinite(x).all()
    assert (x >= obs - eps).all() and (x <= obs + eps).all()        # the projection, bit for bit
    assert float((x - obs).abs().max()) <= eps * (1 + 1e-6) + 1e-6 * float(obs.abs().max())
    assert th.equal(x[~mask], obs[~mask])                           # padding is never perturbed
    if eps == 0: assert th.equal(x, obs)

@pytest.mark.parametrize("eps", [5e-324, 1e-300, 1e-30, 0.1])
@pytest.mark.parametrize("method, steps", [("sgld", 1), ("sgld", 3), ("pgd", 2), ("mad", 2)])
def test_attack_with_a_zero_gradient_stays_finite_at_any_radius(method, steps, eps):
    "A policy blind to its input (gradient exactly 0 everywhere) under relative Langevin noise: finite, in the ball, any radius."
    pol = make_policy(3)
    with th.no_grad(): pol.action_net.weight.zero_()
    obs = th.randn(4, 2, D, generator=th.Generator().manual_seed(1))
    th.manual_seed(0)
    x = perturb_observations(pol, obs, eps, method=method, steps=steps, beta=1e-3)
    assert th.isfinite(x).all() and (x >= obs - eps).all() and (x <= obs + eps).all()


def test_attack_gradients_never_reach_the_parameters():
    pol = make_policy(1)
    obs = th.randn(8, 3, D)
    for p in pol.parameters(): p.grad = None
    for m in METHODS: perturb_observations(pol, obs, 0.2, method=m, steps=3)
    assert all(p.grad is None for p in pol.parameters())
    marks = {n: th.full_like(p, 0.5) for n, p in pol.named_parameters()}
    for n, p in pol.named_parameters(): p.grad = marks[n].clone()
    for m in METHODS: perturb_observations(pol, obs, 0.2, method=m, steps=3)
    assert all(th.equal(p.grad, marks[n]) for n, p in pol.named_parameters())

def test_regularizer_gradient_is_the_final_evaluation_only():
    "The term's parameter gradient equals that of kappa * 2KL evaluated at the attacked observations: no inner-loop leak."
    pol, kappa = make_policy(2), 0.3
    obs, states = th.randn(10, 4, D), pol.initial_state(4)
    mask = th.ones(10, 4, dtype=th.bool)
    mask[7:, 1] = False
    th.manual_seed(5)
    x = perturb_observations(pol, obs, 0.2, "sgld", steps=4, states=states, mask=mask)
    th.manual_seed(5)
    reg = RobustKLRegularizer(SAPPOConfig(eps=0.2, kappa=kappa, steps=4))
    term, m = reg.loss(pol, dict(obs=obs, states=states, mask=mask), 0.2)
    g_term = th.autograd.grad(term, list(pol.parameters()), allow_unused=True)
    with th.no_grad(): mu0, _ = actor_mean(pol, obs, states)
    mu, _ = actor_mean(pol, x, states)
    w = mask.float() / mask.sum()
    manual = kappa * ((((mu - mu0) * th.exp(-pol.log_std)).pow(2).sum(-1)) * w).sum()
    g_manual = th.autograd.grad(manual, list(pol.parameters()), allow_unused=True)
    assert float(term.detach()) == pytest.approx(float(manual.detach()), rel=1e-5) and float(m["kl"]) == pytest.approx(float(manual.detach()) / kappa / 2, rel=1e-5)
    for a, b, (n, _) in zip(g_term, g_manual, pol.named_parameters()):
        assert (a is None) == (b is None), n
        if a is not None: assert th.allclose(a, b, atol=1e-7, rtol=1e-5), n
    assert g_term[[n for n, _ in pol.named_parameters()].index("log_std")] is not None   # std in the graph (reference)
    assert all(a is None for a, (n, _) in zip(g_term, pol.named_parameters()) if n.startswith(("lstm_critic", "q_net")))

@pytest.mark.parametrize("eps", [0.05, 0.2, 0.5])
def test_kl_under_attack_beats_random_noise_of_the_same_radius(eps):
    for seed in range(3):
        pol = make_policy(10 + seed)
        obs = th.randn(12, 4, D)
        th.manual_seed(seed)
        kl_rand = kl_between(pol, obs, perturb_observations(pol, obs, eps, "random"))
        for m in ("sgld", "pgd", "mad"):
            th.manual_seed(seed)
            kl = kl_between(pol, obs, perturb_observations(pol, obs, eps, m))
            assert kl >= kl_rand, (m, seed, kl, kl_rand)
            if m != "sgld": assert kl > 3 * kl_rand, (m, seed, kl, kl_rand)

def test_whole_sequence_attack_uses_the_given_states_and_the_recurrence():
    "The attack runs the LSTM from `states`; a perturbation of early steps also moves later actions."
    pol = make_policy(3)
    obs = th.randn(6, 2, D)
    h = th.randn(1, 2, 16) * 0.5
    states = (h, th.zeros_like(h))
    th.manual_seed(0)
    x = perturb_observations(pol, obs, 0.3, "pgd", states=states)
    with th.no_grad():
        mu_s = actor_mean(pol, obs, states)[0]
        assert not th.allclose(mu_s, actor_mean(pol, obs)[0])                  # the states matter
        early = obs.clone()
        early[:3] = x[:3]  # only steps 0..2 perturbed
        moved_later = (actor_mean(pol, early, states)[0][3:] - mu_s[3:]).abs().max()
    assert float(moved_later) > 0                                                # through the LSTM state
    assert kl_between(pol, obs, x, states) > kl_between(pol, obs, early, states)

def test_perturb_observations_api():
    pol = make_policy(4)
    obs = np.random.default_rng(0).normal(size=(5, D)).astype(np.float32)        # one sequence, numpy
    x = perturb_observations(pol, obs, 0.1, "pgd", steps=2)
    assert isinstance(x, np.ndarray) and x.shape == obs.shape and np.abs(x - obs).max() <= 0.1 + 1e-6
    assert not np.shares_memory(x, obs)
    for bad in (dict(method="fgsm"), dict(eps=-0.1), dict(eps=float("nan")), dict(steps=0)):
        kw = dict(method="sgld", eps=0.1, steps=2) | bad
        with pytest.raises(ValueError): perturb_observations(pol, obs, **kw)
    with pytest.raises(ValueError, match="shape"): perturb_observations(pol, np.zeros((5, 2, D + 1), np.float32), 0.1)
    m = np.array([1, 1, 1, 0, 0], bool)                                          # numpy mask of one sequence
    x = perturb_observations(pol, obs, 0.1, "sgld", steps=2, mask=m)
    assert np.array_equal(x[3:], obs[3:]) and not np.array_equal(x[:3], obs[:3])
    with pytest.raises(ValueError, match="mask"): perturb_observations(pol, obs, 0.1, mask=m[:4])
    with pytest.raises(TypeError): perturb_observations(object(), obs, 0.1)

# ---- schedule ----------------------------------------------------------------------------------------
def test_eps_schedule_is_derived_from_the_run():
    assert total_updates(100_000, 128, 8) == 97 and total_updates(100_000, 128, 1) == 781
    assert total_updates(10, 128, 8) == 1
    for total, n_steps, n_envs in [(4096, 64, 4), (50_000, 256, 8), (1_000_000, 2048, 1)]:
        s = EpsSchedule.from_run(0.2, total, n_steps, n_envs, ramp_fraction=0.5)
        n = total // (n_steps * n_envs)
        assert s.total_updates == n
        eps = np.array([s(u) for u in range(n + 3)])
        assert eps[0] == 0 and np.all(np.diff(eps) >= 0) and eps.max() == pytest.approx(0.2)
        assert np.argmax(eps >= 0.2 - 1e-12) == int(np.ceil(0.5 * n))               # reaches eps_max at half the run
        assert eps[1] == pytest.approx(0.2 / (0.5 * n))
    assert EpsSchedule(0.1, 10, ramp_fraction=0.0)(0) == 0.1
    with pytest.raises(ValueError): total_updates(0, 128, 8)
    with pytest.raises(ValueError): EpsSchedule(0.1, 10, ramp_fraction=1.5)
    with pytest.raises(ValueError): SAPPOConfig(method="random")


@pytest.mark.parametrize("name, bad, named", [("eps", -0.1, "-0.1"), ("kappa", -1.0, "-1.0"), ("beta", float("nan"), "nan"),
                                              ("steps", 0, "0"), ("ramp_fraction", 1.5, "1.5"), ("method", "mad", "'mad'")])
def test_config_refuses_an_out_of_range_value_set_at_run_time(name, bad, named):
    "A field changed on a live config (the model and its regularizer share it) is checked like the constructor's."
    m = tiny_sappo(sappo=dict(eps=0.05, kappa=0.1, steps=2))
    cfg = m.sappo
    assert m._sappo_reg.config is cfg
    before = dict(vars(cfg))
    with pytest.raises(ValueError, match=named):
        setattr(cfg, name, bad)
    assert dict(vars(cfg)) == before
    cfg.kappa = 0.5
    cfg.eps = 0.0  # valid values are taken
    assert m._sappo_reg.config.kappa == 0.5 and m.sappo.eps == 0.0

class Recording(DistributionalPPO):
    "A DistributionalPPO with SA-PPO on that records the radius of every update."
    def train(self):
        super().train()
        self.trace = getattr(self, "trace", []) + [self.sappo_eps]

def tiny_sappo(n_envs=2, sappo=None, **kw):
    from tradingrl_nb.data import synthetic_market
    from tradingrl_nb.vec_env import TradingVecEnv
    env = TradingVecEnv(synthetic_market(400, seed=0), n_envs=n_envs, seed=0, window=1, episode_length=40)
    m = Recording("MlpLstmPolicy", env, sappo=sappo or dict(eps=0.3, steps=2, ramp_fraction=0.5), n_steps=16,
                  batch_size=32, n_epochs=1, sequence_length=8, seed=0, device="cpu",
                  policy_kwargs=dict(lstm_hidden_size=8, n_quantiles=4, ortho_init=False), **kw)
    m.set_logger(configure(None, []))
    return m

@pytest.mark.parametrize("n_envs,updates", [(1, 4), (2, 6)])
def test_sappo_ramps_eps_over_its_own_run(n_envs, updates):
    m = tiny_sappo(n_envs)
    m.learn(16 * n_envs * updates)
    ramp = 0.5 * updates
    assert m.trace == pytest.approx([0.3 * min(1.0, u / ramp) for u in range(updates)])
    m.learn(16 * n_envs * 2, reset_num_timesteps=False)                          # continuing: the run is longer now
    total = updates + 2
    assert m.eps_schedule().total_updates == total
    assert m.trace[-2:] == pytest.approx([0.3 * min(1.0, u / (0.5 * total)) for u in (updates, updates + 1)])

# ---- training ---------------------------------------------------------------------------------------
def test_regularizer_reduces_the_kl_under_attack():
    "A few optimizer steps on the regularizer alone make the actor much harder to move (attacked KL measured by PGD)."
    pol = make_policy(6, hidden=16)
    obs, states = th.randn(16, 8, D), pol.initial_state(8)
    def attacked():
        th.manual_seed(123)
        return kl_between(pol, obs, perturb_observations(pol, obs, 0.3, "pgd", states=states), states)
    before = attacked()
    reg = RobustKLRegularizer(SAPPOConfig(eps=0.3, kappa=1.0, steps=5))
    opt = th.optim.Adam(pol.parameters(), lr=3e-3)
    for _ in range(40):
        opt.zero_grad()
        term, _ = reg.loss(pol, dict(obs=obs, states=states), 0.3)
        term.backward()
        opt.step()
    after = attacked()
    assert after < 0.3 * before, (before, after)

def test_sappo_learns_logs_and_round_trips(tmp_path):
    m = tiny_sappo(2, sappo=dict(eps=0.2, kappa=0.5, steps=2, ramp_fraction=0.0), micro_batches=2)
    m.learn(16 * 2 * 3)
    log = m.logger.name_to_value
    assert log["sappo/eps"] == 0.2 and log["sappo/kl"] > 0 and log["sappo/loss"] == pytest.approx(2 * 0.5 * log["sappo/kl"])
    m.save(tmp_path / "sa")
    m2 = DistributionalPPO.load(tmp_path / "sa")
    assert m2.sappo == m.sappo == SAPPOConfig(eps=0.2, kappa=0.5, steps=2, ramp_fraction=0.0)
    for (n, a), (_, b) in zip(m.policy.state_dict().items(), m2.policy.state_dict().items()): assert th.equal(a, b), n
    with pytest.raises(ValueError, match="unknown SA-PPO option"): SAPPOConfig.coerce(dict(eps=0.1, epsilon=2))

# ---- backtests under attack ---------------------------------------------------------------------------
def test_attacked_policy_in_a_backtest():
    from tradingrl_nb.backtest import backtest
    from tradingrl_nb.data import synthetic_market
    m = tiny_sappo(1)
    m.learn(16 * 2)
    df = synthetic_market(300, seed=1)
    base = backtest(m, df, window=1)
    clean = backtest(AttackedPolicy(m, "mad", 0.0), df, window=1)
    assert np.array_equal(clean.equity["position"].to_numpy(), base.equity["position"].to_numpy(), equal_nan=True)
    kls = {}
    for method in ("random", "mad"):
        th.manual_seed(0)
        ap = AttackedPolicy(m, method, 0.5)
        r = backtest(ap, df, window=1)
        assert len(ap.kl_history) == len(r.equity) - 1
        assert not np.allclose(r.equity["position"].to_numpy()[:-1], base.equity["position"].to_numpy()[:-1])
        kls[method] = np.mean(ap.kl_history)
    assert kls["mad"] > 3 * kls["random"]

def test_backtest_attack_option_matches_the_wrapper():
    from tradingrl_nb.backtest import backtest
    from tradingrl_nb.data import synthetic_market
    m = tiny_sappo(2)
    m.learn(16 * 2)
    df = synthetic_market(200, seed=2)
    th.manual_seed(0)
    via_option = backtest(m, df, window=1, attack=dict(method="random", eps=0.5))
    th.manual_seed(0)
    via_wrapper = backtest(AttackedPolicy(m, "random", 0.5), df, window=1)
    clean = backtest(m, df, window=1)
    pos = lambda r: r.equity["position"].to_numpy()[:-1]
    assert np.array_equal(pos(via_option), pos(via_wrapper))
    assert not np.allclose(pos(via_option), pos(clean))
    with pytest.raises(ValueError, match="attack= needs a trained model"):
        backtest("buy_and_hold", df, window=1, attack=dict(method="mad", eps=0.1))

def test_attacked_policy_keeps_the_lstm_state_like_predict():
    pol = make_policy(7)
    obs = np.random.default_rng(1).normal(size=(6, 3, D)).astype(np.float32)
    ap = AttackedPolicy(pol, "pgd", 0.0)
    s1 = s2 = None
    for t in range(6):
        starts = np.array([t == 0, t == 3, False])
        a1, s1 = pol.predict(obs[t], s1, starts, deterministic=True)
        a2, s2 = ap.predict(obs[t], s2, starts, deterministic=True)
        assert np.allclose(a1, a2, atol=1e-6) and np.allclose(s1[0], s2[0], atol=1e-6)
    a, _ = ap.predict(obs[0, 0])                                                 # one observation, no batch axis
    assert a.shape == (1,)

# ---- SA-PPO as a DistributionalPPO option --------------------------------------------------------------
def tiny_ppo(sappo=None, **kw):
    from tradingrl_nb.data import synthetic_market
    from tradingrl_nb.vec_env import TradingVecEnv
    from tradingrl_nb.ppo import DistributionalPPO
    env = TradingVecEnv(synthetic_market(400, seed=0), n_envs=2, seed=0, window=1, episode_length=40)
    m = DistributionalPPO("MlpLstmPolicy", env, sappo=sappo, n_steps=16, batch_size=32, n_epochs=2, sequence_length=8,
                          seed=0, device="cpu", policy_kwargs=dict(lstm_hidden_size=8, n_quantiles=4, ortho_init=False), **kw)
    m.set_logger(configure(None, []))
    return m

def test_distributional_ppo_sappo_option_adds_the_regularizer():
    m = tiny_ppo(sappo=dict(eps=0.2, kappa=0.5, steps=2, ramp_fraction=0.0))
    assert type(m).__name__ == "DistributionalPPO" and m.sappo == SAPPOConfig(eps=0.2, kappa=0.5, steps=2, ramp_fraction=0.0)
    m.learn(16 * 2 * 2)
    log = m.logger.name_to_value
    assert log["sappo/eps"] == 0.2 and log["sappo/kl"] > 0 and log["sappo/loss"] == pytest.approx(2 * 0.5 * log["sappo/kl"])
    mb = m.rollout_buffer.gather(np.arange(m.rollout_buffer.n_sequences))           # the same batch, option on and off
    th.manual_seed(0)
    loss_on, st_on = m._loss(mb, 0.2, 1.0, 0.0)
    cfg, m.sappo = m.sappo, None
    loss_off, st_off = m._loss(mb, 0.2, 1.0, 0.0)
    m.sappo = cfg
    th.manual_seed(0)
    term, _ = RobustKLRegularizer(cfg).loss(m.policy, mb, 0.2)
    assert th.equal(st_on, st_off) and float(term.detach()) > 0
    assert float((loss_on - loss_off).detach()) == pytest.approx(float(term.detach()), rel=1e-4)
    assert DistributionalPPO("MlpLstmPolicy", m.env, sappo=None, n_steps=16).sappo is None        # None: off
    with pytest.raises(TypeError, match="sappo must be"): tiny_ppo(sappo=0.1)

def test_sappo_none_leaves_ppo_unchanged():
    "With `sappo=None` (the default) training is bit for bit that of a model whose regularizer is inert (kappa = 0)."
    off = tiny_ppo()                                             # built and trained one after the other: the global
    off.learn(16 * 2 * 3)                                        # torch RNG (seeded at construction) drives UPGD's noise
    inert = tiny_ppo(sappo=dict(eps=0.2, kappa=0.0, ramp_fraction=0.0))
    inert.learn(16 * 2 * 3)
    assert off.sappo is None and off.hparams()["sappo"] is None
    for (n, a), (_, b) in zip(off.policy.state_dict().items(), inert.policy.state_dict().items()): assert th.equal(a, b), n
    assert off.logger.name_to_value["train/loss"] == inert.logger.name_to_value["train/loss"]
    assert not any(k.startswith("sappo/") for k in off.logger.name_to_value)

def test_distributional_ppo_load_restores_the_sappo_config(tmp_path):
    from tradingrl_nb.ppo import DistributionalPPO
    cfg = SAPPOConfig(eps=0.15, kappa=0.3, method="pgd", steps=3, ramp_fraction=0.25, detach_std=True)
    m = tiny_ppo(sappo=cfg)
    m.learn(16 * 2)
    m.save(tmp_path / "sa")
    m2 = DistributionalPPO.load(tmp_path / "sa")
    assert type(m2) is DistributionalPPO and m2.sappo == cfg and m2._sappo_reg.config == cfg
    m2.set_logger(configure(None, []))
    m2.set_env(m.env)
    m2.learn(16 * 2, reset_num_timesteps=False)
    assert m2.logger.name_to_value["sappo/eps"] > 0
    off = tiny_ppo()
    off.save(tmp_path / "off")
    assert DistributionalPPO.load(tmp_path / "off").sappo is None


def test_attack_leaves_no_parameter_gradients_and_restores_requires_grad():
    "The attack differentiates with respect to its input only: no parameter ends with a .grad, every parameter still "
    "requires grad afterwards (also when the attack raises), and the PPO loss's gradients are those without the attack."
    from tradingrl_nb import sappo as S
    from tradingrl_nb.data import synthetic_market
    from tradingrl_nb.vec_env import TradingVecEnv
    from tradingrl_nb.ppo import DistributionalPPO
    env = TradingVecEnv(synthetic_market(400, seed=0), n_envs=2, seed=0, window=4, episode_length=64)
    m = DistributionalPPO("MlpLstmPolicy", env, n_steps=16, batch_size=32, sequence_length=8, seed=0, device="cpu",
                          policy_kwargs=dict(lstm_hidden_size=8))
    p = m.policy
    obs = th.randn(6, 3, *m.observation_space.shape)
    before = [q.requires_grad for q in p.parameters()]
    x = S.perturb_observations(m, obs, 0.1, method="sgld", steps=3)
    assert all(q.grad is None for q in p.parameters())
    assert [q.requires_grad for q in p.parameters()] == before
    with pytest.raises(RuntimeError, match="boom"):
        with S._inputs_only(p): raise RuntimeError("boom")
    assert [q.requires_grad for q in p.parameters()] == before
    assert (x - obs).abs().max() <= 0.1 + 1e-6
