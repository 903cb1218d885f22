"""DistributionalPPO checkpoints (DESIGN correction 7): safetensors + JSON, no pickle, atomic writes, clear errors on
corrupt or foreign files, and exact resumption."""
import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import safetensors.torch
import torch as th

import tradingrl_nb.checkpoint as ck
from tradingrl_nb.adaptive_upgd import AdaptiveUPGD
from tradingrl_nb.vec_env import TradingVecEnv
from tradingrl_nb.ppo import DistributionalPPO
from tradingrl_nb.testing import tiny_env, tiny_market, tiny_ppo
from tradingrl_nb import fileio

DF = tiny_market()


def env(seed=0):
    return tiny_env(seed=seed)


def make(**kw):
    return tiny_ppo(**kw)


def same_state(a, b) -> bool:
    "Nested state dicts equal: tensors element for element (NaN equal to NaN), the rest by ==."
    if isinstance(a, th.Tensor): return isinstance(b, th.Tensor) and a.shape == b.shape and bool(th.equal(a.nan_to_num(), b.nan_to_num()))
    if isinstance(a, dict): return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    m = make(learning_rate=7e-4, cvar_alpha=0.5, ent_coef=0.01)
    m.learn(32 * 4 * 2)
    path = tmp_path_factory.mktemp("ck") / "model"
    m.save(path)
    return m, path.with_suffix(".safetensors")


def test_roundtrip(saved):
    m, path = saved
    assert path.is_file() and not path.with_suffix("").exists()
    loaded = DistributionalPPO.load(path)
    for (k, a), b in zip(m.policy.state_dict().items(), loaded.policy.state_dict().values()):
        assert th.equal(a, b), k
    assert loaded.learning_rate == 7e-4 and loaded.cvar_alpha == 0.5 and loaded.n_steps == 32
    assert loaded.num_timesteps == m.num_timesteps and loaded.return_scale.snapshot == m.return_scale.snapshot
    assert loaded.policy_kwargs == m.policy_kwargs and loaded.n_envs == 4
    obs = np.random.default_rng(0).normal(size=(4, m.observation_space.shape[0])).astype(np.float32)
    a1, s1 = m.predict(obs, deterministic=True)
    a2, s2 = loaded.predict(obs, deterministic=True)
    assert np.allclose(a1, a2) and np.allclose(s1[0], s2[0])
    # optimizer and VGS state came back too
    o1, o2 = m.policy.optimizer.state_dict(), loaded.policy.optimizer.state_dict()
    assert o1["param_groups"][0]["lr"] == o2["param_groups"][0]["lr"]
    assert same_state(m.vgs.state_dict(), loaded.vgs.state_dict())


def test_file_is_safetensors_without_pickle(saved):
    _, path = saved
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"]["format"] == ck.CHECKPOINT_FORMAT
    json.loads(header["__metadata__"]["content"])       # the rest is plain JSON
    assert b"\x80\x04" not in raw[:8 + n] and not zipfile.is_zipfile(path)
    safetensors.torch.load_file(path)                   # readable by any safetensors reader


def test_custom_class_must_be_registered(tmp_path):
    class MyAct(th.nn.Tanh): pass
    m = make(policy_kwargs=dict(lstm_hidden_size=16, activation_fn=MyAct))
    with pytest.raises(TypeError, match="register_checkpoint_class"):
        m.save(tmp_path / "m")
    ck.register_checkpoint_class(MyAct)
    m.save(tmp_path / "m")
    assert DistributionalPPO.load(tmp_path / "m").policy.activation_fn is MyAct


class Boom:
    "Unpickling this runs code; load must never do that."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_rejected_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps(Boom(marker)))
    with pytest.raises(ValueError, match="not a DistributionalPPO checkpoint"):
        DistributionalPPO.load(bad)
    zpath = tmp_path / "evil.zip"                        # an SB3-style zip whose data is a pickle
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("data", pickle.dumps(Boom(marker)))
        z.writestr("policy.pth", pickle.dumps(Boom(marker)))
    with pytest.raises(ValueError, match="not a DistributionalPPO checkpoint"):
        DistributionalPPO.load(zpath)
    with pytest.raises(ValueError):
        make().set_parameters(zpath)
    assert not marker.exists()


def _rewrite(path, out, edit, rehash=False):
    "Copy a checkpoint with its metadata edited; `rehash`: recompute its checksums too (a deliberate forgery)."
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    tensors = safetensors.torch.load(raw)
    meta = header["__metadata__"]
    edit(meta)
    if rehash: meta = ck._seal(tensors, {k: v for k, v in meta.items() if k not in (ck._DATA_SUM, ck._META_SUM)})
    out.write_bytes(safetensors.torch.save(tensors, metadata=meta))
    return out


