"""LSTM state reset (seed 001 issue #3, DESIGN correction 5): `reset_lstm_states_to_initial()`, automatic reset after
`set_parameters` and `load`, and per-env resets at episode boundaries during rollouts."""
import numpy as np
import pytest
import torch as th
from sb3_contrib.common.recurrent.type_aliases import RNNStates

from tradingrl_nb.vec_env import TradingVecEnv
from tradingrl_nb.ppo import DistributionalPPO
from tradingrl_nb.testing import tiny_env, tiny_market, tiny_ppo

DF = tiny_market()


def make(seed=0, n_envs=4, **kw):
    return tiny_ppo(tiny_env(n_envs, seed), **{"n_epochs": 1, "seed": seed, **kw})


def rollout(model):
    "One rollout (no training): the buffer then holds what the current weights produced."
    _, cb = model._setup_learn(model.n_steps * model.n_envs, None)
    assert model.collect_rollouts(model.env, cb, model.rollout_buffer, model.n_steps)


def random_states(model, n):
    s = model.policy.initial_state(n)
    return RNNStates(tuple(th.randn_like(x) for x in s.pi), tuple(th.randn_like(x) for x in s.vf))


def is_zero(states):
    return all(float(x.abs().sum()) == 0.0 for x in (*states.pi, *states.vf))


def test_reset_lstm_states_to_initial_exists():
    m = make()
    assert callable(m.reset_lstm_states_to_initial)


def test_lstm_states_reset_to_zero():
    m = make()
    m.learn(32 * 4)
    assert not is_zero(m.rollout_state.lstm)          # a rollout leaves non-zero states behind
    shape = m.rollout_state.lstm.pi[0].shape
    m.reset_lstm_states_to_initial()
    assert is_zero(m.rollout_state.lstm) and m.rollout_state.lstm.pi[0].shape == shape


def _first_step_quantiles(model, obs):
    "What the next rollout step would predict from the model's carried-over LSTM states."
    with th.no_grad():
        return model.policy(th.as_tensor(obs), model.rollout_state.lstm, deterministic=True)[2]


def test_prediction_stability_after_weight_load_with_reset():
    "After a weight load the next prediction equals the loaded policy's fresh prediction (state from the new weights)."
    a, b = make(seed=0), make(seed=1)
    a.learn(32 * 4)
    b.learn(32 * 4)
    obs = np.random.default_rng(0).normal(size=(4, a.observation_space.shape[0])).astype(np.float32)
    a.set_parameters(b.get_parameters())              # resets automatically
    with th.no_grad():
        fresh = b.policy(th.as_tensor(obs), b.policy.initial_state(4), deterministic=True)[2]
    assert th.allclose(_first_step_quantiles(a, obs), fresh, atol=1e-6)


def test_prediction_instability_without_reset():
    "The problem the reset fixes: stale states computed by the old weights change what the new weights predict."
    a, b = make(seed=0), make(seed=1)
    a.learn(32 * 4)
    b.learn(32 * 4)
    stale = a.rollout_state.lstm
    obs = np.random.default_rng(0).normal(size=(4, a.observation_space.shape[0])).astype(np.float32)
    a.policy.load_state_dict(b.policy.state_dict())   # a bare weight copy does not reset
    assert a.rollout_state.lstm is stale
    with th.no_grad():
        fresh = b.policy(th.as_tensor(obs), b.policy.initial_state(4), deterministic=True)[2]
    assert not th.allclose(_first_step_quantiles(a, obs), fresh, atol=1e-3)
    a.reset_lstm_states_to_initial()
    assert th.allclose(_first_step_quantiles(a, obs), fresh, atol=1e-6)


def test_lstm_states_remain_none_if_none():
    m = make()
    m.rollout_state.lstm = None
    m.reset_lstm_states_to_initial()
    assert m.rollout_state.lstm is None


@pytest.mark.parametrize("n", [1, 3, 7])
def test_reset_works_with_different_batch_sizes(n):
    m = make()
    m.rollout_state.lstm = random_states(m, n)
    m.reset_lstm_states_to_initial()
    assert is_zero(m.rollout_state.lstm) and m.rollout_state.lstm.vf[1].shape == (1, n, 16)


def test_multiple_resets_are_idempotent():
    m = make()
    m.rollout_state.lstm = random_states(m, 4)
    m.reset_lstm_states_to_initial()
    once = [x.clone() for x in (*m.rollout_state.lstm.pi, *m.rollout_state.lstm.vf)]
    m.reset_lstm_states_to_initial()
    m.reset_lstm_states_to_initial()
    assert all(th.equal(x, y) for x, y in zip(once, (*m.rollout_state.lstm.pi, *m.rollout_state.lstm.vf)))


def test_load_resets_states(tmp_path):
    m = make()
    m.learn(32 * 4)
    m.save(tmp_path / "m")
    loaded = DistributionalPPO.load(tmp_path / "m", env=TradingVecEnv(DF, n_envs=4, seed=0, window=1, episode_length=60))
    assert is_zero(loaded.rollout_state.lstm) and loaded.rollout_state.lstm.pi[0].shape[1] == 4


def test_set_parameters_from_file_resets_states(tmp_path):
    m = make()
    m.learn(32 * 4)
    m.save(tmp_path / "m")
    m.rollout_state.lstm = random_states(m, 4)
    m.set_parameters(tmp_path / "m.safetensors")
    assert is_zero(m.rollout_state.lstm)


def test_episode_boundaries_reset_per_env_during_rollouts():
    """Every sequence that starts an episode starts from zero; the rollout's stored log-probabilities are reproduced
    exactly by one LSTM call over the stored sequences (so resets happened where, and only where, episodes start)."""
    m = make(n_steps=64, sequence_length=16)
    m.learn(64 * 4)                                   # train once, so the states carried into the next rollout are not zero
    rollout(m)
    buf = m.rollout_buffer
    assert buf.episode_starts[1:].any(), "the test needs episode boundaries inside the rollout"
    T, L = buf.n_steps, buf.L
    cut = buf.episode_starts.copy()
    cut[::L] = True
    starts_t = np.flatnonzero(cut.T.reshape(-1)) % T
    starts_e = np.flatnonzero(cut.T.reshape(-1)) // T
    ep_start = buf.episode_starts[starts_t, starts_e]
    init = buf.seq_init
    assert float(init[:, :, th.as_tensor(ep_start)].abs().sum()) == 0.0
    assert float(init[:, :, th.as_tensor(~ep_start)].abs().sum()) > 0.0
    mb = buf.gather(np.arange(buf.n_sequences))
    with th.no_grad():
        lp, _, q = m.policy.evaluate_actions(mb["obs"], mb["actions"], mb["states"])
    mask = mb["mask"]
    assert th.allclose(lp[mask], mb["old_log_prob"][mask], atol=1e-4)
    assert th.allclose(q[mask], mb["old_quantiles"][mask], atol=1e-4)
