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
import tradingrl_nb.ppo as ppo_mod
from tradingrl_nb.data import synthetic_market
from tradingrl_nb.env import TradingVecEnv
from tradingrl_nb.ppo import DistributionalPPO

DF = synthetic_market(1500, seed=3)


def env(seed=0):
    return TradingVecEnv(DF, n_envs=4, seed=seed, window=1, episode_length=60)


def make(**kw):
    kw = dict(dict(n_steps=32, batch_size=64, n_epochs=2, sequence_length=16, seed=0, device="cpu",
                   policy_kwargs=dict(lstm_hidden_size=16)), **kw)
    return DistributionalPPO("MlpLstmPolicy", env(), **kw)


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
    assert loaded.num_timesteps == m.num_timesteps and loaded._ret_snapshot == m._ret_snapshot
    assert loaded.policy_kwargs == m.policy_kwargs and loaded.n_envs == 4
    obs = np.random.default_rng(0).normal(size=(4, m.observation_space.shape[0])).astype(np.float32)
    a1, s1 = m.predict(obs, deterministic=True)
    a2, s2 = loaded.predict(obs, deterministic=True)
    assert np.allclose(a1, a2) and np.allclose(s1[0], s2[0])
    # optimizer and VGS state came back too
    o1, o2 = m.policy.optimizer.state_dict(), loaded.policy.optimizer.state_dict()
    assert o1["param_groups"][0]["lr"] == o2["param_groups"][0]["lr"]
    assert json.dumps(ppo_mod._encode(m.vgs.state_dict(), {})) == json.dumps(ppo_mod._encode(loaded.vgs.state_dict(), {}))


def test_file_is_safetensors_without_pickle(saved):
    _, path = saved
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"]["format"] == ppo_mod.CHECKPOINT_FORMAT
    json.loads(header["__metadata__"]["content"])       # the rest is plain JSON
    assert b"\x80\x04" not in raw[:8 + n] and not zipfile.is_zipfile(path)
    safetensors.torch.load_file(path)                   # readable by any safetensors reader


def test_custom_class_must_be_registered(tmp_path):
    class MyAct(th.nn.Tanh): pass
    m = make(policy_kwargs=dict(lstm_hidden_size=16, activation_fn=MyAct))
    with pytest.raises(TypeError, match="register_checkpoint_class"):
        m.save(tmp_path / "m")
    ppo_mod.register_checkpoint_class(MyAct)
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
        z.writestr("data", pickle.dumps(Boom(marker))); z.writestr("policy.pth", pickle.dumps(Boom(marker)))
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
    monkeypatch.setattr(ppo_mod.os, "replace", fail)
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
    e = env(seed=11); e.seed(5)
    a.set_env(e)                                          # continue on a fresh env, as the resumed run will
    a.learn(n2, reset_num_timesteps=False)
    b = DistributionalPPO.load(tmp_path / "ck", env=env(seed=11))
    b.learn(n2, reset_num_timesteps=False)
    assert a.num_timesteps == b.num_timesteps == n1 + n2
    for (k, x), y in zip(a.policy.state_dict().items(), b.policy.state_dict().values()):
        assert th.equal(x, y), k
    assert a._ret_snapshot == b._ret_snapshot


def _drop(path_of_keys):
    "An edit of the checkpoint's JSON content (dicts encoded as `{'__dict__': [[key, value], ...]}`) deleting one nested key."
    def edit(meta):
        content = json.loads(meta["content"])
        node = content
        for k in path_of_keys[:-1]: node = next(v for kk, v in node["__dict__"] if kk == k)
        node["__dict__"] = [[kk, v] for kk, v in node["__dict__"] if kk != path_of_keys[-1]]
        meta["content"] = json.dumps(content)
    return edit


@pytest.mark.parametrize("keys", [("state", "ent"), ("state", "np_rng"), ("state", "nonfinite"), ("n_envs",),
                                  ("state",), ("params",)])
def test_forged_checkpoint_missing_a_key_is_a_value_error_naming_the_file(saved, tmp_path, keys):
    "A re-hashed checkpoint that lacks a key the loader needs is a ValueError naming the file, never a KeyError."
    _, path = saved
    bad = _rewrite(path, tmp_path / "forged.safetensors", _drop(keys), rehash=True)
    with pytest.raises(ValueError, match="forged.safetensors"):
        DistributionalPPO.load(bad)
