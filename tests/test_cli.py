"""The `tradingrl` console script, run as a user runs it (a subprocess): success and failure paths."""
import json, os, subprocess, sys
from pathlib import Path

import pytest

from test_experiments import TINY_CELLS, TINY_PARAMS, make_notebook

_SCRIPT = Path(sys.executable).parent / "tradingrl"
CMD = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "import sys; from tradingrl_nb.cli import main; sys.exit(main())"]


@pytest.fixture
def env(tmp_path):
    "Environment with a fast `tiny` experiment on the search path and runs going to tmp_path/runs."
    make_notebook(tmp_path / "exps" / "tiny.ipynb", TINY_PARAMS, *TINY_CELLS)
    return {**os.environ, "TRADINGRL_EXPERIMENTS_DIR": str(tmp_path / "exps"), "TRADINGRL_RUNS_DIR": str(tmp_path / "runs")}


def tradingrl(*args, env, cwd=None):
    return subprocess.run([*CMD, *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_list_shows_experiments_and_parameters(env):
    r = tradingrl("list", env=env)
    assert r.returncode == 0, r.stderr
    assert "data_summary" in r.stdout and "tiny" in r.stdout
    line = next(l for l in r.stdout.splitlines() if l.strip().startswith("scale"))
    assert "float" in line and "1.5" in line
    assert "a number" in next(l for l in r.stdout.splitlines() if l.strip().startswith("x "))
    assert "output_dir" not in r.stdout  # set by the runner, not by the user


def test_run_success(env, tmp_path):
    r = tradingrl("run", "tiny", "-p", "x", "4", "-p", "label", "q", env=env)
    assert r.returncode == 0, r.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.endswith("-tiny")
    d = runs[0]
    for f in ("tiny.ipynb", "tiny.html", "params.json", "metrics.json", "figures/line.png"): assert (d / f).exists(), f
    assert json.loads((d / "metrics.json").read_text())["y"] == 6.0
    assert json.loads((d / "params.json").read_text())["x"] == 4
    assert f"report:     {d / 'tiny.html'}" in r.stdout and "nested.z" in r.stdout
    assert "Executing" in r.stderr  # the per-cell progress bar


def test_run_output_dir_and_device(env, tmp_path):
    out = tmp_path / "mine"
    r = tradingrl("run", "data_summary", "-q", "-p", "dataset", "nasdaq", "--device", "cpu", "--output-dir", out, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "params.json").read_text())["device"] == "cpu"
    assert json.loads((out / "metrics.json").read_text())["test"]["rows"] > 900
    assert "Executing" not in r.stderr


def test_run_failing_cell(env, tmp_path):
    out = tmp_path / "bad"
    r = tradingrl("run", "tiny", "-p", "fail_at", "2", "--output-dir", out, env=env)
    assert r.returncode == 1
    assert "FAILED" in r.stderr and "line 3: `raise RuntimeError(f'boom at x={x}')`" in r.stderr
    assert "RuntimeError: boom at x=2" in r.stderr and str(out / "tiny.ipynb") in r.stderr
    assert (out / "tiny.ipynb").exists() and "boom at x=2" in (out / "tiny.ipynb").read_text()


@pytest.mark.parametrize("args, message", [
    (["run", "tinny"], "unknown experiment 'tinny'; known experiments: "),
    (["run", "tiny", "-p", "xx", "1"], "unknown parameter(s) 'xx' for experiment 'tiny'; known parameters: x (int)"),
    (["run", "tiny", "-p", "x", "1.5"], "parameter 'x': '1.5' is not a valid int"),
    (["run", "tiny", "-p", "scale", "big"], "parameter 'scale': 'big' is not a valid float"),
    (["run", "tiny", "--device", "cpu"], "has no 'device' parameter"),
    (["sweep", "tiny", "--grid", "x=1,two"], "'two' is not a valid int"),
    (["sweep", "tiny", "--grid", "x"], "use KEY=V1,V2"),
])
def test_bad_input_exits_2_before_running(env, tmp_path, args, message):
    r = tradingrl(*args, env=env)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    if "unknown experiment" in message:  # lists every known one: the project's and the one on the search path
        repo = Path(__file__).resolve().parents[1] / "nbs" / "experiments"
        listed = r.stderr.split("known experiments: ")[1].split(" (searched")[0].split(", ")
        assert listed == sorted([p.stem for p in repo.glob("*.ipynb")] + ["tiny"])
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_bad_input(env):
    r = tradingrl("run", "data_summary", "--device", "cuda", env=env)
    assert r.returncode == 2 and "CUDA is not available" in r.stderr


@pytest.mark.slow
def test_sweep_with_one_failing_combination_then_results(env, tmp_path):
    root = tmp_path / "sw"
    r = tradingrl("sweep", "tiny", "--grid", "x=1,2,3", "--grid", "label=a", "-p", "fail_at", "3", "--jobs", "2",
                  "--output-dir", root, env=env)
    assert r.returncode == 1, r.stderr
    assert "2 ok, 1 failed" in r.stdout
    summary = r.stdout.split("sweep summary:")[1]
    bad = next(l for l in summary.splitlines() if "002-x=3" in l)
    assert "failed" in bad and "boom at x=3" in bad
    assert sum("ok" in l.split() for l in summary.splitlines()) == 2
    assert sorted(p.name for p in root.iterdir()) == ["000-x=1-label=a", "001-x=2-label=a", "002-x=3-label=a"]

    csv = tmp_path / "all.csv"
    q = tradingrl("results", root, "--sort", "y", "--desc", "--csv", csv, env=env)
    assert q.returncode == 0, q.stderr
    rows = [l.split() for l in q.stdout.splitlines()[1:4]]
    assert [row[0] for row in rows] == ["001-x=2-label=a", "000-x=1-label=a", "002-x=3-label=a"]
    import pandas as pd
    t = pd.read_csv(csv)
    assert list(t["y"].iloc[:2]) == [3.0, 1.5] and list(t["status"]) == ["ok", "ok", "failed"]
    q = tradingrl("results", root, "--sort", "nope", env=env)
    assert q.returncode == 2 and "cannot sort by 'nope'" in q.stderr


def test_sweep_all_ok_exits_0(env, tmp_path):
    r = tradingrl("sweep", "tiny", "-q", "--grid", "scale=2", "--output-dir", tmp_path / "sw", env=env)
    assert r.returncode == 0, r.stderr
    assert "1 ok, 0 failed" in r.stdout


def test_main_job_parameters_are_valid():
    "The Makefile's `run` target names a known experiment and only parameters it declares, with the right types."
    import re, shlex
    from tradingrl_nb import experiments as ex
    from tradingrl_nb.cli import build_parser
    make = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", make, re.M).group(1).replace("\\\n", " ")
    words = shlex.split(recipe)
    args = build_parser().parse_args(words[words.index(next(w for w in words if w.endswith("tradingrl"))) + 1:])
    assert args.command == "run" and args.name == "train_agent"
    path, values = ex.prepare_run(args.name, dict(args.p), device="cpu" if args.device else None)
    specs = ex.experiment_parameters(path)
    assert values["total_timesteps"] > 100 * specs["total_timesteps"].default  # full size, not the tiny default
    assert values["dataset"] == "sp500" and values["val_end"] == "2014-12-31"  # tests on 2015-2018
