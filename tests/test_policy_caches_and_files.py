"""The policy's rollout caches after its parameters change (fused Adam, data assignment, vector_to_parameters, in-place edits) and its pickle-free save and load."""

import pickle

import numpy as np
import pytest
import torch as th

from tradingrl_nb.data import synthetic_market
from tradingrl_nb.vec_env import TradingVecEnv
from tradingrl_nb.policy import RecurrentQuantilePolicy
from tradingrl_nb.ppo import DistributionalPPO

from test_policy import make as make_policy   # the same small policy as test_policy.py


def assert_rollout_matches(p, n_obs=None, seed=1):
    """The no-grad rollout step (fused cells, cached std) equals `evaluate_actions` and `predict` to 1e-5."""
    g = th.Generator().manual_seed(seed)
    d = n_obs or p.observation_space.shape[0]
    B, H, L = 3, p.lstm_hidden_size, p.n_lstm_layers
    x = th.randn(B, d, generator=g) * 0.5
    s = type(p.initial_state(B))(tuple(th.randn(L, B, H, generator=g) for _ in range(2)),
                                 tuple(th.randn(L, B, H, generator=g) for _ in range(2)))
    with th.no_grad():
        a, lp, q, _ = p(x, s, deterministic=True)            # the rollout path
        a_st, lp_st, q_st, _ = p(x, s, deterministic=False)  # the stochastic rollout path uses the cached std
        lp_ref, _, q_ref = p.evaluate_actions(x[None], a[None], s)
        lp_st_ref, _, _ = p.evaluate_actions(x[None], a_st[None], s)
    act, _ = p.predict(x.numpy(), state=(s.pi[0].numpy(), s.pi[1].numpy()), deterministic=True)
    assert th.allclose(lp, lp_ref[0], atol=1e-5), float((lp - lp_ref[0]).abs().max())
    assert th.allclose(lp_st, lp_st_ref[0], atol=1e-5), float((lp_st - lp_st_ref[0]).abs().max())
    assert th.allclose(q, q_ref[0], atol=1e-5), float((q - q_ref[0]).abs().max())
    low, high = p.action_space.low, p.action_space.high
    assert np.allclose(np.clip(a.numpy(), low, high), act, atol=1e-5), np.abs(np.clip(a.numpy(), low, high) - act).max()


# ---- item 1: caches of the rollout step -----------------------------------------------------------
def test_rollout_step_after_training_with_fused_adam():
    "Fused Adam updates parameters without moving `_version`: the rollout must still act with the new weights."
    df = synthetic_market(800, seed=3)
    env = TradingVecEnv(df, n_envs=2, seed=0, window=1, episode_length=40)
    m = DistributionalPPO("MlpLstmPolicy", env, n_steps=32, batch_size=32, n_epochs=2, sequence_length=16, seed=0,
                          device="cpu", use_vgs=False, learning_rate=1e-2,
                          policy_kwargs=dict(lstm_hidden_size=16, optimizer_class=th.optim.Adam,
                                             optimizer_kwargs=dict(fused=True)))
    m.learn(64)                                               # rollouts build the caches, train() changes the weights
    assert_rollout_matches(m.policy)


def test_rollout_step_after_data_assignment():
    p = make_policy()
    assert_rollout_matches(p)                                 # builds the caches
    with th.no_grad():
        for q in (*p.lstm_actor.parameters(), *p.lstm_critic.parameters(), p.log_std):
            q.data = q.data + 0.3 * th.randn_like(q)
    assert_rollout_matches(p)


def test_rollout_step_after_vector_to_parameters():
    p = make_policy(n_lstm_layers=2)
    assert_rollout_matches(p)
    v = th.nn.utils.parameters_to_vector(p.parameters())
    th.nn.utils.vector_to_parameters(v + 0.2 * th.randn_like(v), p.parameters())
    assert_rollout_matches(p)


def test_rollout_step_after_in_place_data_edit_and_invalidate():
    "An in-place edit through `.data` is invisible to any counter; `invalidate_caches()` is the documented remedy."
    p = make_policy()
    assert_rollout_matches(p)
    for q in p.lstm_actor.parameters(): q.data.mul_(1.5)
    p.log_std.data.add_(0.4)
    p.invalidate_caches()
    assert_rollout_matches(p)


# ---- item 8: no pickle in the policy's save/load ------------------------------------------------------
class _Marker:
    "Unpickling this creates a marker file: the proof that a loader executed code from the file."
    def __init__(self, path): self.path = path
    def __reduce__(self): return (open, (str(self.path), "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_policy_load_never_unpickles(tmp_path, writer):
    marker, f = tmp_path / "pwned", tmp_path / "policy.pt"
    payload = {"state_dict": {}, "data": _Marker(marker)}
    if writer == "torch": th.save(payload, f)
    else: f.write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match="policy"):
        RecurrentQuantilePolicy.load(f)
    assert not marker.exists()


def test_policy_save_load_roundtrip(tmp_path):
    p = make_policy(n_quantiles=5, net_arch=[8], n_lstm_layers=2, optimizer_class=th.optim.Adam)
    with th.no_grad(): p.log_std.add_(0.3)
    p.save(tmp_path / "pol.safetensors")
    assert b"__metadata__" in (tmp_path / "pol.safetensors").read_bytes()[:200]
    q = RecurrentQuantilePolicy.load(tmp_path / "pol.safetensors")
    assert type(q) is RecurrentQuantilePolicy and q.n_quantiles == 5 and q.n_lstm_layers == 2
    assert q.net_arch == p.net_arch and q.optimizer_class is th.optim.Adam
    for (k, a), (k2, b) in zip(p.state_dict().items(), q.state_dict().items()):
        assert k == k2 and th.equal(a, b)
    assert_rollout_matches(q)


def test_policy_load_rejects_a_model_checkpoint(tmp_path):
    env = TradingVecEnv(synthetic_market(400, seed=1), n_envs=2, seed=0, window=1, episode_length=40)
    m = DistributionalPPO("MlpLstmPolicy", env, n_steps=16, batch_size=32, device="cpu", policy_kwargs=dict(lstm_hidden_size=8))
    m.save(tmp_path / "model")
    with pytest.raises(ValueError, match="DistributionalPPO.load"):
        RecurrentQuantilePolicy.load(tmp_path / "model.safetensors")
