"""The one atomic writer and the integrity of both checkpoint formats (tradingrl_nb.checkpoint, issue 12 item 9):
ordinary file mode under the umask, the folder fsynced after the rename, and a checksum of the tensor data and of the
metadata verified on load, so that flipped bytes, edited hyperparameters, absurdly nested or truncated headers all
raise a `ValueError` that names the file."""
import json
import math
import os
import stat

import numpy as np
import safetensors.torch
import pytest
import torch as th
from hypothesis import HealthCheck, given, settings, strategies as st

import tradingrl_nb.checkpoint as ck
from tradingrl_nb.checkpoint import load_checkpoint, save_checkpoint
from tradingrl_nb.fileio import atomic_write_bytes, write_json
from tradingrl_nb.data import synthetic_market
from tradingrl_nb.vec_env import TradingVecEnv
from tradingrl_nb.ppo import DistributionalPPO

FORMATS = ("tree", "ppo")


def _model(lr=3e-4):
    env = TradingVecEnv(synthetic_market(400, seed=1), n_envs=2, seed=0, window=1, episode_length=40)
    return DistributionalPPO("MlpLstmPolicy", env, learning_rate=lr, n_steps=16, batch_size=32, n_epochs=1,
                             sequence_length=8, seed=0, device="cpu", policy_kwargs=dict(lstm_hidden_size=8))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    m = _model()
    tree = save_checkpoint(d / "tree.safetensors", m.get_parameters(), {"hyperparams": {"lr": 3e-4}, "step": 7})
    m.save(d / "ppo")
    return {"tree": tree, "ppo": d / "ppo.safetensors", "model": m}


def load(fmt, path):
    return load_checkpoint(path) if fmt == "tree" else DistributionalPPO.load(path)


def split(raw: bytes):
    n = int.from_bytes(raw[:8], "little")
    return n, json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + data


def rewrite_meta(src, dst, edit, rehash=False):
    "Copy `src` to `dst` with its metadata edited; `rehash`: recompute the metadata checksum (a deliberate forgery)."
    _, header, data = split(src.read_bytes())
    edit(header["__metadata__"])
    if rehash: header["__metadata__"][ck._META_SUM] = ck._meta_digest(header["__metadata__"])
    dst.write_bytes(join(header, data))
    return dst


# --- the writer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_get_the_ordinary_mode_under_the_umask(tmp_path, files, umask):
    old = os.umask(umask)
    try:
        paths = [atomic_write_bytes(tmp_path / "raw.bin", b"x"), write_json(tmp_path / "p.json", {"a": 1}),
                 save_checkpoint(tmp_path / "t.safetensors", {"w": th.ones(2)})]
        ck.write_checkpoint(tmp_path / "m", {"params": {}})
        paths.append(tmp_path / "m.safetensors")
        files["model"].save(tmp_path / "model")
        paths.append(tmp_path / "model.safetensors")
    finally:
        os.umask(old)
    for p in paths: assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p


def test_folder_is_fsynced_after_the_rename(tmp_path, files, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    def fsync(fd):
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)
    def replace(a, b):
        events.append("replace")
        real_replace(a, b)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    for write in (lambda: save_checkpoint(tmp_path / "t.safetensors", {"w": th.ones(2)}),
                  lambda: files["model"].save(tmp_path / "m")):
        events.clear()
        write()
        assert events == ["fsync-file", "replace", "fsync-dir"], events


def test_no_other_writer_in_the_checkpoint_paths():
    "Every checkpoint goes through `write_checkpoint` and so through `atomic_write_bytes` (one writer for the package)."
    import inspect
    for f, call in ((ck.save_checkpoint, "write_checkpoint("), (ck.write_checkpoint, "atomic_write_bytes(")):
        src = inspect.getsource(f)
        assert call in src and "mkstemp" not in src and "open(" not in src, f.__name__


