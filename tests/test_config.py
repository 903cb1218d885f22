"""Tests of tradingrl_nb.config: settings.ini parsing, TRADINGRL_* overrides, the device rule."""
from pathlib import Path

import pytest
import torch

import tradingrl_nb.config as config
from tradingrl_nb.config import Settings, find_settings_file, load_settings, resolve_device

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("runs_dir", "data_dir", "device", "kernel_name")


@pytest.fixture(autouse=True)
def no_env_overrides(monkeypatch):
    "Tests start without TRADINGRL_* variables, whatever the calling shell set."
    for k in KEYS:
        monkeypatch.delenv(f"TRADINGRL_{k.upper()}", raising=False)


def _ini(folder: Path, body: str, name="settings.ini") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / name
    f.write_text(body, encoding="utf-8")
    return f


def test_the_repository_settings_file():
    s = load_settings(ROOT / "settings.ini")
    assert s == Settings(runs_dir=ROOT / "runs", data_dir=ROOT / "data", device="auto", kernel_name="python3")


def test_parsing_comments_and_relative_paths(tmp_path):
    f = _ini(tmp_path / "proj", """# a header comment
[workbench]
runs_dir = out/runs   # inline comment
data_dir = /abs/data ; another inline comment
device = cpu
kernel_name = my-kernel
""")
    s = load_settings(f)
    assert s.runs_dir == tmp_path / "proj" / "out" / "runs"  # relative to the file's folder, not the cwd
    assert s.data_dir == Path("/abs/data")
    assert (s.device, s.kernel_name) == ("cpu", "my-kernel")


def test_missing_keys_take_defaults(tmp_path):
    s = load_settings(_ini(tmp_path, "[workbench]\ndevice = cpu\n"))
    assert s == Settings(runs_dir=tmp_path / "runs", data_dir=tmp_path / "data", device="cpu", kernel_name="python3")


def test_keys_are_case_insensitive(tmp_path):
    assert load_settings(_ini(tmp_path, "[workbench]\nDEVICE = cpu\n")).device == "cpu"


@pytest.mark.parametrize("body, match", [
    ("[workbench]\ndevise = cpu\n", r"unknown key\(s\) \['devise'\]"),
    ("[workbench]\nruns_dir = r\nbatch_size = 3\nseed = 1\n", r"\['batch_size', 'seed'\]"),
    ("[other]\ndevice = cpu\n", "no \\[workbench\\] section"),
    ("", "no \\[workbench\\] section"),
])
def test_bad_settings_files(tmp_path, body, match):
    f = _ini(tmp_path, body)
    with pytest.raises(ValueError, match=match) as e:
        load_settings(f)
    assert str(f) in str(e.value)


def test_unknown_key_error_lists_the_known_keys(tmp_path):
    with pytest.raises(ValueError) as e:
        load_settings(_ini(tmp_path, "[workbench]\nfoo = 1\n"))
    for k in KEYS:
        assert k in str(e.value)


def test_explicit_file_that_does_not_exist(tmp_path):
    with pytest.raises(ValueError, match="not found") as e:
        load_settings(tmp_path / "nope.ini")
    assert "nope.ini" in str(e.value)


def test_env_overrides(tmp_path, monkeypatch):
    f = _ini(tmp_path / "proj", "[workbench]\nruns_dir = runs\ndevice = auto\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("TRADINGRL_DEVICE", "cpu")
    monkeypatch.setenv("TRADINGRL_KERNEL_NAME", "k2")
    monkeypatch.setenv("TRADINGRL_RUNS_DIR", "batch/runs")  # relative to where the command runs
    monkeypatch.setenv("TRADINGRL_DATA_DIR", str(tmp_path / "abs"))
    s = load_settings(f)
    assert s == Settings(runs_dir=elsewhere / "batch" / "runs", data_dir=tmp_path / "abs", device="cpu", kernel_name="k2")


def test_empty_env_var_does_not_override(tmp_path, monkeypatch):
    monkeypatch.setenv("TRADINGRL_DEVICE", "")
    assert load_settings(_ini(tmp_path, "[workbench]\ndevice = cpu\n")).device == "cpu"


def test_env_override_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config, "find_settings_file", lambda start=None: None)
    monkeypatch.setenv("TRADINGRL_DEVICE", "cpu")
    s = load_settings()
    assert s == Settings(runs_dir=tmp_path / "runs", data_dir=tmp_path / "data", device="cpu", kernel_name="python3")


def test_find_settings_file_walks_up(tmp_path):
    f = _ini(tmp_path / "proj", "[workbench]\n")
    deep = tmp_path / "proj" / "nbs" / "experiments"
    deep.mkdir(parents=True)
    assert find_settings_file(deep) == f
    # a settings.ini without a [workbench] section (e.g. an nbdev 2 one) is skipped
    _ini(tmp_path / "proj" / "nbs", "[DEFAULT]\nlib_name = x\n")
    assert find_settings_file(deep) == f
    assert find_settings_file(tmp_path) != f  # never looks down


def test_load_settings_finds_the_file_from_the_cwd(tmp_path, monkeypatch):
    _ini(tmp_path / "proj", "[workbench]\ndevice = cpu\nkernel_name = found\n")
    sub = tmp_path / "proj" / "nbs"
    sub.mkdir()
    monkeypatch.chdir(sub)
    s = load_settings()
    assert s.kernel_name == "found" and s.runs_dir == tmp_path / "proj" / "runs"


# ---------------------------------------------------------------- resolve_device

def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device() == resolve_device("auto")


@pytest.mark.parametrize("name", ["tpu", "gpu", "", "cuda:x", "cpu:zero"])
def test_resolve_device_unknown(name):
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["mps", "meta", "xpu"])
def test_resolve_device_unsupported(name):
    with pytest.raises(ValueError, match="unsupported device"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", torch.device("cuda")])
def test_resolve_device_cuda_without_a_gpu(name):
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device(name)


def test_resolve_device_with_a_pretend_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="1 CUDA device"):
        resolve_device("cuda:1")


def test_resolve_device_none_uses_the_settings(tmp_path, monkeypatch):
    _ini(tmp_path, "[workbench]\ndevice = cpu\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_device(None) == torch.device("cpu")
    _ini(tmp_path, "[workbench]\ndevice = tpu\n")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device(None)
    monkeypatch.setenv("TRADINGRL_DEVICE", "cpu")  # the override wins over the file
    assert resolve_device(None) == torch.device("cpu")
