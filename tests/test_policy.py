"Recurrent twin-quantile policy (`tradingrl_nb.policy`): shapes, exactness of the sequence path, predict API, gradients."
import math

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from hypothesis import given, settings, strategies as st

from tradingrl_nb.policy import MlpLstmPolicy, RecurrentQuantilePolicy, TwinMLP, mask_states, zero_states

OBS = spaces.Box(-10.0, 10.0, (6,), np.float32)
ACT = spaces.Box(-1.0, 1.0, (1,), np.float32)


def make(**kw):
    th.manual_seed(kw.pop("seed", 0))
    kw.setdefault("lstm_hidden_size", 16)
    return RecurrentQuantilePolicy(OBS, ACT, lambda _: 1e-3, **kw)


VARIANTS = [dict(), dict(n_lstm_layers=2), dict(enable_critic_lstm=False), dict(enable_critic_lstm=False, shared_lstm=True),
            dict(net_arch=[32, 32], n_quantiles=5)]


@pytest.mark.parametrize("kw", VARIANTS)
def test_shapes_and_defaults(kw):
    p = make(**kw)
    T, B, N = 5, 3, kw.get("n_quantiles", 32)
    lp, ent, q = p.evaluate_actions(th.randn(T, B, 6), th.randn(T, B, 1), p.initial_state(B))
    assert lp.shape == (T, B) and ent.shape == (T, B) and q.shape == (T, B, 2, N)
    a, lp1, q1, s = p(th.randn(B, 6), p.initial_state(B))
    assert a.shape == (B, 1) and lp1.shape == (B,) and q1.shape == (B, 2, N)
    assert s.pi[0].shape == (p.n_lstm_layers, B, 16)
    assert p.n_quantiles == N


@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize("grad", [False, True])
def test_step_by_step_equals_whole_sequence(kw, grad):
    "The rollout path (fused cells without grad, nn.LSTM with grad) and one nn.LSTM call over the sequence agree."
    p = make(**kw)
    T, B = 9, 4
    obs = th.randn(T, B, 6)
    s0 = zero_states(p.n_lstm_layers, B, 16)
    s0 = type(s0)(tuple(th.randn_like(x) for x in s0.pi), tuple(th.randn_like(x) for x in s0.vf))
    if not (p.lstm_critic is not None): s0 = type(s0)(s0.pi, s0.pi)   # one state when the critics have no LSTM
    st, lps, qs, acts = s0, [], [], []
    with th.set_grad_enabled(grad):
        for t in range(T):
            a, lp, q, st = p(obs[t], st, deterministic=True)
            acts.append(a)
            lps.append(lp)
            qs.append(q)
    lp_seq, _, q_seq = p.evaluate_actions(obs, th.stack(acts).detach(), s0)
    assert th.allclose(lp_seq, th.stack(lps), atol=1e-5)
    assert th.allclose(q_seq, th.stack(qs), atol=1e-5)


def test_fused_cells_follow_weight_updates():
    "The fused rollout cell caches stacked weights; an in-place update (optimizer step, load) must invalidate them."
    p = make()
    x, s = th.randn(2, 6), p.initial_state(2)
    with th.no_grad():
        q0 = p(x, s, deterministic=True)[2]
        p.lstm_critic.weight_ih_l0.add_(0.5)
        q1 = p(x, s, deterministic=True)[2]
        ref = p.evaluate_actions(x[None], th.zeros(1, 2, 1), s)[2][0]
    assert not th.allclose(q0, q1) and th.allclose(q1, ref, atol=1e-5)


def test_episode_starts_reset_only_their_envs():
    p = make()
    s = p.initial_state(3)
    s = type(s)(tuple(th.ones_like(x) for x in s.pi), tuple(th.ones_like(x) for x in s.vf))
    m = mask_states(s, th.tensor([False, True, False]))
    assert (m.pi[0][:, 1] == 0).all() and (m.vf[1][:, 1] == 0).all()
    assert (m.pi[0][:, [0, 2]] == 1).all() and (m.vf[0][:, [0, 2]] == 1).all()
    x = th.randn(3, 6)
    with th.no_grad():
        a = p(x, s, th.tensor([0.0, 1.0, 0.0]), deterministic=True)[0]
        b = p(x, p.initial_state(3), deterministic=True)[0]
        c = p(x, s, deterministic=True)[0]
    assert th.allclose(a[1], b[1]) and th.allclose(a[0], c[0]) and not th.allclose(a[1], c[1])