# --- integrity ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_roundtrip_still_exact(files, fmt):
    if fmt == "tree":
        params, meta = load_checkpoint(files["tree"])
        assert meta == {"hyperparams": {"lr": 3e-4}, "step": 7}
        for k, v in files["model"].policy.state_dict().items(): assert th.equal(params["policy"][k], v), k
    else:
        m = DistributionalPPO.load(files["ppo"])
        assert m.learning_rate == 3e-4
        for (k, a), b in zip(files["model"].policy.state_dict().items(), m.policy.state_dict().values()):
            assert th.equal(a, b), k


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flipped_tensor_bytes_are_detected(files, tmp_path, fmt, seed):
    raw = bytearray(files[fmt].read_bytes())
    n = int.from_bytes(raw[:8], "little")
    rng = np.random.default_rng(seed)
    for i in rng.choice(np.arange(8 + n, len(raw)), size=50, replace=False):
        raw[i] ^= int(rng.integers(1, 256))
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"flipped\.safetensors.*tensor data"):
        load(fmt, bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_edited_hyperparameters_are_detected(files, tmp_path, fmt):
    old = '["lr", 0.0003]' if fmt == "tree" else '["learning_rate", 0.0003]'
    def edit(meta):
        assert old in meta["content"]
        meta["content"] = meta["content"].replace(old, old.replace("0.0003", "0.9"))
    bad = rewrite_meta(files[fmt], tmp_path / "edited.safetensors", edit)
    with pytest.raises(ValueError, match=r"edited\.safetensors.*metadata"):
        load(fmt, bad)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", ["header", "metadata", "metadata-rehashed"])
def test_deeply_nested_header_is_a_value_error(files, tmp_path, fmt, where):
    deep = "[" * 200_000 + "]" * 200_000
    bad = tmp_path / "deep.safetensors"
    if where == "header":
        bad.write_bytes(len(deep).to_bytes(8, "little") + deep.encode())
    else:
        rewrite_meta(files[fmt], bad, lambda m: m.__setitem__("content", deep), rehash=where.endswith("rehashed"))
    with pytest.raises(ValueError, match=r"deep\.safetensors"):
        load(fmt, bad)


def _corrupt(case, raw):
    n, header, data = split(raw)
    meta = header["__metadata__"]
    first = next(k for k in header if k != "__metadata__")
    if case == "cut-in-length": return raw[:5]
    if case == "cut-in-header": return raw[:8 + n // 2]
    if case == "cut-in-data": return raw[:8 + n + len(data) // 2]
    if case == "length-too-large": return (n + 10 ** 6).to_bytes(8, "little") + raw[8:]
    if case == "not-utf8": return raw[:8] + b"\xff\xfe" + raw[10:]
    if case == "header-is-a-list": return join([1, 2], data)
    if case == "no-metadata": return join({k: v for k, v in header.items() if k != "__metadata__"}, data)
    if case == "metadata-not-a-dict": return join({**header, "__metadata__": [1]}, data)
    if case == "metadata-keys-missing":
        return join({**header, "__metadata__": {"format": meta["format"], **({"version": meta["version"]} if "version" in meta else {})}}, data)
    if case == "tensor-without-dtype":
        return join({**header, first: {k: v for k, v in header[first].items() if k != "dtype"}}, data)
    if case == "tensor-bad-offsets":
        return join({**header, first: {**header[first], "data_offsets": [0, len(data) + 4096]}}, data)
    if case == "tensor-entry-not-a-dict": return join({**header, first: "x"}, data)
    if case == "checksum-not-hex": return join({**header, "__metadata__": {**meta, ck._DATA_SUM: "zz"}}, data)
    raise AssertionError(case)


CORRUPTIONS = ["cut-in-length", "cut-in-header", "cut-in-data", "length-too-large", "not-utf8", "header-is-a-list",
               "no-metadata", "metadata-not-a-dict", "metadata-keys-missing", "tensor-without-dtype", "tensor-bad-offsets",
               "tensor-entry-not-a-dict", "checksum-not-hex"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", CORRUPTIONS)
def test_truncated_or_corrupted_headers_are_value_errors(files, tmp_path, fmt, case):
    bad = tmp_path / f"bad-{case}.safetensors"
    bad.write_bytes(_corrupt(case, files[fmt].read_bytes()))
    with pytest.raises(ValueError, match=rf"bad-{case}\.safetensors"):
        load(fmt, bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_forged_but_well_hashed_content_without_required_parts_is_a_value_error(files, tmp_path, fmt):
    "A checksum is no signature: a rehashed file that lacks what a loader needs must still be a ValueError, not a KeyError."
    bad = rewrite_meta(files[fmt], tmp_path / "forged.safetensors", lambda m: m.__setitem__("content", '{"__dict__": []}' if fmt == "ppo" else '{"__tensor__": "nope"}'),
                       rehash=True)
    with pytest.raises(ValueError, match=r"forged\.safetensors"):
        load(fmt, bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_without_checksums_are_refused_with_a_clear_message(files, tmp_path, fmt):
    "Files written before checksums existed are refused (they cannot be verified); the message says so."
    def strip(m):
        for k in (ck._DATA_SUM, ck._META_SUM): m.pop(k, None)
        if fmt == "ppo": m["version"] = "1"
    bad = rewrite_meta(files[fmt], tmp_path / "old.safetensors", strip)
    with pytest.raises(ValueError, match=r"old\.safetensors.*checksum"):
        load(fmt, bad)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=8))
def test_any_byte_flip_loads_identically_or_is_a_value_error(files, fmt, flips, tmp_path_factory):
    "Property: whatever bytes of the file are flipped, loading gives the original content or a ValueError naming the file."
    raw = bytearray(files[fmt].read_bytes())
    for pos, x in flips: raw[int(pos * len(raw))] ^= x
    bad = tmp_path_factory.mktemp("flip") / "flip.safetensors"
    bad.write_bytes(bytes(raw))
    try:
        got = load_checkpoint(bad) if fmt == "tree" else ck.read_checkpoint(bad)
    except ValueError as e:
        assert "flip.safetensors" in str(e)
        return
    want = load_checkpoint(files[fmt]) if fmt == "tree" else ck.read_checkpoint(files[fmt])
    assert json.dumps(ck._encode(got, {})) == json.dumps(ck._encode(want, {}))
    ta, tb = {}, {}
    ck._encode(got, ta)
    ck._encode(want, tb)
    assert all(th.equal(ta[k], tb[k]) for k in tb)


def test_checksum_covers_names_dtypes_and_shapes():
    "Two tensor maps with the same bytes but different names, dtypes or shapes have different digests."
    a = {"w": th.arange(4, dtype=th.int32)}
    digests = {ck._tensor_digest(t) for t in (a, {"v": a["w"]}, {"w": a["w"].view(th.float32)}, {"w": a["w"].view(2, 2)})}
    assert len(digests) == 4
    assert ck._tensor_digest(a) == ck._tensor_digest({"w": th.arange(4, dtype=th.int32).clone()})


# --- one codec ----------------------------------------------------------------------------------
def test_state_trees_and_model_checkpoints_share_one_codec_and_one_nan_rule(tmp_path, files):
    "Both kinds carry one strict-JSON skeleton under 'content' (NaN and infinity as tagged nodes) and decode alike."
    def no_constants(c): raise AssertionError(f"a bare {c} in the JSON")
    tree = save_checkpoint(tmp_path / "t.safetensors", {"w": th.ones(2), "nan": float("nan")}, {"inf": float("inf")})
    ck.write_checkpoint(tmp_path / "m", {"params": {"x": float("-inf")}})
    for path in (tree, tmp_path / "m.safetensors", files["ppo"]):
        _, header, _ = split(path.read_bytes())
        meta = header["__metadata__"]
        assert meta["format"] == ck.CHECKPOINT_FORMAT and meta["version"] == ck.CHECKPOINT_VERSION
        json.loads(meta["content"], parse_constant=no_constants)
    state, meta = load_checkpoint(tree)
    assert math.isnan(state["nan"]) and meta == {"inf": math.inf} and th.equal(state["w"], th.ones(2))
    assert ck.read_checkpoint(tmp_path / "m", required=("params",))["params"]["x"] == -math.inf
    assert ck.read_checkpoint(tree, required=("state", "meta"))["meta"] == {"inf": math.inf}


def test_a_state_tree_of_the_older_format_is_refused_by_name(tmp_path):
    "A file of the retired 'tradingrl_nb.pbt/1' format is refused with a message that says what it is."
    t = {"w": th.ones(2)}
    raw = safetensors.torch.save(t, metadata=ck._seal(t, {"format": "tradingrl_nb.pbt/1", "tree": "{}", "meta": "{}"}))
    (tmp_path / "old.safetensors").write_bytes(raw)
    with pytest.raises(ValueError, match=r"old\.safetensors.*older format 'tradingrl_nb\.pbt/1'"):
        load_checkpoint(tmp_path / "old.safetensors")


def test_our_classes_register_themselves_where_they_are_defined(tmp_path):
    """checkpoint imports none of our modules but fileio: the optimizers and the policy register themselves where they
    are defined (one owner for what may be named in a file), and a file naming each, or AdaptiveUPGD's former name, loads."""
    import ast
    from pathlib import Path
    tree = ast.parse(Path(ck.__file__).read_text())
    ours = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("tradingrl_nb"))}
    assert ours == {"fileio"}, ours
    from tradingrl_nb.adaptive_upgd import AdaptiveUPGD
    from tradingrl_nb.policy import RecurrentQuantilePolicy
    from tradingrl_nb.upgd import UPGD
    classes = {"a": AdaptiveUPGD, "u": UPGD, "p": RecurrentQuantilePolicy}
    ck.write_checkpoint(tmp_path / "c.safetensors", classes)
    assert ck.read_checkpoint(tmp_path / "c.safetensors", required=("a", "u", "p")) == classes