def test_crafted_metadata_cannot_name_arbitrary_code(saved, tmp_path):
    _, path = saved
    def evil(meta):
        meta["content"] = meta["content"].replace("tradingrl_nb.policy.RecurrentQuantilePolicy", "os.system", 1)
    bad = _rewrite(path, tmp_path / "evil.safetensors", evil)
    with pytest.raises(ValueError, match="does not match its checksum"):      # an edit alone fails the checksum
        DistributionalPPO.load(bad)
    bad = _rewrite(path, tmp_path / "evil.safetensors", evil, rehash=True)   # a forger who recomputes it
    assert "os.system" in bad.read_bytes().decode("latin-1")
    with pytest.raises(ValueError, match="not registered"):                  # still meets the class registry
        DistributionalPPO.load(bad)


def test_a_checkpoint_naming_adaptive_upgd_in_its_former_module_loads(tmp_path):
    """AdaptiveUPGD was tradingrl_nb.upgd.AdaptiveUPGD until it moved to tradingrl_nb.adaptive_upgd (03c): a model file
    that names it there (as every file written before the move that set it explicitly does) still loads, to the same
    optimizer and predictions, and a file written now names where it lives."""
    m = make(policy_kwargs=dict(optimizer_class=AdaptiveUPGD, optimizer_kwargs=dict(sigma=0.002)))
    m.learn(32 * 4)
    new = tmp_path / "new.safetensors"
    m.save(new)
    assert b"tradingrl_nb.adaptive_upgd.AdaptiveUPGD" in new.read_bytes()
    def former(meta):
        meta["content"] = meta["content"].replace("tradingrl_nb.adaptive_upgd.AdaptiveUPGD", "tradingrl_nb.upgd.AdaptiveUPGD")
    old = _rewrite(new, tmp_path / "old.safetensors", former, rehash=True)
    assert b"tradingrl_nb.upgd.AdaptiveUPGD" in old.read_bytes() and b"adaptive_upgd" not in old.read_bytes()
    loaded = DistributionalPPO.load(old)
    assert loaded.policy_kwargs["optimizer_class"] is AdaptiveUPGD and type(loaded.policy.optimizer) is AdaptiveUPGD
    assert loaded.policy.optimizer.param_groups[0]["sigma"] == 0.002
    assert same_state(loaded.policy.optimizer.state_dict(), m.policy.optimizer.state_dict())
    obs = np.random.default_rng(1).normal(size=(4, m.observation_space.shape[0])).astype(np.float32)
    assert np.array_equal(m.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    loaded.save(tmp_path / "again")
    again = (tmp_path / "again.safetensors").read_bytes()
    assert b"tradingrl_nb.adaptive_upgd.AdaptiveUPGD" in again and b"tradingrl_nb.upgd.AdaptiveUPGD" not in again


@pytest.mark.parametrize("case", ["empty", "random", "truncated", "foreign", "badjson", "version"])
def test_corrupt_or_foreign_files(saved, tmp_path, case):
    _, path = saved
    bad = tmp_path / "bad.safetensors"
    raw = path.read_bytes()
    if case == "empty": bad.write_bytes(b"")
    elif case == "random": bad.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "truncated": bad.write_bytes(raw[: len(raw) // 2])
    elif case == "foreign": safetensors.torch.save_file({"w": th.zeros(3)}, bad, metadata={"format": "pt"})
    elif case == "badjson": _rewrite(path, bad, lambda m: m.__setitem__("content", "{not json"))
    elif case == "version": _rewrite(path, bad, lambda m: m.__setitem__("version", "99"))
    with pytest.raises(ValueError, match="version" if case == "version" else "not a DistributionalPPO checkpoint"):
        DistributionalPPO.load(bad)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        DistributionalPPO.load(tmp_path / "nothing")


def test_write_is_atomic(saved, tmp_path, monkeypatch):
    m, path = saved
    target = tmp_path / "m.safetensors"
    m.save(target)
    good = target.read_bytes()
    def fail(*a, **k): raise OSError("disk full")
    monkeypatch.setattr(fileio.os, "replace", fail)
    m.learn(32 * 4)
    with pytest.raises(OSError, match="disk full"):
        m.save(target)
    assert target.read_bytes() == good                   # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]   # and no temporary file is left


def test_save_to_buffer():
    m = make()
    buf = io.BytesIO()
    m.save(buf)
    buf.seek(0)
    assert DistributionalPPO.load(buf).num_timesteps == m.num_timesteps


def test_load_checks_env_spaces(saved):
    _, path = saved
    other = TradingVecEnv(DF, n_envs=4, seed=0, window=2, episode_length=60)
    with pytest.raises(ValueError, match="differ from the checkpoint"):
        DistributionalPPO.load(path, env=other)


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    "Uninterrupted training and save -> load -> continue give identical parameters (CPU, fixed seed)."
    n1, n2 = 32 * 4 * 2, 32 * 4 * 3
    a = make(seed=5, critic_adjustment=True)
    a.learn(n1)
    a.save(tmp_path / "ck")
    e = env(seed=11)
    e.seed(5)
    a.set_env(e)                                          # continue on a fresh env, as the resumed run will
    a.learn(n2, reset_num_timesteps=False)
    b = DistributionalPPO.load(tmp_path / "ck", env=env(seed=11))
    b.learn(n2, reset_num_timesteps=False)
    assert a.num_timesteps == b.num_timesteps == n1 + n2
    for (k, x), y in zip(a.policy.state_dict().items(), b.policy.state_dict().values()):
        assert th.equal(x, y), k
    assert a.return_scale.snapshot == b.return_scale.snapshot


def _drop(path_of_keys):
    "An edit of the checkpoint's JSON content (dicts encoded as `{'__dict__': [[key, value], ...]}`) deleting one nested key."
    def edit(meta):
        content = json.loads(meta["content"])
        node = content
        for k in path_of_keys[:-1]: node = next(v for kk, v in node["__dict__"] if kk == k)
        node["__dict__"] = [[kk, v] for kk, v in node["__dict__"] if kk != path_of_keys[-1]]
        meta["content"] = json.dumps(content)
    return edit


@pytest.mark.parametrize("keys", [("state", "ent_plateau"), ("state", "np_rng"), ("state", "nonfinite"), ("n_envs",),
                                  ("state",), ("params",)])
def test_forged_checkpoint_missing_a_key_is_a_value_error_naming_the_file(saved, tmp_path, keys):
    "A re-hashed checkpoint that lacks a key the loader needs is a ValueError naming the file, never a KeyError."
    _, path = saved
    bad = _rewrite(path, tmp_path / "forged.safetensors", _drop(keys), rehash=True)
    with pytest.raises(ValueError, match="forged.safetensors"):
        DistributionalPPO.load(bad)


# ---- one owner for each hyperparameter (set_hparams, hparams, clock) -----------------------------------------------
def test_every_constructor_argument_round_trips_through_a_checkpoint(tmp_path):
    "What `save` stores is read from `__init__`'s signature: every argument comes back as it was set."
    m = make(learning_rate=7e-4, gamma=0.97, gae_lambda=0.9, clip_range=0.15, clip_range_vf=0.5, ent_coef=0.02,
             ent_coef_final=0.005, vf_coef=0.7, max_grad_norm=0.4, target_kl=0.05, huber_kappa=0.5, cvar_alpha=0.3,
             vgs_mode="gradient", return_snapshot="before", schedule_horizon=5000, stats_window_size=7,
             vgs_kwargs=dict(alpha=0.4), ent_plateau_patience=3)
    m.save(tmp_path / "m")
    back = DistributionalPPO.load(tmp_path / "m.safetensors", device="cpu")
    names = ck.hparam_names(DistributionalPPO)
    assert {"learning_rate", "return_snapshot", "vgs_mode", "stats_window_size"} <= set(names)
    assert not {"policy", "env", "device", "tensorboard_log", "_init_setup_model"} & set(names)
    assert back.hparams() == m.hparams()
    assert back.hparams()["vgs_kwargs"]["alpha"] == 0.4 and back.hparams()["schedule_horizon"] == 5000


def test_set_hparams_writes_every_copy_and_a_checkpoint_keeps_them(tmp_path):
    m = make(vgs_kwargs=dict(alpha=1.0), policy_kwargs=dict(lstm_hidden_size=16, optimizer_kwargs=dict(sigma=1e-3)))
    m.learn(32 * 4)
    m.set_hparams(learning_rate=1e-4, clip_range=0.1, ent_coef=0.02, vgs_alpha=0.3, upgd_sigma=2e-3, gamma=0.95,
                  gae_lambda=0.8, cvar_alpha=0.5, vf_coef=0.25, max_grad_norm=0.3)
    g = m.policy.optimizer.param_groups
    assert m.learning_rate == 1e-4 and m.lr_schedule(0.5) == 1e-4 and all(x["lr"] == 1e-4 for x in g)
    assert m._clip_schedule(0.5) == 0.1 and m.clip_range == 0.1 and m.ent_coef == 0.02
    assert m.vgs.alpha == 0.3 and m.vgs_kwargs["alpha"] == 0.3
    assert all(x["sigma"] == 2e-3 for x in g) and m.policy.optimizer_kwargs["sigma"] == 2e-3
    assert m.policy_kwargs["optimizer_kwargs"]["sigma"] == 2e-3
    assert (m.gamma, m.gae_lambda, m.cvar_alpha, m.vf_coef, m.max_grad_norm) == (0.95, 0.8, 0.5, 0.25, 0.3)
    m.learn(32 * 4, reset_num_timesteps=False)                  # train() applies them, and does not undo any
    assert all(x["lr"] == 1e-4 and x["sigma"] == 2e-3 for x in m.policy.optimizer.param_groups) and m.vgs.alpha == 0.3
    m.save(tmp_path / "m")
    back = DistributionalPPO.load(tmp_path / "m.safetensors", device="cpu")
    h = back.hparams()
    assert (h["learning_rate"], h["clip_range"], h["gamma"], h["vgs_kwargs"]["alpha"]) == (1e-4, 0.1, 0.95, 0.3)
    assert h["policy_kwargs"]["optimizer_kwargs"]["sigma"] == 2e-3 and back.vgs.alpha == 0.3
    assert all(x["lr"] == 1e-4 and x["sigma"] == 2e-3 for x in back.policy.optimizer.param_groups)


@pytest.mark.parametrize("bad", [dict(learning_rate=1e-4, cvar_alpha=1.5), dict(gamma=1.01), dict(clip_range=0.0),
                                 dict(vgs_alpha=float("nan")), dict(n_steps=64), dict(ent_coef="much")])
def test_set_hparams_refuses_as_a_whole(bad):
    "One bad value (or a structural argument such as n_steps) refuses the call, and nothing changes."
    m = make()
    before = (m.learning_rate, m.gamma, m.clip_range, m.vgs.alpha, m.n_steps, m.ent_coef, m.policy.optimizer.param_groups[0]["lr"])
    with pytest.raises(ValueError, match="|".join(bad)): m.set_hparams(**bad)
    assert (m.learning_rate, m.gamma, m.clip_range, m.vgs.alpha, m.n_steps, m.ent_coef, m.policy.optimizer.param_groups[0]["lr"]) == before


def test_set_hparams_accepts_schedules_and_floors_the_entropy():
    m = make(ent_coef=0.01, ent_coef_min=0.005)
    m.set_hparams(learning_rate=lambda p: 1e-3 * p, ent_coef=0.001)
    assert m.lr_schedule(0.5) == pytest.approx(5e-4) and m.ent_coef == 0.005
    with pytest.raises(ValueError, match="gamma"): m.set_hparams(gamma=lambda p: 0.9)   # only lr and clip range take schedules


def test_clock_round_trips_and_sets_the_scheduled_rate():
    m = make(learning_rate=lambda p: 1e-3 * p)
    m.learn(32 * 4)
    c = m.clock()
    other = make(learning_rate=lambda p: 1e-3 * p)
    other.set_clock(c)
    assert other.clock() == c
    assert other.policy.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * c["progress_remaining"])


def test_return_scale_and_entropy_plateau_are_components_the_model_owns(tmp_path):
    """The return normalization and the entropy plateau keep their state in components with state_dict /
    load_state_dict; the checkpoint stores exactly what they give and a loaded model's components hold it again."""
    from tradingrl_nb.ppo import ReturnScale, EntropyPlateau
    from tradingrl_nb.testing import tiny_ppo
    m = tiny_ppo(ent_coef=0.01, ent_plateau_patience=1)
    m.learn(256)
    assert isinstance(m.return_scale, ReturnScale) and isinstance(m.entropy_plateau, EntropyPlateau)
    assert m.return_scale.snapshot != (0.0, 1.0) and m.return_scale.rms.count > 1          # it trained
    sd = m.return_scale.state_dict()
    assert all(th.equal(a, b) for a, b in zip(m.get_parameters()["return_normalizer"].values(), sd.values()))
    m.save(tmp_path / "m")
    b = DistributionalPPO.load(tmp_path / "m", device="cpu")
    assert all(th.equal(x, y) for x, y in zip(b.return_scale.state_dict().values(), sd.values()))
    assert b.entropy_plateau.state_dict() == m.entropy_plateau.state_dict()
    fresh = ReturnScale(2)
    fresh.load_state_dict(sd)
    assert fresh.snapshot == m.return_scale.snapshot and fresh.rms.count == m.return_scale.rms.count
