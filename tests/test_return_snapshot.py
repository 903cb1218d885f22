"""The return-scale snapshot's timing (seed 002 #3, DESIGN correction 4): `return_snapshot="after"` (default) takes it
after the rollout, from statistics that include the rollout; `"before"` reproduces the seeds' timing (taken at the start
of the rollout from the earlier rollouts' statistics, not refreshed after it), kept to measure what the fix changes."""
import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback

from tradingrl_nb.ppo import DistributionalPPO
from tradingrl_nb.checkpoint import hparam_names
from tradingrl_nb.testing import tiny_market, tiny_ppo

DF = tiny_market()


def make(**kw):
    return tiny_ppo(lstm_hidden_size=8, **{"n_epochs": 1, **kw})


def stats(m):
    r = m.return_scale.rms
    return float(r.mean), float(max(np.sqrt(r.var), 1e-6))


def snapshots_at_gae(m, rollouts=3):
    "Per rollout: the return statistics at its start, at GAE, and the snapshot GAE and the update use."
    rows, gae = [], m._compute_advantages
    class Start(BaseCallback):
        def _on_rollout_start(self): rows.append({"start": stats(self.model)})
        def _on_step(self): return True
    def spy(*a, **k):
        rows[-1].update(gae=stats(m), snapshot=m.return_scale.snapshot)
        return gae(*a, **k)
    m._compute_advantages = spy
    m.learn(rollouts * m.n_steps * m.n_envs, callback=Start())
    return rows


def test_after_is_the_default_and_uses_post_rollout_statistics():
    m = make()
    assert m.return_snapshot == "after"
    rows = snapshots_at_gae(m)
    for r in rows[1:]:
        assert r["start"] != r["gae"]                              # the rollout moved the statistics
        assert r["snapshot"] == pytest.approx(r["gae"], rel=1e-12)


def test_before_uses_pre_rollout_statistics():
    m = make(return_snapshot="before")
    rows = snapshots_at_gae(m)
    for r in rows[1:]:
        assert r["start"] != r["gae"]
        assert r["snapshot"] == pytest.approx(r["start"], rel=1e-12)
        assert r["snapshot"] != pytest.approx(r["gae"], rel=1e-9)


def test_bad_value_is_a_clear_error():
    with pytest.raises(ValueError, match=r"return_snapshot must be 'after' or 'before', got 'later'"):
        make(return_snapshot="later")


def test_saved_in_checkpoints(tmp_path):
    assert "return_snapshot" in hparam_names(DistributionalPPO)
    m = make(return_snapshot="before")
    m.learn(m.n_steps * m.n_envs)
    m.save(tmp_path / "m")
    assert DistributionalPPO.load(tmp_path / "m.safetensors").return_snapshot == "before"