def test_recurrent_initial_state_is_zero():
    p = make(n_lstm_layers=2)
    s = p.recurrent_initial_state
    for x in (*s.pi, *s.vf):
        assert x.shape == (2, 1, 16) and float(x.abs().sum()) == 0.0


def test_predict_api_like_sb3_contrib():
    p = make()
    obs = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    a, state = p.predict(obs, deterministic=True)
    assert a.shape == (4, 1) and state[0].shape == (1, 4, 16) and np.all(np.abs(a) <= 1)
    a2, state2 = p.predict(obs, state=state, deterministic=True)
    assert not np.allclose(state2[0], state[0])
    a3, _ = p.predict(obs, state=state, episode_start=np.ones(4, bool), deterministic=True)
    assert np.allclose(a3, a)                      # episode start = fresh state
    single, s1 = p.predict(obs[0], deterministic=True)
    assert single.shape == (1,) and s1[0].shape == (1, 1, 16) and np.allclose(single, a[0])
    with pytest.raises(ValueError, match="state has shape"):
        p.predict(obs, state=(state[0][:, :2], state[1][:, :2]))


def test_bad_configurations():
    with pytest.raises(ValueError, match="Box"):
        RecurrentQuantilePolicy(OBS, spaces.Discrete(3), lambda _: 1e-3)
    with pytest.raises(ValueError, match="shared_lstm"):
        make(shared_lstm=True, enable_critic_lstm=True)
    with pytest.raises(ValueError, match="n_quantiles"):
        make(n_quantiles=0)
    with pytest.raises(ValueError, match="gSDE"):
        make(use_sde=True)


def test_shared_lstm_is_trained_by_the_actor_only():
    p = make(enable_critic_lstm=False, shared_lstm=True)
    _, _, q = p.evaluate_actions(th.randn(4, 2, 6), th.zeros(4, 2, 1), p.initial_state(2))
    q.sum().backward()
    assert all(x.grad is None for x in p.lstm_actor.parameters())
    p.zero_grad()
    lp, _, _ = p.evaluate_actions(th.randn(4, 2, 6), th.zeros(4, 2, 1), p.initial_state(2))
    lp.sum().backward()
    assert all(x.grad is not None for x in p.lstm_actor.parameters())


def test_twin_critics_are_independent_functions():
    p = make()
    q = p.evaluate_actions(th.randn(3, 2, 6), th.zeros(3, 2, 1), p.initial_state(2))[2]
    assert not th.allclose(q[..., 0, :], q[..., 1, :])
    q[..., 0, :].sum().backward()
    g = p.q_net.member_grad_norms()
    assert g[0] > 0 and g[1] == 0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=2, max_size=2), st.floats(-2, 1), st.integers(1, 3))
def test_log_prob_and_entropy_match_torch(mean, log_std, dim):
    act = spaces.Box(-1.0, 1.0, (dim,), np.float32)
    p = RecurrentQuantilePolicy(OBS, act, lambda _: 1e-3, lstm_hidden_size=8, log_std_init=log_std)
    mu = th.tensor(mean[:1] * dim).reshape(1, dim)
    x = th.randn(5, dim)
    d = th.distributions.Normal(mu, th.exp(p.log_std.detach()))
    assert th.allclose(p._log_prob(mu, x), d.log_prob(x).sum(-1), atol=1e-4)
    assert math.isclose(float(p.entropy()), float(d.entropy().sum()), rel_tol=1e-5, abs_tol=1e-5)


def test_twin_mlp_members_match_their_own_mlp():
    tw = TwinMLP([5, 7, 3], n=2)
    x = th.randn(4, 5)
    y = tw(x)
    for k in range(2):
        ref = th.tanh(x @ tw.weights[0][k] + tw.biases[0][k]) @ tw.weights[1][k] + tw.biases[1][k]
        assert th.allclose(y[:, k], ref, atol=1e-6)


def test_alias_registered_in_distributional_ppo():
    from tradingrl_nb.ppo import DistributionalPPO
    assert DistributionalPPO.policy_aliases["MlpLstmPolicy"] is RecurrentQuantilePolicy is MlpLstmPolicy


def test_fused_rollout_reuses_its_stacked_states():
    "After one fused step the states are views of one [2, 2, layers, B, H] tensor, which the next step reads directly."
    for layers in (1, 2):
        p = make(n_lstm_layers=layers)
        with th.no_grad():
            _, _, _, s1 = p(th.randn(3, 6), p.initial_state(3))
            base = s1.pi[0]._base
            assert base is not None and base.dim() == 5 and all(t._base is base for t in (*s1.pi, *s1.vf))

